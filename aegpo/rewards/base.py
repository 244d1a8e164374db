"""The reward interface: images + prompts → scores + named parts."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class RewardResult:
    """`parts[name]` (N,) float per named part; `score` (N,) is their weighted sum."""

    score: np.ndarray
    parts: dict[str, np.ndarray]


class Reward(ABC):
    """A reward model. Subclasses list their part names; weights pick the mix."""

    parts: tuple[str, ...] = ()
    # Evaluation metrics this reward reports (keys of `aegpo.evaluate.evaluate`'s result), headline first;
    # empty = the weighted score `reward`, then each part.
    report: tuple[str, ...] = ()

    @property
    def metrics(self) -> tuple[str, ...]:
        """Names of the evaluation metrics, headline first (what before/after reports print)."""
        return self.report or ("reward", *self.parts)

    def __init__(self, weights: dict[str, float]) -> None:
        unknown = sorted(set(weights) - set(self.parts))
        if unknown:
            raise ValueError(f"reward.weights: unknown parts {unknown} for {type(self).__name__} "
                             f"(expected {list(self.parts)})")
        if not any(w != 0 for w in weights.values()):
            raise ValueError("reward.weights: at least one weight must be non-zero")
        self.weights = dict(weights)

    @classmethod
    def from_options(cls, name: str, weights: dict[str, float] | None, models: dict[str, dict[str, Any]],
                     project_dir: str | Path = ".") -> Reward:
        """Build from `params.reward` (the registry calls this): `weights` None for the reward's defaults,
        `models` the `reward.models` options by reward name. A reward without a model takes no options."""
        if models.get(name):
            raise ValueError(f"reward.models.{name}: the {name} reward takes no options")
        return cls(weights)

    @abstractmethod
    def score_parts(self, images: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
        """images uint8 (N, H, W, 3), prompts (N,) → {part: (N,) float}."""

    def validate_prompt(self, prompt: str) -> None:
        """Raise ValueError if this reward cannot score `prompt` (default: any prompt is fine)."""

    def __call__(self, images: np.ndarray, prompts: list[str]) -> RewardResult:
        if len(images) != len(prompts):
            raise ValueError(f"reward: {len(images)} images but {len(prompts)} prompts")
        parts = self.score_parts(images, prompts)
        score = sum(w * parts[name].astype(np.float64) for name, w in self.weights.items())
        return RewardResult(np.asarray(score, dtype=np.float64), parts)
