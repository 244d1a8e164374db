"""Several rewards at once (`reward.name: multi`), weighted in `reward.weights`.

Weight keys name a reward and, for multi-part rewards, one of its parts:

    reward:
      name: multi
      weights: {pickscore: 1.0, hpsv2: 0.5, shapes.dense: 0.5}
      models: {pickscore: {path: ...}, hpsv2: {path: ..., tokenizer: ...}}
      aggregate: advantage      # or sum

With `aggregate: sum` the advantage is taken of the weighted sum of the raw scores; with
`advantage` each weighted key is z-scored within its prompt group first and the advantages are
summed (MixGRPO's advantage_aggr; aegpo.trainer.compute_advantages). Every part of every
sub-reward is reported (`name` for single-part rewards, `name.part` otherwise), weighted or not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aegpo.rewards.base import Reward


def split_key(key: str) -> tuple[str, str | None]:
    """'shapes.dense' → ('shapes', 'dense'); 'pickscore' → ('pickscore', None)."""
    name, _, part = key.partition(".")
    return name, part or None


class MultiReward(Reward):
    """Weighted combination of registered rewards (see the module docstring)."""

    def __init__(self, weights: dict[str, float] | None, models: dict[str, dict[str, Any]] | None = None,
                 project_dir: str | Path = ".") -> None:
        from aegpo.rewards.registry import build_reward_only

        if not weights:
            raise ValueError("reward.weights: multi needs at least one weighted reward, e.g. {pickscore: 1.0}")
        wanted: dict[str, list[str | None]] = {}
        for key in weights:
            name, part = split_key(key)
            if name == "multi":
                raise ValueError("reward.weights: multi cannot contain multi")
            wanted.setdefault(name, []).append(part)
        self.rewards: dict[str, Reward] = {}
        names: list[str] = []
        for name, parts in wanted.items():
            reward = build_reward_only(name, None, models, project_dir)  # built once, with its default weights
            for part in parts:
                if part is None and len(reward.parts) != 1:
                    raise ValueError(f"reward.weights: {name!r} has parts {list(reward.parts)}: name one, "
                                     f"e.g. {name}.{reward.parts[0]}")
                if part is not None and part not in reward.parts:
                    raise ValueError(f"reward.weights: unknown part {name}.{part} (the {name} reward has parts "
                                     f"{list(reward.parts)})")
            self.rewards[name] = reward
            names += [self._key(name, p, reward) for p in reward.parts]
        self.parts = tuple(names)
        super().__init__({self._normalise(k): w for k, w in weights.items()})

    @classmethod
    def from_options(cls, name: str, weights: dict[str, float] | None, models: dict[str, dict[str, Any]],
                     project_dir: str | Path = ".") -> MultiReward:
        return cls(weights, models, project_dir)  # each combined reward takes its own entry of `models`

    @staticmethod
    def _key(name: str, part: str, reward: Reward) -> str:
        return name if len(reward.parts) == 1 and part == name else f"{name}.{part}"

    def _normalise(self, key: str) -> str:
        """'pickscore.pickscore' → 'pickscore' (single-part rewards are named by the reward alone)."""
        name, part = split_key(key)
        reward = self.rewards[name]
        return name if part is None else self._key(name, part, reward)

    @property
    def uses_models(self) -> tuple[str, ...]:
        return tuple(self.rewards)

    def validate_prompt(self, prompt: str) -> None:
        for reward in self.rewards.values():
            reward.validate_prompt(prompt)

    def score_parts(self, images: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for name, reward in self.rewards.items():
            for part, values in reward.score_parts(images, prompts).items():
                out[self._key(name, part, reward)] = np.asarray(values, dtype=np.float64)
        return out
