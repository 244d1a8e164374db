import json

import pytest
import torch

from aegpo.checkpoint import load_policy, read_manifest
from aegpo.record import RoundRecord
from aegpo.trainer import Trainer

from aegpo_testing import shipped_params

TRAIN = ["a red circle", "two blue squares", "a green triangle left of a white square",
         "a yellow circle and a red square"]
EVAL = ["a blue circle", "two red triangles"]


def _params(tiny_base, out, *extra):
    return shipped_params([
        f"model.checkpoint={tiny_base}", f"train.out_dir={out}", "train.rounds=2", "train.prompts_per_round=2",
        "train.group_size=3", "sampler.num_steps=4", "eval.num_steps=3", "train.eval_every=1", "train.save_every=1",
        "model.lora.rank=4", "entropy.layers=[0]", "aegpo.peaks_k=2", *extra])


def test_one_round_smoke(tiny_base, tmp_path):
    params = _params(tiny_base, tmp_path / "run", "train.rounds=1")
    trainer = Trainer(params, TRAIN, EVAL, progress=False)
    records = []
    trainer.callbacks.append(records.append)
    result = trainer.run()
    assert result["rounds"] == 1 and len(records) == 1
    rec = records[0]
    assert rec.num_samples == 6 and rec.rollout_nfe == 6 * 4
    assert rec.update.first_ratio_dev < 1e-5
    assert len(rec.entropy_t) == 4 and all(e > 0 for e in rec.entropy_t)
    assert {"strict", "dense", "rows"} <= set(rec.eval) and len(rec.eval["rows"]) == 2
    assert 0 <= result["base_eval"]["strict"] <= 1
    saved = json.loads((tmp_path / "run" / "rounds" / "round-0000.json").read_text())
    assert saved["reward_mean"] == pytest.approx(rec.reward_mean)
    assert RoundRecord.from_json(saved) == RoundRecord.from_json(rec.to_json())  # the JSON layout round-trips
    assert read_manifest(tmp_path / "run" / "checkpoint")["form"] == "lora"
    policy = load_policy(tmp_path / "run" / "checkpoint")
    assert policy.lora is not None


def test_resume_reproduces_an_uninterrupted_run(tiny_base, tmp_path):
    straight = Trainer(_params(tiny_base, tmp_path / "a", "train.eval_base=false"), TRAIN, EVAL, progress=False)
    straight.run()
    first = Trainer(_params(tiny_base, tmp_path / "b", "train.eval_base=false", "train.rounds=1"), TRAIN, EVAL,
                    progress=False)
    first.run()
    resumed = Trainer(_params(tiny_base, tmp_path / "b", "train.eval_base=false"), TRAIN, EVAL, progress=False)
    assert resumed.round == 1
    resumed.run()
    for name, p in straight.named_trainable.items():
        assert torch.equal(p, resumed.named_trainable[name]), name
    assert straight.nfe == resumed.nfe


def test_resume_refuses_changed_parameters(tiny_base, tmp_path):
    Trainer(_params(tiny_base, tmp_path / "c", "train.rounds=1", "train.eval_base=false"), TRAIN, EVAL,
            progress=False).run()
    with pytest.raises(ValueError, match="train.optim.lr"):
        Trainer(_params(tiny_base, tmp_path / "c", "train.optim.lr=0.1"), TRAIN, EVAL, progress=False)


def test_full_finetune_and_kl_run(tiny_base, tmp_path):
    params = _params(tiny_base, tmp_path / "full", "train.rounds=1", "model.finetune=full", "train.kl_beta=0.1",
                     "train.eval_base=false", "sampler.sde=cps", "sampler.noise_level=0.8", "train.ema_decay=0.9")
    result = Trainer(params, TRAIN, EVAL, progress=False).run()
    assert result["rounds"] == 1
    assert read_manifest(tmp_path / "full" / "checkpoint")["form"] == "full"


def test_same_noise_shares_the_initial_noise_but_not_the_trajectory(tiny_base, tmp_path):
    params = _params(tiny_base, tmp_path / "run", "train.rounds=1", "sampler.same_noise=true",
                     "train.strategy=flow_grpo", "train.eval_every=0", "train.eval_base=false")
    trainer = Trainer(params, TRAIN, EVAL, progress=False)
    records = []
    trainer.callbacks.append(records.append)
    trainer.run()  # a whole round runs with shared initial noise
    ro = trainer.sample(trainer.begin_round())  # the next round, sampled alone
    first = ro.trans_step == 0  # transitions from the initial noise
    x0, x1, sample = ro.x_t[first], ro.x_next[first], ro.trans_sample[first]
    group = ro.prompt_index[sample]
    for g in group.unique():
        members = (group == g).nonzero().flatten()
        assert members.numel() == 3
        assert torch.equal(x0[members[0]], x0[members[1]])  # one initial noise per group
        assert not torch.allclose(x1[members[0]], x1[members[1]])  # SDE noise per sample
        assert not torch.allclose(ro.final[members[0]], ro.final[members[1]])  # distinct rollouts to rank
    assert records[0].num_samples == 6


@pytest.mark.parametrize("epochs", [1, 3])
def test_nfe_counts_every_update_pass(tiny_base, tmp_path, epochs):
    params = _params(tiny_base, tmp_path / f"run{epochs}", "train.rounds=1", "train.strategy=grpo",
                     f"train.inner_epochs={epochs}", "train.eval_base=false")
    records = []
    trainer = Trainer(params, TRAIN, EVAL, progress=False)
    trainer.callbacks.append(records.append)
    trainer.run()
    rec = records[0]
    assert rec.nfe == rec.rollout_nfe + rec.probe_nfe + epochs * rec.update.trained_transitions
