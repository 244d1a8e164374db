"""AEGPO: attention entropy decides how many rollouts each prompt gets and where they explore.

Each round (switches in params.yaml `aegpo:`):

0. Base Entropy(t) of the round's prompts from the lazy base profile (aegpo/profile.py): prompts seen
   for the first time are probed under the base policy now; their NFE is charged to the run the first
   time the run uses them (also when another run already cached them: runs compare as fresh runs).
1. Current Entropy(t) per prompt: a probe of the current policy (`delta_source: probe`, one ODE
   trajectory per prompt, P·T NFE, counted) or the prompt's previous rollouts (`history`).
2. **Local** (`aegpo_local`, `aegpo`): the K steps to explore are chosen from Entropy(t) of the
   probe or of the cached base profile (`peak_source`) by `peak_rule` per prompt or batch
   (aegpo/peaks.py), at the maxima of Entropy(t) (the paper), its minima, or the direction the
   base-policy calibration measured (`peak_direction: auto`, aegpo/bench/critical_steps.py; the
   trainer resolves it and its NFE is charged in the first round). SDE at those steps, ODE
   elsewhere; those transitions are trained.
3. **Global** (`aegpo_global`, `aegpo`): ΔEntropy = |Ē_θ − Ē_base| ÷ Ē_base (relative, the paper) or
   without the division (absolute), Ē aggregated over all steps or the chosen peaks; group sizes by
   `allocation` with the total of uniform GRPO (aegpo/allocation.py); differences below
   `tie_tolerance` of the entropy scale are ties (uniform budgets). `aegpo_global` keeps grpo's
   step rule (SDE everywhere, random `timestep_fraction` trained).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from aegpo.allocation import allocate
from aegpo.peaks import select_steps
from aegpo.rollout import Rollout, StepPlan
from aegpo.strategies.base import (RoundContext, RoundPlan, Strategy, expand_groups, explore_all_steps,
                                   random_train_steps)


class AEGPOStrategy(Strategy):
    name = "aegpo"
    use_global = True
    use_local = True
    needs_base_profile = True

    def __init__(self, params) -> None:
        super().__init__(params)
        self.history: dict[str, list[float]] = {}  # prompt → mean Entropy(t) of its last rollouts
        self.base_seen: set[str] = set()  # prompts whose base probe this run has been charged for
        # peak_direction auto: set by the trainer from the base-policy calibration (resolve_peak_direction)
        self.peak_direction: str | None = None if params.aegpo.peak_direction == "auto" else params.aegpo.peak_direction
        self.calibration: dict[str, Any] | None = None
        self.calibration_charged = False

    def resolve_peak_direction(self, direction: str, calibration: dict[str, Any]) -> None:
        """The direction `auto` resolved to and the evidence (a summary of aegpo.bench.critical_steps)."""
        if direction not in ("high", "low"):
            raise ValueError(f"{self.name}: calibration chose {direction!r}, expected high or low")
        self.peak_direction, self.calibration = direction, calibration

    # ----- entropy signals ---------------------------------------------------------------------
    def _current_entropy(self, ctx: RoundContext) -> tuple[np.ndarray | None, np.ndarray | None, int]:
        """(probe Entropy(t) (P, T) or None, entropy for ΔEntropy (P, T) or None, probe NFE)."""
        a = self.params.aegpo
        want_probe = (self.use_local and a.peak_source == "probe") or (self.use_global and a.delta_source == "probe")
        to_probe = list(range(len(ctx.prompts))) if want_probe else []
        if self.use_global and a.delta_source == "history" and not want_probe:
            to_probe = [i for i, p in enumerate(ctx.prompts) if p not in self.history]
        probed: np.ndarray | None = None
        nfe = 0
        if to_probe:
            if ctx.probe is None:
                raise ValueError(f"{self.name}: this round needs an entropy probe but the trainer gave none")
            rollout = ctx.probe([ctx.prompts[i] for i in to_probe])
            nfe = rollout.nfe
            probed = np.full((len(ctx.prompts), ctx.num_steps), np.nan)
            probed[to_probe] = rollout.entropy.numpy()
        for_delta = None
        if self.use_global:
            if a.delta_source == "history":
                for_delta = np.stack([np.asarray(self.history[p]) if p in self.history else probed[i]
                                      for i, p in enumerate(ctx.prompts)])
            else:
                for_delta = probed
        return (probed if want_probe else None), for_delta, nfe

    def _peaks(self, entropy_t: np.ndarray) -> np.ndarray:
        a = self.params.aegpo
        if self.peak_direction is None:
            raise ValueError(f"{self.name}: aegpo.peak_direction is auto but no calibration resolved it "
                             "(the trainer runs it when it builds the strategy)")
        return select_steps(entropy_t, a.peaks_k, a.peak_rule, a.min_spacing, a.peak_scope, self.peak_direction)

    # ----- the plan ----------------------------------------------------------------------------
    def plan_round(self, ctx: RoundContext) -> RoundPlan:
        a, g = self.params.aegpo, self.params.train.group_size
        if ctx.base_profile is None:
            raise ValueError(f"{self.name} needs the base-entropy profile (the trainer loads it for this strategy)")
        new = [p for p in dict.fromkeys(ctx.prompts) if p not in self.base_seen]
        ctx.base_profile.ensure(ctx.prompts)  # probes the base on prompts no run has cached yet
        base = ctx.base_profile.entropy_t(ctx.prompts)  # (P, T)
        base_nfe = ctx.base_profile.probe_nfe(len(new))
        self.base_seen.update(new)
        probed, current, probe_nfe = self._current_entropy(ctx)
        info: dict[str, Any] = {"base_entropy": base.mean(1).tolist(), "base_probe_nfe": base_nfe,
                                "base_probe_prompts": len(new)}
        probe_nfe += base_nfe
        if self.use_local or a.delta_aggregate == "peaks":
            info["peak_direction"] = self.peak_direction
        if self.calibration is not None and not self.calibration_charged:
            info["peak_calibration"] = self.calibration
            probe_nfe += int(self.calibration["nfe"])
            self.calibration_charged = True
        peak_source = probed if (probed is not None and a.peak_source == "probe") else base
        steps = self._peaks(peak_source) if self.use_local or a.delta_aggregate == "peaks" else None
        if self.use_global:
            if a.delta_aggregate == "mean":
                cur_bar, base_bar = current.mean(1), base.mean(1)
            else:
                cur_bar = (current * steps).sum(1) / steps.sum(1)
                base_bar = (base * steps).sum(1) / steps.sum(1)
            delta = np.abs(cur_bar - base_bar)
            if a.delta == "relative":
                delta = delta / np.maximum(np.abs(base_bar), 1e-12)
                tol = a.tie_tolerance  # already in units of the entropy scale
            else:
                tol = a.tie_tolerance * float(np.abs(base_bar).mean())
            high, low = a.split(g)
            floor, ceiling = a.bounds(g)
            sizes = allocate(a.allocation, delta, g, high=high, low=low, floor=floor, ceiling=ceiling,
                             rng=ctx.rng, tol=tol).tolist()
            info.update(delta_entropy=delta.tolist(), current_entropy=cur_bar.tolist(), tie_tolerance=tol)
        else:
            sizes = self.uniform_sizes(ctx)
        prompt_index, _ = expand_groups(sizes)
        n, t = len(prompt_index), ctx.num_steps
        if self.use_local:
            mask = torch.from_numpy(steps)[prompt_index]
            plan = StepPlan(mask, mask.clone())
            info["chosen_steps"] = [np.flatnonzero(row).tolist() for row in steps]
            info["entropy_at_chosen"] = [peak_source[i, row].tolist() for i, row in enumerate(steps)]
        else:
            k = max(1, int((t - 1) * self.params.train.timestep_fraction))
            plan = StepPlan(explore_all_steps(n, t), random_train_steps(n, t, k, ctx.rng))
        if probed is not None:
            info["probe_entropy_t"] = np.nanmean(probed, 0).tolist()
        info["group_sizes"] = list(sizes)
        return RoundPlan(sizes, plan, info=info, probe_nfe=probe_nfe)

    # ----- history (delta_source: history) ----------------------------------------------------
    def observe(self, ctx: RoundContext, rollout: Rollout, rewards: np.ndarray) -> dict[str, Any]:
        if self.params.aegpo.delta_source == "history" and rollout.entropy is not None:
            ent = rollout.entropy
            for i, prompt in enumerate(ctx.prompts):
                self.history[prompt] = ent[rollout.prompt_index == i].mean(0).tolist()
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "base_seen": sorted(self.base_seen),
                "calibration_charged": self.calibration_charged}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = dict(state.get("history", {}))
        self.base_seen = set(state.get("base_seen", []))
        self.calibration_charged = bool(state.get("calibration_charged", False))


class AEGPOGlobalStrategy(AEGPOStrategy):
    name = "aegpo_global"
    use_local = False


class AEGPOLocalStrategy(AEGPOStrategy):
    name = "aegpo_local"
    use_global = False
