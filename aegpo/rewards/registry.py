"""Rewards by name: adding one is one module and one line here."""

from __future__ import annotations

import importlib

from aegpo.rewards.base import Reward

REWARDS: dict[str, str] = {
    "shapes": "aegpo.rewards.shapes:ShapesReward",
}


def build_reward(name: str, weights: dict[str, float] | None = None) -> Reward:
    if name not in REWARDS:
        raise KeyError(f"reward.name: unknown reward {name!r} (expected one of {sorted(REWARDS)})")
    module, _, cls = REWARDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)(weights)
