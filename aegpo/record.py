"""The round record: what one training round did, the contract between the library and its writers.

`Trainer.end_round` builds a `RoundRecord`, writes it to `<out_dir>/rounds/round-NNNN.json`
(`to_json`) and hands it to the trainer's callbacks; the pipeline's writers (MLflow metrics
and tables in flows/tracking.py, the DVC reports in flows/reports.py, the Prefect summaries)
read its fields. `from_json` reads a stored record back, including records written before this
class existed (the JSON layout is unchanged: a flat mapping, see `to_json`).

Sizes: P prompts in the round, N = Σ group sizes rollouts, T denoising steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

# Keys of `plan` that the writers know (each strategy fills those it has; aegpo/strategies/):
#   group_sizes (P,) rollouts per prompt; chosen_steps (P, K) explored steps; delta_entropy (P,) ΔEntropy;
#   base_entropy / current_entropy (P,) the aggregated Entropy of the base / current policy;
#   entropy_at_chosen (P, K); probe_entropy_t (T,) the probe's mean Entropy(t); window_start (mixgrpo).
PLAN_KEYS = ("group_sizes", "chosen_steps", "delta_entropy", "base_entropy", "current_entropy",
             "entropy_at_chosen", "probe_entropy_t", "window_start")


@dataclass(frozen=True)
class PromptResult:
    """One prompt of the round: its rollouts' reward statistics."""

    prompt: str
    prompt_id: int  # index in the training prompt file
    group_size: int  # rollouts it got this round
    reward_mean: float
    reward_std: float  # population std over its group


@dataclass(frozen=True)
class UpdateStats:
    """The policy update's statistics (aegpo.policy_update.policy_update), averaged over its micro-batches."""

    loss: float = 0.0  # policy loss + kl_beta · KL, per trained transition
    policy_loss: float = 0.0  # the PPO-clip term
    kl: float = 0.0  # KL to the reference policy (0 when kl_beta = 0)
    clip_frac: float = 0.0  # fraction of transitions with |ρ − 1| > clip_range
    approx_kl: float = 0.0  # ½ (log ρ)², old → new policy
    ratio_mean: float = 0.0  # mean ρ
    grad_norm: float = 0.0  # before clipping, mean over optimizer steps
    first_ratio_dev: float = 0.0  # max |ρ − 1| of the first micro-batch: ~0 when sampling and training agree
    trained_transitions: float = 0.0  # M, transitions the update trained on


UPDATE_KEYS = tuple(f.name for f in fields(UpdateStats))


@dataclass(frozen=True)
class RoundRecord:
    """One completed round. JSON keys are the field names, except `reward_parts` (`reward_<part>`),
    `update` (its fields at the top level) and `seconds` (`seconds_<stage>`)."""

    round: int  # 0-based index of the round
    nfe: int  # cumulative denoiser evaluations of the run after this round (rollouts, probes, updates)
    rollout_nfe: int  # this round's rollouts
    probe_nfe: int  # this round's entropy probes (aegpo strategies)
    reward_mean: float  # over the N rollouts
    reward_std: float
    reward_parts: dict[str, float]  # mean of each reward part (shapes: dense, strict, ...)
    adv_abs_mean: float  # mean |advantage|
    num_samples: int  # N
    sde_steps_per_sample: float  # mean explored (SDE) steps per rollout
    train_steps_per_sample: float  # mean trained steps per rollout
    update: UpdateStats
    seconds: dict[str, float]  # wall seconds per stage: plan, sample, score, optimize, [eval]
    per_prompt: list[PromptResult]  # (P,)
    plan: dict[str, Any]  # the strategy's plan information (PLAN_KEYS)
    entropy_t: list[float] | None  # (T,) mean Entropy(t) of the rollouts; None when not recorded
    eval: dict[str, Any] | None = None  # aegpo.evaluate's result (strict, dense, reward, rows, ...) when due
    # round 0 of a fresh run: wall seconds from the trainer's start (model loading, calibration, base eval) to the
    # end of the round, its evaluation excluded
    seconds_to_first_round: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # what the strategy's observe() returned

    @property
    def group_sizes(self) -> list[int]:
        return list(self.plan.get("group_sizes") or [p.group_size for p in self.per_prompt])

    def with_eval(self, evaluation: dict[str, Any] | None, seconds: float | None = None) -> RoundRecord:
        """A copy with the evaluation (and its wall time) filled in."""
        times = dict(self.seconds) if seconds is None else {**self.seconds, "eval": seconds}
        return replace(self, eval=evaluation, seconds=times)

    def to_json(self) -> dict[str, Any]:
        """The flat JSON mapping of round-NNNN.json."""
        out: dict[str, Any] = {
            "round": self.round, "nfe": self.nfe, "rollout_nfe": self.rollout_nfe, "probe_nfe": self.probe_nfe,
            "reward_mean": self.reward_mean, "reward_std": self.reward_std,
            **{f"reward_{k}": v for k, v in self.reward_parts.items()},
            "adv_abs_mean": self.adv_abs_mean, "num_samples": self.num_samples,
            "sde_steps_per_sample": self.sde_steps_per_sample,
            "train_steps_per_sample": self.train_steps_per_sample,
            **{k: getattr(self.update, k) for k in UPDATE_KEYS},
            **{f"seconds_{k}": v for k, v in self.seconds.items() if k != "eval"},
            "per_prompt": [vars(p).copy() for p in self.per_prompt], "plan": self.plan,
            "entropy_t": self.entropy_t, **self.extra,
        }
        if self.seconds_to_first_round is not None:
            out["seconds_to_first_round"] = self.seconds_to_first_round
        if self.eval is not None:
            out["eval"] = self.eval
        if "eval" in self.seconds:
            out["seconds_eval"] = self.seconds["eval"]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoundRecord:
        """Read a round-NNNN.json mapping back (unknown keys are the strategy's extras)."""
        known = {"round", "nfe", "rollout_nfe", "probe_nfe", "reward_mean", "reward_std", "adv_abs_mean",
                 "num_samples", "sde_steps_per_sample", "train_steps_per_sample", "per_prompt", "plan", "entropy_t",
                 "eval", "seconds_to_first_round", *UPDATE_KEYS}
        try:
            return cls(
                round=int(data["round"]), nfe=int(data["nfe"]), rollout_nfe=int(data.get("rollout_nfe", 0)),
                probe_nfe=int(data.get("probe_nfe", 0)), reward_mean=float(data["reward_mean"]),
                reward_std=float(data.get("reward_std", 0.0)),
                reward_parts={k[len("reward_"):]: v for k, v in data.items()
                              if k.startswith("reward_") and k not in ("reward_mean", "reward_std")},
                adv_abs_mean=float(data.get("adv_abs_mean", 0.0)), num_samples=int(data.get("num_samples", 0)),
                sde_steps_per_sample=float(data.get("sde_steps_per_sample", 0.0)),
                train_steps_per_sample=float(data.get("train_steps_per_sample", 0.0)),
                update=UpdateStats(**{k: float(data[k]) for k in UPDATE_KEYS if k in data}),
                seconds={k[len("seconds_"):]: float(v) for k, v in data.items()
                         if k.startswith("seconds_") and k != "seconds_to_first_round"},
                per_prompt=[PromptResult(**p) for p in data.get("per_prompt", [])],
                plan=dict(data.get("plan") or {}), entropy_t=data.get("entropy_t"), eval=data.get("eval"),
                seconds_to_first_round=data.get("seconds_to_first_round"),
                extra={k: v for k, v in data.items()
                       if k not in known and not k.startswith(("reward_", "seconds_"))},
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"round record: missing or malformed field ({err!r}); expected the layout of "
                             "aegpo.record.RoundRecord.to_json") from None



@dataclass(frozen=True)
class RejectedRound:
    """A round that trained nothing because a reward, advantage, loss, gradient or weight was NaN/inf
    (aegpo.guard): written to `rounds/rejected-NNNN.json`, never to the callbacks."""

    round: int
    rejected: str  # the reason, naming the value
    nfe: int  # cumulative, this round's rollouts and probes included
    streak: int  # rejected rounds in a row, this one included
    reward_mean: float | None  # over the finite rewards, None when none was
    prompts: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"round": self.round, "rejected": self.rejected, "nfe": self.nfe, "streak": self.streak,
                "reward_mean": self.reward_mean, "prompts": list(self.prompts)}
