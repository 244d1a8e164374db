"""Strategies decide, each round, how many rollouts each prompt gets (global level) and which
denoising steps explore with the SDE and are trained (local level). Everything else in the
trainer is shared, so strategies differ in exactly these two decisions.

Config validation imports strategy modules (for `Strategy.validate_params`), so they import no torch
at module level: torch and the rollout types are imported where a round is planned (the helpers below)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
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
    import torch

    prompt_index = torch.repeat_interleave(torch.arange(len(group_sizes)), torch.tensor(group_sizes))
    rank = torch.cat([torch.arange(g) for g in group_sizes]) if group_sizes else torch.empty(0, dtype=torch.long)
    return prompt_index, rank


def explore_all_steps(num_samples: int, num_steps: int) -> torch.Tensor:
    """(N, T) bool: SDE at every step but the last. The last step (σ → 0) stays deterministic in every
    strategy: it is never trained (its density degenerates) and noise added there would remain in the
    final image."""
    import torch

    sde = torch.ones(num_samples, num_steps, dtype=torch.bool)
    sde[:, -1] = False
    return sde


def make_plan(sde: torch.Tensor | np.ndarray, train: torch.Tensor | np.ndarray | None = None) -> StepPlan:
    """The StepPlan of (N, T) bool masks (tensors or arrays); `train` None: every explored step is trained."""
    import torch

    from aegpo.rollout import StepPlan

    sde = torch.as_tensor(sde, dtype=torch.bool)
    return StepPlan(sde, sde.clone() if train is None else torch.as_tensor(train, dtype=torch.bool))


def trained_step_count(num_steps: int, fraction: float) -> int:
    """The `train.timestep_fraction` rule (DanceGRPO): ⌊(T − 1) · fraction⌋ of the T − 1 trainable steps, at
    least one (`validate_trained_fraction` rejects a configuration where the floor is zero)."""
    return max(1, int((num_steps - 1) * fraction))


def validate_trained_fraction(params) -> None:
    """ValueError naming the keys when `train.timestep_fraction` of the trainable steps rounds down to none."""
    t, fraction = params.sampler.num_steps, params.train.timestep_fraction
    if int((t - 1) * fraction) < 1:
        raise ValueError(f"train.timestep_fraction: {fraction} of {t - 1} trainable steps is zero steps; "
                         "raise it or sampler.num_steps")


def validate_peaks_k(params, min_spacing: int = 1) -> None:
    """ValueError naming the keys when `aegpo.peaks_k` steps cannot be chosen `min_spacing` apart among the
    T − 1 explorable steps."""
    from aegpo.peaks import max_selectable

    k, t = params.aegpo.peaks_k, params.sampler.num_steps
    if k > max_selectable(t, min_spacing):
        raise ValueError(f"aegpo.peaks_k: {k} steps cannot be chosen among the {t - 1} explorable steps "
                         f"of sampler.num_steps = {t}"
                         + (f" with min_spacing {min_spacing}" if min_spacing > 1 else ""))


def random_train_steps(num_samples: int, num_steps: int, k: int, rng: np.random.Generator) -> torch.Tensor:
    """(N, T) bool: k distinct random steps per sample among 0..T−2 (the last step, σ → 0, is never trained)."""
    import torch

    mask = torch.zeros(num_samples, num_steps, dtype=torch.bool)
    for i in range(num_samples):
        mask[i, rng.choice(num_steps - 1, size=k, replace=False)] = True
    return mask


class Strategy(ABC):
    """Base class; subclasses implement `plan_round` and may keep state across rounds."""

    name: str = ""
    needs_base_profile: bool = False  # the trainer loads/computes the base-entropy profile first
    needs_entropy: bool = False  # reads the attention entropy of rollouts/probes: entropy.record must be on

    def __init__(self, params) -> None:
        self.params = params

    @classmethod
    def validate_params(cls, params) -> None:
        """Raise ValueError, naming the dotted keys, when `params` (a validated aegpo.config.Params) cannot run
        this strategy. Called by config validation; the base checks the class attributes."""
        if cls.needs_entropy and not params.entropy.record:
            raise ValueError(f"train.strategy {cls.name} reads attention entropy: set entropy.record: true")

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
