"""Damaged files of every kind the project reads: each error names the file, what is wrong and what to do."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from aegpo.checkpoint import CheckpointError, load_policy
from aegpo.config import load_params
from aegpo.io_utils import CorruptFileError
from aegpo.tables import TableError, read_table
from aegpo.trainer import Trainer

TRAIN = ["a red circle", "two blue squares"]


def _params(base, out, *extra):
    return load_params(None, [f"model.checkpoint={base}", f"train.out_dir={out}", "train.rounds=1",
                              "train.prompts_per_round=2", "train.group_size=2", "sampler.num_steps=3",
                              "train.eval_every=0", "train.eval_base=false", "model.lora.rank=4",
                              "entropy.layers=[0]", "train.strategy=grpo", *extra])


@pytest.fixture(scope="module")
def trained(tiny_base, tmp_path_factory):
    """A finished one-round run folder (state + LoRA checkpoint)."""
    project = tmp_path_factory.mktemp("trained")
    trainer = Trainer(_params(tiny_base, "run"), TRAIN, None, project_dir=project, progress=False)
    trainer.run()
    trainer.close()
    return project / "run"


def _copy(src, tmp_path):
    dst = tmp_path / "run"  # a run folder keeps its train.out_dir ("run", relative to the project)
    shutil.copytree(src, dst)
    return dst


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("damage", ["zero-byte", "truncated", "garbage"])
def test_damaged_checkpoint_weights_are_named(trained, tmp_path, damage):
    ckpt = _copy(trained / "checkpoint", tmp_path)
    weights = ckpt / "denoiser.safetensors"
    if damage == "zero-byte":
        weights.write_bytes(b"")
    elif damage == "truncated":
        _truncate(weights)
    else:
        weights.write_bytes(b"\x00not safetensors at all" * 10)
    with pytest.raises(CheckpointError) as info:
        load_policy(ckpt)
    text = str(info.value)
    assert str(weights) in text and "copy it again or retrain" in text


def test_damaged_base_checkpoint_weights_are_named(tiny_base, tmp_path):
    base = _copy(tiny_base, tmp_path)
    manifest = json.loads((base / "aegpo_checkpoint.json").read_text())
    weights = base / manifest["files"]["transformer"]
    _truncate(weights)
    with pytest.raises(CheckpointError, match=str(weights)):
        load_policy(base)


def test_manifest_without_form(trained, tmp_path):
    ckpt = _copy(trained / "checkpoint", tmp_path)
    manifest = json.loads((ckpt / "aegpo_checkpoint.json").read_text())
    del manifest["form"]
    (ckpt / "aegpo_checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"aegpo_checkpoint.json lacks 'form'.*copy the checkpoint again"):
        load_policy(ckpt)


def test_truncated_manifest(trained, tmp_path):
    ckpt = _copy(trained / "checkpoint", tmp_path)
    _truncate(ckpt / "aegpo_checkpoint.json")
    with pytest.raises(CheckpointError, match=r"aegpo_checkpoint.json is not valid JSON"):
        load_policy(ckpt)


def test_trained_checkpoint_as_model_checkpoint_says_to_use_its_base(tiny_base, trained, tmp_path):
    with pytest.raises(CheckpointError, match=r"is a trained \(lora\) checkpoint, not a base.*train from its base"):
        Trainer(_params(trained / "checkpoint", tmp_path / "run"), TRAIN, None, progress=False)


@pytest.mark.parametrize("target", ["state.json", "trainable.safetensors", "optimizer.safetensors"])
def test_damaged_training_state_is_named_and_nothing_is_overwritten(tiny_base, trained, tmp_path, target):
    run = _copy(trained, tmp_path)
    path = run / "state" / target
    _truncate(path)
    before = path.read_bytes()
    with pytest.raises(CorruptFileError) as info:
        Trainer(_params(tiny_base, "run", "train.rounds=2"), TRAIN, None, project_dir=tmp_path, progress=False)
    text = str(info.value)
    assert str(path) in text and "restore it from a copy, or delete it" in text
    assert path.read_bytes() == before  # the damaged state is left for the user to inspect


def test_damaged_round_record_is_named(tiny_base, trained, tmp_path):
    run = _copy(trained, tmp_path)
    record = run / "rounds" / "round-0000.json"
    _truncate(record)
    with pytest.raises(CorruptFileError, match=str(record)):
        Trainer(_params(tiny_base, "run", "train.rounds=2"), TRAIN, None, project_dir=tmp_path, progress=False)


def test_corrupt_profile_table_is_named(tmp_path):
    path = tmp_path / "profile.parquet"
    path.write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(TableError, match=rf"{path} is not a readable Parquet file"):
        read_table(path)


def test_corrupt_profile_cache_is_rebuilt_with_a_warning(tiny_base, tmp_path, caplog):
    params = _params(tiny_base, "run", "train.strategy=aegpo", "aegpo.peaks_k=2", "aegpo.cache_dir=cache")
    first = Trainer(params, TRAIN, None, project_dir=tmp_path, progress=False)
    first.base_profile.ensure(TRAIN)  # probes the base and writes the per-prompt cache
    good = {p: first.base_profile.layers[p] for p in TRAIN}
    first.close()
    shards = sorted((tmp_path / "cache").rglob("*.parquet"))
    assert shards
    for shard in shards:
        _truncate(shard, 0.3)
    with caplog.at_level("WARNING"):
        second = Trainer(params, TRAIN, None, project_dir=tmp_path, progress=False)
        assert second.base_profile.ensure(TRAIN) > 0  # probed again, not read from the damaged cache
    again = {p: second.base_profile.layers[p] for p in TRAIN}
    second.close()
    assert all(str(shard) in " ".join(r.getMessage() for r in caplog.records) for shard in shards)
    assert good.keys() == again.keys()
    assert all(np.array_equal(good[p], again[p]) for p in good)  # rebuilt, same values


def _damage(path, damage):
    """Damage the file at `path`: "zero-byte", "truncated", "garbage" (bytes of no known format)."""
    if damage == "zero-byte":
        path.write_bytes(b"")
    elif damage == "truncated":
        _truncate(path)
    elif damage == "garbage":
        path.write_bytes(b"\x00not weights at all" * 20)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("damage", ["zero-byte", "truncated", "garbage", "not tensors"])
def test_damaged_reward_weights_are_named_with_the_option_to_fix(tmp_path, suffix, damage):
    import torch
    from safetensors.torch import save_file

    from aegpo.rewards.model_base import RewardModelError
    from aegpo.rewards.registry import build_reward

    weights = tmp_path / f"HPS_v2.1_compressed{suffix}"
    state = {"w": torch.randn(64, 64)}
    if damage == "not tensors":  # a well-formed file holding something else than parameter tensors
        save_file({}, str(weights)) if suffix == ".safetensors" else torch.save({"w": [1, 2]}, str(weights))
    else:
        save_file(state, str(weights)) if suffix == ".safetensors" else torch.save(state, str(weights))
        _damage(weights, damage)
    (tmp_path / "tokenizer").mkdir()
    with pytest.raises(RewardModelError) as info:
        build_reward("hpsv2", None, {"hpsv2": {"path": str(weights), "tokenizer": str(tmp_path / "tokenizer")}})
    text = str(info.value)
    assert text.startswith("reward.models.hpsv2.path: ") and str(weights) in text
    assert "download it again (hub: xswu/HPSv2" in text and "point reward.models.hpsv2.path at the good copy" in text
    what = {"zero-byte": "is empty (0 bytes", "not tensors": "expected a mapping of parameter names to tensors",
            "truncated": ("is not a readable safetensors file (truncated or damaged" if suffix == ".safetensors"
                          else "is not a readable PyTorch checkpoint (truncated or damaged"),
            "garbage": ("is not a readable safetensors file (truncated or damaged" if suffix == ".safetensors"
                        else "torch.load(weights_only=True) refused it")}[damage]
    assert what in text
    assert "weights_only=False" not in text  # torch's advice to unpickle anyway is never passed on


def test_damaged_reward_model_folder_weights_are_named(tmp_path):
    from aegpo.rewards.model_base import RewardModelError
    from aegpo.rewards.registry import build_reward

    from fixtures.tiny_rewards import clip_folder

    clip_folder(tmp_path / "clip")
    weights = tmp_path / "clip" / "model.safetensors"
    _truncate(weights)
    with pytest.raises(RewardModelError) as info:
        build_reward("pickscore", None, {"pickscore": {"path": str(tmp_path / "clip")}})
    text = str(info.value)
    assert str(weights) in text and "not a readable safetensors file" in text
    assert "point reward.models.pickscore.path at it" in text


@pytest.mark.parametrize("damage", ["zero-byte", "truncated", "garbage", "another prompt's entry"])
def test_damaged_text_embedding_cache_entry_is_rebuilt_with_a_warning(tmp_path, caplog, damage):
    import torch

    from aegpo.models.text_cache import TextEmbeddingCache

    prompts = ["a red circle", "two blue squares"]
    encoded: list[list[str]] = []

    def encode(batch):  # deterministic embeddings of the prompts (the cache is what is under test)
        encoded.append(list(batch))
        return [{"states": torch.full((3, 4), float(len(p))), "pooled": torch.arange(4.0) * len(p)} for p in batch]

    first = TextEmbeddingCache("ns", tmp_path)
    good = first.get_many(prompts, encode)
    path = first._file(prompts[0])
    if damage == "another prompt's entry":
        path.write_bytes(first._file(prompts[1]).read_bytes())
    else:
        _damage(path, damage)
    encoded.clear()
    with caplog.at_level("WARNING", logger="aegpo.models.text_cache"):
        again = TextEmbeddingCache("ns", tmp_path).get_many(prompts, encode)
    assert encoded == [[prompts[0]]]  # only the damaged entry is encoded again
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(path) in warnings[0] and "encoded again" in warnings[0]
    assert all(torch.equal(good[i][k], again[i][k]) for i in range(2) for k in good[i])
    encoded.clear()
    caplog.clear()
    third = TextEmbeddingCache("ns", tmp_path).get_many(prompts, encode)  # the entry was rewritten whole
    assert encoded == [] and not caplog.records
    assert all(torch.equal(good[i][k], third[i][k]) for i in range(2) for k in good[i])
