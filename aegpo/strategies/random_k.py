"""`random_k`: K random steps per prompt explore and train, ODE elsewhere; the control for
AEGPO's entropy peaks (same K, same per-prompt structure, no entropy signal)."""

from __future__ import annotations

import torch

from aegpo.rollout import StepPlan
from aegpo.strategies.base import RoundContext, RoundPlan, Strategy, expand_groups


class RandomKStrategy(Strategy):
    name = "random_k"

    def plan_round(self, ctx: RoundContext) -> RoundPlan:
        sizes = self.uniform_sizes(ctx)
        t, k = ctx.num_steps, self.params.aegpo.peaks_k
        per_prompt = torch.zeros(len(sizes), t, dtype=torch.bool)
        for i in range(len(sizes)):
            per_prompt[i, ctx.rng.choice(t - 1, size=k, replace=False)] = True
        prompt_index, _ = expand_groups(sizes)
        mask = per_prompt[prompt_index]
        chosen = [sorted(torch.nonzero(row).squeeze(1).tolist()) for row in per_prompt]
        return RoundPlan(sizes, StepPlan(mask, mask.clone()), info={"chosen_steps": chosen})
