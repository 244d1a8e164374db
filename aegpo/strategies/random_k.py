"""`random_k`: K random steps per prompt explore and train, ODE elsewhere; the control for
AEGPO's entropy peaks (same K, same per-prompt structure, no entropy signal)."""

from __future__ import annotations

from aegpo.strategies.base import (
    RoundContext,
    RoundPlan,
    Strategy,
    expand_groups,
    make_plan,
    random_train_steps,
    validate_peaks_k,
)


class RandomKStrategy(Strategy):
    name = "random_k"

    @classmethod
    def validate_params(cls, params) -> None:
        super().validate_params(params)
        validate_peaks_k(params)  # K random steps, no spacing rule

    def plan_round(self, ctx: RoundContext) -> RoundPlan:
        sizes = self.uniform_sizes(ctx)
        t, k = ctx.num_steps, self.params.aegpo.peaks_k
        per_prompt = random_train_steps(len(sizes), t, k, ctx.rng)  # (P, T): K of the T − 1 steps per prompt
        prompt_index, _ = expand_groups(sizes)
        mask = per_prompt[prompt_index]
        chosen = [sorted(row.nonzero().squeeze(1).tolist()) for row in per_prompt]
        return RoundPlan(sizes, make_plan(mask), info={"chosen_steps": chosen})
