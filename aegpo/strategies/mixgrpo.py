"""`mixgrpo`: MixGRPO's sliding window. SDE (and training) only inside a window of `mixgrpo.window`
consecutive steps, ODE outside; the window starts at the noisiest step and slides one step
towards σ = 0 every `mixgrpo.shift_every` rounds, rolling back to 0 at the end (progressive)."""

from __future__ import annotations

import numpy as np

from aegpo.strategies.base import RoundContext, RoundPlan, Strategy, make_plan


class MixGRPOStrategy(Strategy):
    name = "mixgrpo"

    @classmethod
    def validate_params(cls, params) -> None:
        super().validate_params(params)
        t = params.sampler.num_steps
        if params.mixgrpo.window > t - 1:
            raise ValueError(f"mixgrpo.window: {params.mixgrpo.window} > {t - 1} explorable steps")

    def window_start(self, round_index: int, num_steps: int) -> int:
        w = self.params.mixgrpo.window
        positions = num_steps - 1 - w + 1  # window must stay inside steps 0 … T−2
        return (round_index // self.params.mixgrpo.shift_every) % positions

    def plan_round(self, ctx: RoundContext) -> RoundPlan:
        sizes = self.uniform_sizes(ctx)
        n, t = sum(sizes), ctx.num_steps
        start = self.window_start(ctx.round, t)
        sde = np.zeros((n, t), dtype=bool)
        sde[:, start : start + self.params.mixgrpo.window] = True
        return RoundPlan(sizes, make_plan(sde), info={"window_start": start})
