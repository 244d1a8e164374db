"""`aegpo bench critical-steps` and `aegpo.peak_direction: auto` (the calibration of the local level's direction)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aegpo.bench.critical_steps import choose_direction, rank_correlation
from aegpo.cli import main
from aegpo.config import load_params
from aegpo.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]

TRAIN = ["a red circle", "two blue squares", "a green triangle left of a white square",
         "a yellow circle and a red square"]


def _prompts(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("\n".join(TRAIN) + "\n")
    return path


def _cli(checkpoint, tmp_path, out, *overrides):
    args = ["bench", "critical-steps", "--out", str(out), "--prompts", "3", "--group", "3",
            "--params", str(ROOT / "params.yaml"), "-S", f"aegpo.cache_dir={tmp_path / 'cache'}",
            "-S", f"model.checkpoint={checkpoint}", "-S", f"train.prompts={_prompts(tmp_path)}",
            "-S", "sampler.num_steps=4", "-S", "entropy.layers=[0, 1]", "-S", "aegpo.peaks_k=2"]
    for o in overrides:
        args += ["-S", o]
    assert main(args) == 0
    return json.loads((out / "summary.json").read_text())


def test_noise_free_groups_have_no_spread_and_fall_back_to_the_papers_maxima(tiny_base, tmp_path):
    quiet = _cli(tiny_base, tmp_path, tmp_path / "quiet", "sampler.noise_level=0")
    assert [s["step"] for s in quiet["steps"]] == [0, 1, 2, 3] and [s["candidate"] for s in quiet["steps"]] == [
        True, True, True, False]
    # η = 0: every step is the ODE, so a group sharing its initial noise is one image repeated
    assert all(s["reward_spread"] == 0.0 and s["groups_with_spread"] == 0.0 for s in quiet["steps"])
    assert quiet["direction"] == "high" and "no ranking" in quiet["reason"] and quiet["ci_low"] is None
    # NFE: 4 steps × (3 prompts × 3 rollouts) × 4 denoising steps + the probe of 3 prompts × 4 steps
    assert quiet["nfe"] == 4 * 9 * 4 + 3 * 4
    for name in ("critical_steps.png", "table.md"):
        assert (tmp_path / "quiet" / name).is_file()
    # the shipped base draws shapes the reward scores: noise at σ = 1 changes what it draws
    noisy = _cli(ROOT / "checkpoints" / "shapes-base", tmp_path, tmp_path / "noisy", "sampler.noise_level=1.0")
    assert noisy["steps"][0]["reward_spread"] > 0 and all(s["entropy"] > 0 for s in noisy["steps"])
    assert noisy["settings"]["machine"] and noisy["direction"] in ("high", "low")


@pytest.mark.parametrize("sign, expected", [(1, "high"), (-1, "low")])
def test_rank_correlation_and_direction_follow_the_data(sign, expected):
    rng = np.random.default_rng(0)
    p, c = 24, 8
    entropy = np.linspace(1.0, 2.0, c)[None, :] + 0.05 * rng.standard_normal((p, c))
    spread = np.clip(0.1 + sign * 0.2 * (entropy - 1.5) + 0.02 * rng.standard_normal((p, c)), 0, None)
    corr = rank_correlation(entropy, spread, seed=0, boot=500)
    assert sign * corr["rho"] > 0.9
    assert (corr["ci_low"] > 0) if sign > 0 else (corr["ci_high"] < 0)
    assert choose_direction(corr)[0] == expected


def test_an_interval_that_includes_zero_keeps_the_papers_maxima():
    rng = np.random.default_rng(1)
    entropy = 1.5 + 0.3 * rng.standard_normal((6, 8))
    spread = np.abs(rng.standard_normal((6, 8)))  # unrelated
    corr = rank_correlation(entropy, spread, seed=0, boot=500)
    assert corr["ci_low"] < 0 < corr["ci_high"]
    direction, reason = choose_direction(corr)
    assert direction == "high" and "inconclusive" in reason


def test_auto_calibrates_once_records_the_choice_and_charges_its_nfe(tiny_base, tmp_path):
    def params(out):
        return load_params(None, [
            f"model.checkpoint={ROOT / 'checkpoints' / 'shapes-base'}", f"train.out_dir={tmp_path / out}",
            "train.strategy=aegpo",
            "train.rounds=1", "train.prompts_per_round=2", "train.group_size=3", "sampler.num_steps=4",
            "eval.num_steps=2", "train.eval_base=false", "model.lora.rank=2", "entropy.layers=[0, 1]",
            "aegpo.peaks_k=2", f"aegpo.cache_dir={tmp_path / 'cache'}", "aegpo.peak_direction=auto",
            "aegpo.calibration_prompts=3", "aegpo.calibration_group=2", "sampler.noise_level=1.0"])

    t1 = Trainer(params("a"), TRAIN, ["a blue circle"], progress=False)  # the shipped base: the reward varies
    cal = t1.peak_calibration
    assert cal["direction"] in ("high", "low") and t1.strategy.peak_direction == cal["direction"]
    # 3 candidate steps × (3 prompts × 2 rollouts) × 4 denoising steps + the base probe of 3 prompts × 4 steps
    assert cal["nfe"] == 3 * 6 * 4 + 3 * 4 and Path(cal["plot"]).is_file() and cal["rho"] is not None
    rec = t1.run_round()
    assert rec.plan["peak_direction"] == cal["direction"] and rec.plan["peak_calibration"]["rho"] == cal["rho"]
    # charged once: this round's current probe + base probes of its 2 prompts + the calibration
    assert rec.probe_nfe == 2 * 4 + 2 * 4 + cal["nfe"] and rec.nfe >= rec.probe_nfe
    cached = sorted((tmp_path / "cache").glob("critical-steps-*.json"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    t2 = Trainer(params("b"), TRAIN, ["a blue circle"], progress=False)  # another run: the cache answers
    assert t2.peak_calibration == cal and cached[0].stat().st_mtime_ns == mtime


def test_vectorised_spearman_matches_scipy():
    from scipy.stats import spearmanr

    from aegpo.bench.critical_steps import _spearman_rows

    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((5, 9)), rng.standard_normal((5, 9))
    y[0, :4] = 0.0  # ties
    got = _spearman_rows(x, y)
    np.testing.assert_allclose(got, [spearmanr(a, b).statistic for a, b in zip(x, y)], rtol=1e-12)
    assert np.isnan(_spearman_rows(x[:1], np.zeros((1, 9))))[0]


def test_train_prints_time_to_first_round_and_the_calibrated_direction(tmp_path, capsys):
    evals = tmp_path / "eval.txt"
    evals.write_text("a blue circle\n")
    args = ["train", "--params", str(ROOT / "params.yaml"), "-S", f"train.prompts={_prompts(tmp_path)}",
            "-S", f"eval.prompts={evals}", "-S", f"train.out_dir={tmp_path / 'run'}", "-S", "train.rounds=1",
            "-S", "train.prompts_per_round=2", "-S", "train.group_size=3", "-S", "aegpo.high_group=4",
            "-S", "aegpo.low_group=2", "-S", "aegpo.floor=2", "-S", "aegpo.ceiling=4", "-S", "sampler.num_steps=4",
            "-S", "aegpo.peaks_k=2", "-S", "eval.num_steps=2", "-S", "eval.samples_per_prompt=1",
            "-S", "aegpo.calibration_prompts=3", "-S", "aegpo.calibration_group=2",
            "-S", f"aegpo.cache_dir={tmp_path / 'cache'}",
            "-S", f"model.checkpoint={ROOT / 'checkpoints' / 'shapes-base'}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "time to first round: " in out
    line = next(x for x in out.splitlines() if x.startswith("peak direction: "))
    assert "(auto; Spearman" in line and "NFE counted" in line and "critical-steps-" in line


def _plot_many(path: str, times: int) -> None:
    from aegpo.bench.critical_steps import plot

    result = {"steps": [{"step": t, "reward_spread": 0.1 * t, "entropy": 1.0 + t, "candidate": True} for t in range(4)],
              "rho": 0.5, "ci_low": 0.1, "ci_high": 0.9, "direction": "high", "prompts": 3, "group": 3}
    for _ in range(times):
        plot(result, path)


def test_ranks_writing_the_same_plot_at_once_both_succeed(tmp_path):
    # Every rank of a multi-process run calibrates and writes the same cached plot (a shared temporary name made
    # one rank's rename fail: "No such file or directory: .critical-steps-….png.tmp.png").
    import multiprocessing as mp

    path = str(tmp_path / "critical-steps-x.png")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_plot_many, args=(path, 15)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert Path(path).read_bytes().startswith(b"\x89PNG") and [p.name for p in tmp_path.iterdir()] == [Path(path).name]
