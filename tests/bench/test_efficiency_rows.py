"""`aegpo bench efficiency` rows: strategies and named variants with overrides; time to first round per seed."""

from __future__ import annotations

import json

import pytest

from aegpo.bench.efficiency import BenchSpec, parse_rows, row_params, run_efficiency
from aegpo.config import load_params


def test_row_syntax_parses_strategies_and_named_variants(tmp_path):
    names, variants = parse_rows("grpo,aegpo,aegpo_auto=aegpo+aegpo.peak_direction=auto+aegpo.peaks_k=3")
    assert names == ["grpo", "aegpo", "aegpo_auto"]
    assert variants["aegpo_auto"] == ("aegpo", ["aegpo.peak_direction=auto", "aegpo.peaks_k=3"])
    assert variants["grpo"] == ("grpo", [])
    spec = BenchSpec(names, [0], 10, 10, variants=variants)
    p = row_params(load_params(None, []), spec, "aegpo_auto", 2, tmp_path / "r")
    assert (p.train.strategy, p.aegpo.peak_direction, p.aegpo.peaks_k, p.seed) == ("aegpo", "auto", 3, 2)
    assert row_params(load_params(None, []), spec, "aegpo", 0, tmp_path / "r").aegpo.peak_direction == "high"


@pytest.mark.parametrize("bad, message", [
    ("grpo,nope", "unknown strategy 'nope'"), ("a=aegpo+peaks_k", "key=value"), ("grpo,grpo", "twice"),
    ("x y=aegpo", "row name"), ("grpo,", "empty row"), ("v=aegpo+seed=3", "not train.strategy or seed"),
])
def test_bad_rows_are_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        parse_rows(bad)


def test_variant_rows_run_side_by_side_with_time_to_first_round(tiny_base, tmp_path):
    prompts = tmp_path / "train.txt"
    prompts.write_text("a red circle\ntwo blue squares\na green triangle left of a white square\n")
    evals = tmp_path / "eval.txt"
    evals.write_text("a blue circle\n")
    params = load_params(None, [
        f"model.checkpoint={tiny_base}", f"train.prompts={prompts}", f"eval.prompts={evals}",
        "train.prompts_per_round=2", "train.group_size=2", "sampler.num_steps=3", "eval.num_steps=2",
        "model.lora.rank=2", "entropy.layers=[0]", "aegpo.peaks_k=1", f"aegpo.cache_dir={tmp_path / 'cache'}"])
    names, variants = parse_rows("aegpo,aegpo_low=aegpo+aegpo.peak_direction=low")
    spec = BenchSpec(names, [0], nfe_budget=30, eval_every_nfe=30, variants=variants)
    summary = run_efficiency(params, spec, tmp_path / "eff")
    rows = summary["strategies"]
    assert set(rows) == {"aegpo", "aegpo_low"} and rows["aegpo_low"]["overrides"] == ["aegpo.peak_direction=low"]
    for v in rows.values():
        assert len(v["nfe_to_target_per_seed"]) == 1 and v["time_to_first_round_s_per_seed"][0] > 0
    run = tmp_path / "eff" / "runs" / "aegpo_low-s0" / "rounds" / "round-0000.json"
    assert json.loads(run.read_text())["plan"]["peak_direction"] == "low"
    assert "aegpo_low (`aegpo` + aegpo.peak_direction=low)" in (tmp_path / "eff" / "table.md").read_text()
    bad = BenchSpec(["v"], [0], 30, 30, variants={"v": ("aegpo", ["aegpo.peaks_k=0"])})
    with pytest.raises(Exception, match="peaks_k"):
        run_efficiency(params, bad, tmp_path / "bad")
    assert not (tmp_path / "bad" / "runs").exists()
