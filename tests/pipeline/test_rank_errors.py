"""A failed multi-process run names the failed rank's own error, not only torchrun's closing report."""

from flows.train import RankOutput

START = """\
W1201 08:19:02.512000 31391 torch/distributed/run.py:851] Setting OMP_NUM_THREADS environment variable to 1
rank 0 INFO aegpo.trainer: round 0: reward 0.3
"""
RANK_TRACEBACK = """\
Traceback (most recent call last):
  File "flows/ranks.py", line 64, in main
    trainer.run_round()
ValueError: eval.prompts: file data/missing.txt does not exist
"""
LAUNCHER = """\
E1201 08:19:19.866000 31391 torch/distributed/elastic/multiprocessing/api.py:882] failed (exitcode: 1) local_rank: 1
Traceback (most recent call last):
  File "torch/distributed/run.py", line 1032, in <module>
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
  rank      : 1 (local_rank: 1)
"""


def feed(text: str) -> RankOutput:
    out = RankOutput()
    for line in text.splitlines():
        out.feed(line)
    return out


def test_the_rank_traceback_is_reported_not_torchruns():
    report = feed(START + RANK_TRACEBACK + "rank 0 INFO aegpo.trainer: round 1\n" + LAUNCHER).report()
    first, launcher = report.split("torchrun's last output:\n")
    assert first == "First error:\n" + RANK_TRACEBACK
    assert launcher.splitlines()[-1] == "  rank      : 1 (local_rank: 1)"


def test_a_rank_that_exits_without_a_traceback_shows_its_last_lines():
    silent = "/venv/bin/python: Error while finding module specification for 'flows.ranks' (ImportError: boom)\n"
    report = feed(START + silent + LAUNCHER).report()
    assert report.startswith("The ranks' last output:\n" + START + silent + "torchrun's last output:\n")
    assert "ChildFailedError" in report  # torchrun's own traceback is in its part, never taken for the rank's


def test_rank_prefixed_tracebacks():
    prefixed = "".join(f"[rank1]: {line}\n" for line in RANK_TRACEBACK.splitlines())
    assert feed(prefixed + LAUNCHER).traceback == prefixed.splitlines()
