"""`flow_grpo`: Flow-GRPO's schedule. Every step is stochastic; every step but the last is trained."""

from __future__ import annotations

import torch

from aegpo.rollout import StepPlan
from aegpo.strategies.base import RoundContext, RoundPlan, Strategy


class FlowGRPOStrategy(Strategy):
    name = "flow_grpo"

    def plan_round(self, ctx: RoundContext) -> RoundPlan:
        sizes = self.uniform_sizes(ctx)
        n, t = sum(sizes), ctx.num_steps
        sde = torch.ones(n, t, dtype=torch.bool)
        train = sde.clone()
        train[:, -1] = False  # σ_next = 0: the transition density degenerates
        return RoundPlan(sizes, StepPlan(sde, train))
