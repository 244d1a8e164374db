"""A failed multi-process run names the failed rank's own error, not only torchrun's summary."""

from flows.train import FirstTraceback

RANKS_OUTPUT = """\
rank 0 INFO aegpo.trainer: round 0: reward 0.3
Traceback (most recent call last):
  File "flows/ranks.py", line 64, in main
    trainer.run_round()
ValueError: eval.prompts: file data/missing.txt does not exist
rank 0 INFO aegpo.trainer: round 1: reward 0.4
[rank1]:Traceback (most recent call last):
[rank1]:  File "other.py", line 1, in <module>
[rank1]:RuntimeError: a later failure
E1201 torch.distributed.elastic.multiprocessing.api: failed (exitcode: 1) local_rank: 1
Root Cause (first observed failure):
"""


def feed(text: str) -> FirstTraceback:
    first = FirstTraceback()
    for line in text.splitlines():
        first.feed(line)
    return first


def test_the_first_traceback_is_kept_whole_and_alone():
    assert feed(RANKS_OUTPUT).text().splitlines() == RANKS_OUTPUT.splitlines()[1:5]


def test_rank_prefixed_tracebacks_and_none_at_all():
    prefixed = feed("\n".join(RANKS_OUTPUT.splitlines()[6:]))
    assert prefixed.lines[-1] == "[rank1]:RuntimeError: a later failure" and len(prefixed.lines) == 3
    assert feed("torchrun summary only\nexitcode: -15\n").lines == []
