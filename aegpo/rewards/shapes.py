"""The shapes-world verifier as a reward: parts `dense` (fraction of constraints met), `strict` (0/1) and
`soft` (graded credit for almost-legal shapes, aegpo/shapes/soft.py)."""

from __future__ import annotations

import numpy as np

from aegpo.rewards.base import Reward
from aegpo.shapes.prompts import parse_prompt
from aegpo.shapes.soft import soft_score
from aegpo.shapes.verify import verify


class ShapesReward(Reward):
    parts = ("dense", "strict", "soft")
    report = ("strict", "dense", "reward")  # accuracy first: `soft` is a training signal, not an accuracy

    def __init__(self, weights: dict[str, float] | None = None) -> None:
        super().__init__(weights if weights is not None else {"dense": 0.5, "strict": 0.5})
        self._scenes: dict[str, object] = {}

    def validate_prompt(self, prompt: str) -> None:
        parse_prompt(prompt)

    def score_parts(self, images: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
        dense, strict, soft = (np.zeros(len(prompts)) for _ in range(3))
        for i, (image, prompt) in enumerate(zip(images, prompts)):
            scene = self._scenes.get(prompt)
            if scene is None:
                scene = self._scenes[prompt] = parse_prompt(prompt)
            verdict = verify(image, scene)
            dense[i], strict[i] = verdict.dense, float(verdict.strict)
            soft[i] = soft_score(verdict.objects, scene)
        return {"dense": dense, "strict": strict, "soft": soft}
