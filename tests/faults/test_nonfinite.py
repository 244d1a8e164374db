"""NaN/inf injection: a non-finite reward, loss, gradient or weight never reaches the state or a checkpoint.

Each fault is injected into a real tiny training run (the reward's output, the PPO loss, a LoRA gradient, the
updated weights); the round must be rejected with its reason, the weights and optimizer state must equal the
round's start bit for bit, nothing of the round is saved, and after `train.max_rejected_rounds` rejected rounds
in a row the run stops with a clear error while the last good checkpoint stays loadable.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import aegpo.policy_update
from aegpo.checkpoint import load_policy
from aegpo.config import ParamsError, load_params
from aegpo.guard import RoundsRejectedError
from aegpo.record import RoundRecord
from aegpo.trainer import Trainer

from aegpo_testing import shipped_params

TRAIN = ["a red circle", "two blue squares", "a green triangle left of a white square",
         "a yellow circle and a red square"]
EVAL = ["a blue circle"]


def _params(tiny_base, out, *extra):
    return shipped_params([
        f"model.checkpoint={tiny_base}", f"train.out_dir={out}", "train.rounds=6", "train.prompts_per_round=2",
        "train.group_size=3", "sampler.num_steps=4", "eval.num_steps=3", "train.eval_every=0", "train.eval_base=false",
        "model.lora.rank=4", "entropy.layers=[0]", "aegpo.peaks_k=2", "train.strategy=grpo", *extra])


def _weights(trainer):
    return {n: p.detach().clone() for n, p in trainer.named_trainable.items()}


def _opt_state(trainer):
    return {n: {k: v.clone() for k, v in trainer.optimizer.state[p].items()}
            for n, p in trainer.named_trainable.items() if p in trainer.optimizer.state}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _same_state(a, b):
    return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)


class _FaultyReward:
    """Wraps the run's reward; in the rounds `bad(round)` picks, one sample's score is `value` (what a bf16
    model gives now and then). Everything else (metrics, prompt checks) is the wrapped reward's."""

    def __init__(self, reward, trainer, bad, value):
        self.reward, self.trainer, self.bad, self.value = reward, trainer, bad, value

    def __getattr__(self, name):
        return getattr(self.reward, name)

    def __call__(self, images, prompts):
        result = self.reward(images, prompts)
        if self.bad(self.trainer.round):
            result.score[1] = self.value
        return result


def _run_good_rounds(trainer, n):
    for _ in range(n):
        rec = trainer.run_round()
        assert isinstance(rec, RoundRecord)


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_nonfinite_reward_rejects_the_round_and_stops_after_the_limit(tiny_base, tmp_path, value):
    out = tmp_path / "run"
    trainer = Trainer(_params(tiny_base, out), TRAIN, EVAL, progress=False)
    trainer.reward = _FaultyReward(trainer.reward, trainer, lambda r: r >= 2, value)
    _run_good_rounds(trainer, 2)
    good_w, good_opt = _weights(trainer), _opt_state(trainer)
    state_before = (out / "state" / "state.json").read_bytes()
    ckpt_before = {p.name: p.read_bytes() for p in (out / "checkpoint").iterdir()}
    for r in (2, 3):
        rec = trainer.run_round()
        assert rec.rejected.startswith("reward: 1 of 6 values are NaN or inf")
        assert json.loads((out / "rounds" / f"rejected-{r:04d}.json").read_text())["rejected"] == rec.rejected
        assert not (out / "rounds" / f"round-{r:04d}.json").exists()
    assert _same(_weights(trainer), good_w) and _same_state(_opt_state(trainer), good_opt)
    assert (out / "state" / "state.json").read_bytes() == state_before
    assert {p.name: p.read_bytes() for p in (out / "checkpoint").iterdir()} == ckpt_before
    with pytest.raises(RoundsRejectedError, match=r"3 rounds in a row .*train.max_rejected_rounds = 3"):
        trainer.run_round()
    policy = load_policy(out / "checkpoint")  # the last good checkpoint: loadable, finite
    assert all(torch.isfinite(p).all() for p in policy.transformer.parameters())


def test_an_accepted_round_resets_the_streak(tiny_base, tmp_path):
    trainer = Trainer(_params(tiny_base, tmp_path / "run", "train.max_rejected_rounds=2"), TRAIN, EVAL,
                      progress=False)
    trainer.reward = _FaultyReward(trainer.reward, trainer, lambda r: r in (1, 3), np.inf)
    result = trainer.run()  # rounds 1 and 3 rejected, never two in a row: the run completes
    assert result["rounds"] == 6 and [h.round for h in result["history"]] == [0, 2, 4, 5]
    assert sorted(p.name for p in (tmp_path / "run" / "rounds").glob("rejected-*")) == [
        "rejected-0001.json", "rejected-0003.json"]


def test_nonfinite_loss_is_rejected_before_the_step(tiny_base, tmp_path, monkeypatch):
    trainer = Trainer(_params(tiny_base, tmp_path / "run"), TRAIN, EVAL, progress=False)
    _run_good_rounds(trainer, 1)
    good_w, good_opt = _weights(trainer), _opt_state(trainer)
    clipped = aegpo.policy_update.clipped_loss

    def nan_loss(*args, **kwargs):
        per, ratio = clipped(*args, **kwargs)
        return per * float("nan"), ratio

    monkeypatch.setattr(aegpo.policy_update, "clipped_loss", nan_loss)
    rec = trainer.run_round()
    assert rec.rejected.startswith("loss: ")
    assert _same(_weights(trainer), good_w) and _same_state(_opt_state(trainer), good_opt)


def test_nonfinite_gradient_after_a_good_step_restores_the_round_start(tiny_base, tmp_path):
    # two optimizer steps per round: the first is sound, the second's gradient is NaN, so the snapshot (not a
    # skipped step) is what brings the weights and AdamW's moments back
    trainer = Trainer(_params(tiny_base, tmp_path / "run", "train.optimizer_steps=2"), TRAIN, EVAL, progress=False)
    _run_good_rounds(trainer, 1)
    good_w, good_opt = _weights(trainer), _opt_state(trainer)
    name, param = next(iter(trainer.named_trainable.items()))
    calls = {"n": 0}

    def poison(grad):
        calls["n"] += 1
        return grad * float("nan") if calls["n"] > 1 else grad

    handle = param.register_hook(poison)
    try:
        rec = trainer.run_round()
    finally:
        handle.remove()
    assert rec.rejected.startswith("gradient norm: ")
    assert _same(_weights(trainer), good_w) and _same_state(_opt_state(trainer), good_opt)
    _run_good_rounds(trainer, 1)  # training goes on from the restored state


def test_nonfinite_weight_after_the_step_is_rejected(tiny_base, tmp_path, monkeypatch):
    trainer = Trainer(_params(tiny_base, tmp_path / "run", "train.optimizer_steps=1"), TRAIN, EVAL, progress=False)
    good_w = _weights(trainer)
    step = trainer.optimizer.step

    def overflowing_step(*args, **kwargs):
        out = step(*args, **kwargs)
        with torch.no_grad():
            next(iter(trainer.named_trainable.values())).view(-1)[0] = float("inf")
        return out

    monkeypatch.setattr(trainer.optimizer, "step", overflowing_step)
    rec = trainer.run_round()
    assert rec.rejected.startswith("weight ")
    assert _same(_weights(trainer), good_w)
    assert len(trainer.optimizer.state) == 0  # round 0: AdamW had no moments before the step, and has none now
    assert not (tmp_path / "run" / "state").exists() and not (tmp_path / "run" / "checkpoint").exists()


@pytest.mark.parametrize("override", ["reward.weights.dense=.nan", "train.optim.lr=.inf", "sampler.shift=.nan",
                                      "train.clip_range=-.inf", "train.optim.betas=[0.9, .nan]"])
def test_nonfinite_parameters_are_refused(override):
    key = override.split("=")[0]
    with pytest.raises(ParamsError, match=key.replace(".", r"\.").replace("betas", "betas")):
        load_params("params.yaml", [override])


def test_cli_exits_with_a_clear_error_for_a_nan_weight(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "aegpo.cli", "train", "-S", "reward.weights.dense=.nan",
                           "-S", f"train.out_dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "reward.weights.dense" in proc.stderr and "finite" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()
