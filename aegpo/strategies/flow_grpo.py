"""`flow_grpo`: Flow-GRPO's schedule. Every step but the last is stochastic and trained."""

from __future__ import annotations

from aegpo.strategies.base import RoundContext, RoundPlan, Strategy, explore_all_steps, make_plan


class FlowGRPOStrategy(Strategy):
    name = "flow_grpo"

    def plan_round(self, ctx: RoundContext) -> RoundPlan:
        sizes = self.uniform_sizes(ctx)
        n, t = sum(sizes), ctx.num_steps
        sde = explore_all_steps(n, t)  # every step but the last explores and is trained
        return RoundPlan(sizes, make_plan(sde))
