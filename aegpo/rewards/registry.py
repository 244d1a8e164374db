"""Rewards by name: adding one is one module and one line here.

`build_reward(name, weights, models, project_dir)` builds the reward named by
`params.reward`: model-based rewards read their options from `models[name]` (`reward.models`)
and load their weights now, so a wrong path fails at start-up.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

from aegpo.rewards.base import Reward

log = logging.getLogger(__name__)

REWARDS: dict[str, str] = {
    "shapes": "aegpo.rewards.shapes:ShapesReward",
    "pickscore": "aegpo.rewards.pickscore:PickScoreReward",
    "hpsv2": "aegpo.rewards.hpsv2:HPSv2Reward",
    "imagereward": "aegpo.rewards.imagereward:ImageRewardReward",
    "clipscore": "aegpo.rewards.clipscore:ClipScoreReward",
    "aesthetic": "aegpo.rewards.aesthetic:AestheticReward",
    "jpeg_compressibility": "aegpo.rewards.jpeg:JpegCompressibility",
    "jpeg_incompressibility": "aegpo.rewards.jpeg:JpegIncompressibility",
    "multi": "aegpo.rewards.multi:MultiReward",
}


def reward_class(name: str) -> type[Reward]:
    if name not in REWARDS:
        raise KeyError(f"reward.name: unknown reward {name!r} (expected one of {sorted(REWARDS)})")
    module, _, cls = REWARDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def build_reward_only(name: str, weights: dict[str, float] | None, models: dict[str, dict[str, Any]] | None,
                      project_dir: str | Path = ".") -> Reward:
    """The reward `name`, without checking `models` for unused entries (used by MultiReward)."""
    from aegpo.rewards.model_base import ModelReward
    from aegpo.rewards.multi import MultiReward

    cls = reward_class(name)
    models = models or {}
    if issubclass(cls, MultiReward):
        return cls(weights, models, project_dir)
    if issubclass(cls, ModelReward):
        return cls(weights, models.get(name), project_dir)
    if models.get(name):
        raise ValueError(f"reward.models.{name}: the {name} reward takes no options")
    return cls(weights)


def reward_from_params(params: Any, project_dir: str | Path = ".") -> Reward:
    """The reward of a run's parameters (`params.reward`: name, weights and model options): every entry point
    (trainer, evaluation, flows, benchmarks) builds it here, so a learned reward gets its `reward.models`."""
    r = params.reward
    return build_reward(r.name, r.weights, r.models, project_dir)


def build_reward(name: str, weights: dict[str, float] | None = None,
                 models: dict[str, dict[str, Any]] | None = None, project_dir: str | Path = ".") -> Reward:
    """The reward `name` with part `weights` (None = its defaults) and model options `models` (`reward.models`)."""
    reward = build_reward_only(name, weights, models, project_dir)
    used = set(getattr(reward, "uses_models", (name,)))
    unused = sorted(set(models or {}) - used)
    if unused:
        log.warning("reward.models: options for %s are ignored (not used by reward %s)", unused, name)
    return reward
