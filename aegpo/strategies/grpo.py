"""`grpo`: DanceGRPO-style uniform GRPO. Every prompt gets `train.group_size` rollouts, every step
but the last is stochastic, and each sample trains a random `timestep_fraction` of its non-final steps."""

from __future__ import annotations

from aegpo.strategies.base import (
    RoundContext,
    RoundPlan,
    Strategy,
    explore_all_steps,
    make_plan,
    random_train_steps,
    trained_step_count,
    validate_trained_fraction,
)


class GRPOStrategy(Strategy):
    name = "grpo"

    @classmethod
    def validate_params(cls, params) -> None:
        super().validate_params(params)
        validate_trained_fraction(params)

    def plan_round(self, ctx: RoundContext) -> RoundPlan:
        sizes = self.uniform_sizes(ctx)
        n, t = sum(sizes), ctx.num_steps
        k = trained_step_count(t, self.params.train.timestep_fraction)
        return RoundPlan(sizes, make_plan(explore_all_steps(n, t), random_train_steps(n, t, k, ctx.rng)))
