import json

import pytest
import torch

from aegpo.checkpoint import CheckpointError, load_policy, save_base, save_trained
from aegpo.io_utils import atomic_directory
from aegpo.models.base import LoraSpec

from aegpo_testing import tiny_policy


def _out(policy):
    torch.manual_seed(0)
    x, s = torch.randn(2, 3, 32, 32), torch.tensor([0.8, 0.3])
    with torch.no_grad():
        return policy.velocity(x, s, policy.encode_prompts(["a red circle", "two blue squares"]))


def test_base_round_trip_is_exact(tmp_path):
    policy = tiny_policy()
    save_base(policy, tmp_path / "base", {"k": 1})
    loaded = load_policy(tmp_path / "base")
    assert torch.equal(_out(policy), _out(loaded))
    assert (tmp_path / "base" / "tokenizer" / "tokenizer.json").is_file()


@pytest.mark.parametrize("form", ["lora", "full"])
def test_trained_checkpoint_round_trip(tmp_path, form):
    policy = tiny_policy()
    save_base(policy, tmp_path / "base")
    if form == "lora":
        policy.add_lora(LoraSpec(4, 8, ("to_q", "to_v")), seed=0)
    else:
        policy.set_full_finetune()
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.05)
    save_trained(policy, tmp_path / "trained", tmp_path / "base")
    loaded = load_policy(tmp_path / "trained")
    torch.testing.assert_close(_out(policy), _out(loaded))
    assert not torch.allclose(_out(loaded), _out(tiny_policy()))


def test_not_ours_and_changed_base_are_clear_errors(tmp_path):
    (tmp_path / "random").mkdir()
    with pytest.raises(CheckpointError, match="not an aegpo checkpoint"):
        load_policy(tmp_path / "random")
    (tmp_path / "random" / "aegpo_checkpoint.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_policy(tmp_path / "random")
    policy = tiny_policy()
    save_base(policy, tmp_path / "base")
    policy.add_lora(LoraSpec(4, 8, ("to_q",)), seed=0)
    save_trained(policy, tmp_path / "t", tmp_path / "base")
    save_base(tiny_policy(seed=1), tmp_path / "base", {"different": True})
    with pytest.raises(CheckpointError, match="has changed"):
        load_policy(tmp_path / "t")


def test_atomic_directory_keeps_the_old_folder_on_failure(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "a.txt").write_text("partial")
            raise RuntimeError("killed mid-write")
    assert (target / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary leftovers
    with atomic_directory(target) as tmp:
        (tmp / "b.txt").write_text(json.dumps(1))
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
