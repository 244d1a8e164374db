"""Strategies decide, each round, how many rollouts each prompt gets (global level) and which
denoising steps explore with the SDE and are trained (local level). Everything else in the
trainer is shared, so strategies differ in exactly these two decisions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from aegpo.rollout import Rollout, StepPlan


@dataclass
class RoundContext:
    """What a strategy may look at when planning round `round`."""

    round: int
    prompts: list[str]  # the round's P prompts
    prompt_ids: list[int]  # their indices in the training prompt set
    num_steps: int  # T
    rng: np.random.Generator  # seeded by (run seed, round): plans are reproducible
    probe: Callable[[list[str]], Rollout] | None = None  # entropy probe under the current policy (costs NFE)
    base_profile: Any = None  # base-policy Entropy(t) per prompt (aegpo strategies)


@dataclass
class RoundPlan:
    """group_sizes (P,) per prompt; plan over the N = Σ group_sizes samples, in prompt order."""

    group_sizes: list[int]
    plan: StepPlan
    info: dict[str, Any] = field(default_factory=dict)
    probe_nfe: int = 0

    def __post_init__(self) -> None:
        n = sum(self.group_sizes)
        if self.plan.sde.shape[0] != n:
            raise ValueError(f"RoundPlan: {n} samples from group sizes, plan has {self.plan.sde.shape[0]}")


def expand_groups(group_sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_index (N,), rank within group (N,)) for contiguous groups."""
    prompt_index = torch.repeat_interleave(torch.arange(len(group_sizes)), torch.tensor(group_sizes))
    rank = torch.cat([torch.arange(g) for g in group_sizes]) if group_sizes else torch.empty(0, dtype=torch.long)
    return prompt_index, rank


def explore_all_steps(num_samples: int, num_steps: int) -> torch.Tensor:
    """(N, T) bool: SDE at every step but the last. The last step (σ → 0) stays deterministic in every
    strategy: it is never trained (its density degenerates) and noise added there would remain in the
    final image."""
    sde = torch.ones(num_samples, num_steps, dtype=torch.bool)
    sde[:, -1] = False
    return sde


def random_train_steps(num_samples: int, num_steps: int, k: int, rng: np.random.Generator) -> torch.Tensor:
    """(N, T) bool: k distinct random steps per sample among 0..T−2 (the last step, σ → 0, is never trained)."""
    mask = torch.zeros(num_samples, num_steps, dtype=torch.bool)
    for i in range(num_samples):
        mask[i, rng.choice(num_steps - 1, size=k, replace=False)] = True
    return mask


class Strategy(ABC):
    """Base class; subclasses implement `plan_round` and may keep state across rounds."""

    name: str = ""
    needs_base_profile: bool = False  # the trainer loads/computes the base-entropy profile first

    def __init__(self, params) -> None:
        self.params = params

    @abstractmethod
    def plan_round(self, ctx: RoundContext) -> RoundPlan:
        """Group sizes and the SDE/train step plan for this round."""

    def observe(self, ctx: RoundContext, rollout: Rollout, rewards: np.ndarray) -> dict[str, Any]:
        """Called after scoring; returns extra things to log. Default: nothing."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state needed to resume; default: stateless."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def uniform_sizes(self, ctx: RoundContext) -> list[int]:
        return [self.params.train.group_size] * len(ctx.prompts)
