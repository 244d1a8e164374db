"""The two CPU benchmarks run end to end on a tiny setting and write what they promise."""

import csv
import json

import pytest

from aegpo.bench.efficiency import BenchSpec, nfe_to_reach, run_efficiency, summarize, table_markdown
from aegpo.bench.overhead import run_overhead

from aegpo_testing import shipped_params


def _params(tiny_base, tmp_path):
    prompts = tmp_path / "train.txt"
    prompts.write_text("a red circle\ntwo blue squares\na green triangle left of a white square\n")
    evals = tmp_path / "eval.txt"
    evals.write_text("a blue circle\ntwo red triangles\n")
    return shipped_params([
        f"model.checkpoint={tiny_base}", f"train.prompts={prompts}", f"eval.prompts={evals}",
        "train.prompts_per_round=2", "train.group_size=2", "sampler.num_steps=3", "eval.num_steps=2",
        "model.lora.rank=2", "entropy.layers=[0]", "aegpo.peaks_k=1", f"aegpo.cache_dir={tmp_path / 'cache'}"])


def test_efficiency_benchmark_end_to_end(tiny_base, tmp_path):
    params = _params(tiny_base, tmp_path)
    spec = BenchSpec(strategies=["grpo", "aegpo"], seeds=[0, 1], nfe_budget=40, eval_every_nfe=20)
    out = tmp_path / "eff"
    summary = run_efficiency(params, spec, out)
    for name in ("curves.csv", "curves.png", "table.md", "summary.json", "base_eval.json"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "curves.csv")))
    assert {r["strategy"] for r in rows} == {"grpo", "aegpo"} and {r["seed"] for r in rows} == {"0", "1"}
    for s in ("grpo", "aegpo"):
        v = json.loads((out / "summary.json").read_text())["strategies"][s]
        assert set(v) >= {"nfe_to_target", "final_strict_mean", "final_strict_std", "seeds"}
        assert v["seeds"] == [0, 1] and v["final_nfe_mean"] >= 40
    assert summary["settings"]["machine"]
    # a second call reuses the finished runs (resumable benchmark)
    before = (out / "runs" / "grpo-s0" / "curve.json").stat().st_mtime_ns
    run_efficiency(params, spec, out)
    assert (out / "runs" / "grpo-s0" / "curve.json").stat().st_mtime_ns == before


def test_efficiency_benchmark_parallel_jobs_match_sequential(tiny_base, tmp_path):
    params = _params(tiny_base, tmp_path)
    spec = BenchSpec(strategies=["grpo"], seeds=[0, 1], nfe_budget=30, eval_every_nfe=30, jobs=2)
    run_efficiency(params, spec, tmp_path / "par")
    spec.jobs = 1
    run_efficiency(params, spec, tmp_path / "seq")
    par = [(r["seed"], r["nfe"], r["strict"]) for r in csv.DictReader(open(tmp_path / "par" / "curves.csv"))]
    seq = [(r["seed"], r["nfe"], r["strict"]) for r in csv.DictReader(open(tmp_path / "seq" / "curves.csv"))]
    assert par == seq


def test_nfe_to_reach_interpolates():
    curve = [{"nfe": 0, "strict": 0.2}, {"nfe": 100, "strict": 0.4}, {"nfe": 200, "strict": 0.6}]
    assert nfe_to_reach(curve, 0.5) == 150.0
    assert nfe_to_reach(curve, 0.2) == 0.0
    assert nfe_to_reach(curve, 0.9) == float("inf")


def _rows(strategy, seed, strict_curve):
    return [{"strategy": strategy, "seed": seed, "round": i, "nfe": 100 * i, "strict": x, "dense": x,
             "wall_seconds": float(i)} for i, x in enumerate(strict_curve)]


def test_summary_target_is_halfway_to_the_best_final_mean():
    rows = _rows("a", 0, [0.3, 0.4, 0.5]) + _rows("b", 0, [0.3, 0.3, 0.32])
    summary = summarize(rows, BenchSpec(["a", "b"], [0], 200, 100), base_strict=0.3)
    assert summary["target_strict"] == pytest.approx(0.4)
    assert summary["strategies"]["a"]["nfe_to_target"] == pytest.approx(100.0)
    assert summary["strategies"]["b"]["nfe_to_target"] is None
    assert summary["strategies"]["b"]["reached_target"] == "0/1"


def test_summary_has_no_target_when_nothing_beats_the_base():
    # halfway to a best below the base would lie below the base: every run would "reach" it at NFE 0
    rows = _rows("a", 0, [0.3, 0.28, 0.25]) + _rows("b", 0, [0.3, 0.29, 0.29])
    summary = summarize(rows, BenchSpec(["a", "b"], [0], 200, 100), base_strict=0.3)
    assert summary["target_strict"] is None
    assert all(v["nfe_to_target"] is None and v["reached_target"] == "0/1" for v in summary["strategies"].values())
    assert table_markdown(summary).startswith("No target")


def test_overhead_benchmark_end_to_end(tiny_base, tmp_path):
    params = _params(tiny_base, tmp_path)
    variants = {"full": {"layers": "all", "heads": "all", "query_stride": 1},
                "one-layer": {"layers": [1], "heads": "all", "query_stride": 2}}
    summary = run_overhead(params, tmp_path / "ovh", num_prompts=2, repeats=1, variants=variants, select="one-layer")
    assert summary["time_ratio"] > 0 and summary["memory_ratio"] > 0
    rows = {r["variant"]: r for r in summary["variants"]}
    assert set(rows) == {"off", "full", "one-layer"}
    assert rows["full"]["peak_overlap"] == 1.0 and rows["full"]["prompt_rank_corr"] > 0.99
    assert (tmp_path / "ovh" / "overhead.md").is_file() and (tmp_path / "ovh" / "overhead.csv").is_file()


class _Killed(Exception):
    """Stands in for a kill: the run stops wherever it is."""


def _kill_at(monkeypatch, method: str, call: int) -> None:
    """Make the `call`-th call of Trainer.<method> (1-based) raise, as if the process died there."""
    from aegpo.trainer import Trainer

    real, calls = getattr(Trainer, method), {"n": 0}

    def dying(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise _Killed(f"{method} call {call}")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, method, dying)


@pytest.mark.parametrize("method, call", [("run_round", 4), ("evaluate", 2)])
def test_an_interrupted_run_resumes_with_the_evals_it_had(tiny_base, tmp_path, monkeypatch, method, call):
    """Killed in a round after its first eval, or inside its second eval (after the round's state was saved): the
    resumed run's curve equals an uninterrupted run's, evals and NFE included."""
    from aegpo.bench.efficiency import run_one

    params = _params(tiny_base, tmp_path)
    spec = BenchSpec(strategies=["grpo"], seeds=[0], nfe_budget=70, eval_every_nfe=15)
    base = {"strict": 0.5, "dense": 0.5}
    args = (params, spec)
    whole = run_one(*args, tmp_path / "whole", "grpo", 0, base, ["a red circle", "two blue squares"], ["a blue circle"])
    assert len(whole) >= 4  # base + at least three evals, so the kill lands between them
    with monkeypatch.context() as m:
        _kill_at(m, method, call)
        with pytest.raises(_Killed):
            run_one(*args, tmp_path / "cut", "grpo", 0, base, ["a red circle", "two blue squares"], ["a blue circle"])
    run_dir = tmp_path / "cut" / "runs" / "grpo-s0"
    assert (run_dir / "curve.partial.json").is_file() and (run_dir / "state").is_dir()
    from aegpo.trainer import Trainer

    real, ran = Trainer.run_round, []
    monkeypatch.setattr(Trainer, "run_round", lambda self: ran.append(self.round) or real(self))
    resumed = run_one(*args, tmp_path / "cut", "grpo", 0, base, ["a red circle", "two blue squares"],
                      ["a blue circle"])
    assert ran and ran[0] > 0, f"the resumed run started over at round {ran[:1]}"

    def key(rows):
        return [(r["round"], r["nfe"], r["strict"], r["dense"], r["train_reward"]) for r in rows[1:]]

    assert key(resumed) == key(whole)
    assert resumed[0]["nfe"] == 0 and resumed[-1]["nfe"] >= spec.nfe_budget
    assert not any((run_dir / name).exists() for name in ("curve.partial.json", "state", "checkpoint"))
