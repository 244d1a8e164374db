"""The reward interface: images + prompts → scores + named parts."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

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
            raise ValueError(f"reward.weights: unknown parts {unknown} for {type(self).__name__} (expected {list(self.parts)})")
        if not any(w != 0 for w in weights.values()):
            raise ValueError("reward.weights: at least one weight must be non-zero")
        self.weights = dict(weights)

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
