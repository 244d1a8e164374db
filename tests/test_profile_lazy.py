"""The lazy base profile: probed under the BASE policy (LoRA off / frozen copy), cached per prompt, never twice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aegpo.checkpoint import load_base_policy
from aegpo.config import load_params
from aegpo.entropy.profile import ProbeSpec, ProfileStore, load_or_compute_base_profile, probe
from aegpo.entropy.recorder import EntropyRecorder
from aegpo.trainer import Trainer

TRAIN = ["a red circle", "two blue squares", "a green triangle left of a white square",
         "a yellow circle and a red square"]
EVAL = ["a blue circle"]


def _params(tiny_base, tmp_path, *extra):
    return load_params(None, [
        f"model.checkpoint={tiny_base}", f"train.out_dir={tmp_path / 'run'}", "train.strategy=aegpo",
        "train.rounds=1", "train.prompts_per_round=2", "train.group_size=3", "sampler.num_steps=4",
        "eval.num_steps=2", "train.eval_base=false", "model.lora.rank=2", "entropy.layers=[0, 1]",
        "aegpo.peaks_k=2", f"aegpo.cache_dir={tmp_path / 'cache'}", *extra])


def _fresh_base_entropy(params, prompts):
    policy, _ = load_base_policy(params.model)
    rec = EntropyRecorder.from_params(params.entropy)
    rec.install(policy)
    return probe(policy.eval(), prompts, ProbeSpec.from_params(params), rec).entropy.numpy()


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_lazy_probe_sees_the_base_policy_after_training_changed_it(tiny_base, tmp_path, finetune):
    params = _params(tiny_base, tmp_path, f"model.finetune={finetune}")
    trainer = Trainer(params, TRAIN, EVAL, progress=False)
    with torch.no_grad():  # move the trained weights far from the base
        gen = torch.Generator().manual_seed(0)
        for p in trainer.named_trainable.values():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    current = trainer._probe(TRAIN[3:]).entropy.numpy()
    lazy = trainer.base_profile.entropy_t(TRAIN[3:])  # probed now, under the base
    expected = _fresh_base_entropy(params, TRAIN[3:])
    np.testing.assert_allclose(lazy, expected, rtol=1e-5, atol=1e-6)
    assert np.abs(current - expected).max() > 1e-3  # the trained policy really differs
    # the recorder is back on the trained transformer: current probes still record it
    np.testing.assert_allclose(trainer._probe(TRAIN[3:]).entropy.numpy(), current, rtol=1e-6)
    assert trainer.base_profile.computed_nfe == 4  # one prompt × 4 steps
    trainer.base_profile.entropy_t(TRAIN[3:])
    assert trainer.base_profile.computed_nfe == 4  # never twice


def test_full_precomputation_reuses_the_per_prompt_store(tiny_base, tmp_path):
    params = _params(tiny_base, tmp_path)
    policy, ref = load_base_policy(params.model)
    rec = EntropyRecorder.from_params(params.entropy)
    rec.install(policy)
    spec = ProbeSpec.from_params(params)
    calls: list[list[str]] = []

    def counting(ps):
        calls.append(list(ps))
        return probe(policy.eval(), ps, spec, rec)

    store = ProfileStore(tmp_path / "cache", ref["manifest_sha256"], spec)
    from aegpo.entropy.profile import LazyBaseProfile

    lazy = LazyBaseProfile(counting, store, policy.nfe_per_call, 4)
    lazy.set_layer_names(rec.layer_names)
    lazy.ensure(TRAIN[:2])
    profile, path, computed = load_or_compute_base_profile(policy, ref["manifest_sha256"], TRAIN, spec, rec,
                                                           tmp_path / "cache")
    assert computed and path.is_file()
    np.testing.assert_allclose(profile.entropy_t(TRAIN[:2]), lazy.entropy_t(TRAIN[:2]), rtol=1e-6)
    again = LazyBaseProfile(counting, store, policy.nfe_per_call, 4)
    assert set(again.layers) == set(TRAIN) and calls == [TRAIN[:2]]  # the stage probed only the two it lacked
    np.testing.assert_allclose(again.entropy_t(TRAIN), _fresh_base_entropy(params, TRAIN), rtol=1e-5, atol=1e-6)


def test_a_corrupt_shard_is_ignored_and_probed_again(tiny_base, tmp_path):
    params = _params(tiny_base, tmp_path)
    t = Trainer(params, TRAIN, EVAL, progress=False)
    t.base_profile.ensure(TRAIN[:2])
    shard = next(t.base_profile_path.glob("part-*.parquet"))
    shard.write_bytes(b"not parquet")
    t2 = Trainer(params.model_copy(update={}), TRAIN, EVAL, progress=False)
    assert not (set(TRAIN[:2]) & set(t2.base_profile.layers))
    assert t2.base_profile.ensure(TRAIN[:2]) == 2 * 4
