"""JPEG rewards, the multi-reward (weighted sum / per-part advantages) and the registry."""

import numpy as np
import pytest
import torch

from aegpo.rewards.base import RewardResult
from aegpo.rewards.jpeg import jpeg_kilobytes
from aegpo.rewards.registry import REWARDS, build_reward
from aegpo.trainer import compute_advantages

from aegpo_testing import shipped_params
from fixtures.tiny_rewards import clip_folder

PROMPTS = ["a red circle", "two blue squares", "a green triangle", "a white square"]


def images():
    rng = np.random.default_rng(0)
    flat = np.full((2, 32, 32, 3), 120, np.uint8)
    noisy = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    return np.concatenate([flat, noisy])


def test_jpeg_rewards():
    imgs = images()
    inc = build_reward("jpeg_incompressibility")(imgs, PROMPTS)
    com = build_reward("jpeg_compressibility")(imgs, PROMPTS)
    assert inc.score.shape == (4,) and inc.score.dtype == np.float64
    assert inc.score[2] > 2 * inc.score[0]  # noise does not compress
    assert np.array_equal(com.score, -inc.score) and np.array_equal(inc.score, jpeg_kilobytes(imgs))
    with pytest.raises(ValueError, match="uint8 images"):
        build_reward("jpeg_incompressibility")(imgs.astype(np.float32), PROMPTS)
    with pytest.raises(ValueError, match="takes no options"):
        build_reward("jpeg_compressibility", None, {"jpeg_compressibility": {"path": "x"}})


def test_multi_weighted_sum_and_parts(tmp_path):
    clip_folder(tmp_path / "clip")
    models = {"clipscore": {"path": str(tmp_path / "clip")}}
    weights = {"clipscore": 2.0, "shapes.dense": 0.5, "jpeg_compressibility": 0.01}
    reward = build_reward("multi", weights, models)
    assert set(reward.parts) == {"clipscore", "shapes.dense", "shapes.strict", "shapes.soft", "jpeg_compressibility"}
    imgs = images()
    result = reward(imgs, PROMPTS)
    single = {name: build_reward(name, None, models if name == "clipscore" else None)(imgs, PROMPTS)
              for name in ("clipscore", "shapes", "jpeg_compressibility")}
    expected = (2.0 * single["clipscore"].score + 0.5 * single["shapes"].parts["dense"]
                + 0.01 * single["jpeg_compressibility"].score)
    assert np.allclose(result.score, expected)
    assert np.array_equal(result.parts["shapes.strict"], single["shapes"].parts["strict"])
    with pytest.raises(ValueError, match="unknown prompt|grammar|expected"):
        reward.validate_prompt("a photo of a cat")  # the shapes sub-reward validates prompts


def test_multi_advantage_aggregation_normalises_each_part():
    reward = build_reward("multi", {"jpeg_incompressibility": 1.0, "shapes.dense": 1.0})
    groups = torch.tensor([0, 0, 1, 1])
    scored = RewardResult(np.array([0.0, 0.0, 0.0, 0.0]),
                          {"jpeg_incompressibility": np.array([100.0, 200.0, 1.0, 2.0]),
                           "shapes.dense": np.array([0.0, 1.0, 1.0, 0.0])})
    params = shipped_params(["reward.name=multi", "reward.weights={jpeg_incompressibility: 1.0, shapes.dense: 1.0}",
                                "reward.aggregate=advantage", "train.std_floor=0"])
    adv = compute_advantages(scored, groups, params)
    # per part z-scores are ±1 in every group whatever the scale: [-1+-1, 1+1, -1+1, 1-1]
    assert torch.allclose(adv, torch.tensor([-2.0, 2.0, 0.0, 0.0]))
    assert set(reward.weights) == {"jpeg_incompressibility", "shapes.dense"}


def test_multi_errors():
    with pytest.raises(ValueError, match=r"'shapes' has parts \['dense', 'strict', 'soft'\]: name one"):
        build_reward("multi", {"shapes": 1.0})
    with pytest.raises(ValueError, match="unknown part shapes.exact"):
        build_reward("multi", {"shapes.exact": 1.0})
    with pytest.raises(KeyError, match="unknown reward 'pickscroe'"):
        build_reward("multi", {"pickscroe": 1.0})
    with pytest.raises(ValueError, match="at least one"):
        build_reward("multi", {})
    assert {"pickscore", "hpsv2", "imagereward", "clipscore", "aesthetic", "jpeg_compressibility",
            "jpeg_incompressibility", "multi", "shapes"} <= set(REWARDS)
