"""The RL trainer: each round reads sample → score → advantage → optimize.

`Trainer(params).run()` trains `train.rounds` rounds, resuming from `out_dir/state` when
it exists. Each round's record (an `aegpo.record.RoundRecord`, its fields documented there) is
written to `out_dir/rounds/round-NNNN.json` and passed to the `callbacks`, which is how
trackers (MLflow, in flows/) observe training without the library importing them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from aegpo import distributed
from aegpo.checkpoint import load_base_policy, save_trained
from aegpo.config import Params, flatten
from aegpo.ema import EMA
from aegpo.entropy.profile import EntropyProfile, LazyBaseProfile, ProbeSpec, ProfileStore, probe
from aegpo.entropy.recorder import EntropyRecorder
from aegpo.eval_metrics import metric_names
from aegpo.evaluate import evaluate
from aegpo.guard import NonFiniteRound, RoundSnapshot, RoundsRejectedError, require_finite
from aegpo.io_utils import atomic_write_json, clean_litter, read_json_file, recover_directory
from aegpo.models.base import Conditioning, LoraSpec
from aegpo.policy_update import UpdateConfig, UpdateShard, group_advantages, policy_update
from aegpo.record import PromptResult, RejectedRound, RoundRecord, UpdateStats
from aegpo.rewards.base import RewardResult
from aegpo.rewards.registry import reward_from_params
from aegpo.rollout import Rollout, StepPlan, derive_seed, generate, sample_seeds
from aegpo.run_lock import RunLock, check_writable_folder
from aegpo.strategies.base import RoundContext, RoundPlan, expand_groups
from aegpo.strategies.registry import build_strategy
from aegpo.tables import PROFILE_SCHEMA, read_table
from aegpo.train_state import load_state, optimizer_from_tensors, save_state

log = logging.getLogger(__name__)
RoundCallback = Callable[[RoundRecord], None]


@dataclass
class RoundWork:
    """One round in flight: what each stage has produced so far."""

    ctx: RoundContext
    plan: RoundPlan
    cond: Conditioning  # the round's encoded prompts (P), shared by sampling and the update
    rollout: Rollout | None = None
    scored: RewardResult | None = None
    advantages: torch.Tensor | None = None  # (N,)
    stats: dict[str, float] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)
    rejected: str | None = None  # why the round was rejected (a NaN/inf value), None while it is sound
    # data-parallel runs: (global ids of this rank's samples (n,), rank of every sample (N,)); None on one rank
    shard: tuple[torch.Tensor, torch.Tensor] | None = None


def compute_advantages(scored: RewardResult, groups: torch.Tensor, params: Params) -> torch.Tensor:
    """Group advantages (N,): of the weighted reward (`reward.aggregate: sum`), or the weighted sum of
    each part's own group z-scores (`advantage`, MixGRPO's advantage_aggr), clipped once more."""
    t, r = params.train, params.reward
    if r.aggregate == "sum":
        return group_advantages(torch.from_numpy(scored.score), groups, t.std_floor, t.adv_clip_max)
    total = torch.zeros(len(groups))
    for name, weight in r.weights.items():
        part = torch.from_numpy(np.asarray(scored.parts[name], dtype=np.float64))
        total += weight * group_advantages(part, groups, t.std_floor, t.adv_clip_max)
    return total.clamp(-t.adv_clip_max, t.adv_clip_max)
def _check_scores(work: RoundWork) -> None:
    """Mark the round rejected when a reward, a reward part or an advantage is NaN/inf."""
    if work.rejected is not None or work.scored is None:
        return
    try:
        require_finite("reward", work.scored.score)
        for name, part in work.scored.parts.items():
            require_finite(f"reward part {name}", part)
        if work.advantages is not None:
            require_finite("advantages", work.advantages)
    except NonFiniteRound as err:
        work.rejected = err.reason


RESUME_MAY_CHANGE = ("train.rounds", "train.eval_every", "train.save_every", "train.max_rejected_rounds", "eval.",
                     "train.nproc", "train.dist_timeout", "train.data_parallel")  # = round_io.RESUMABLE_PREFIXES


resolve_device = distributed.resolve_device


class Trainer:
    def __init__(self, params: Params, train_prompts: list[str], eval_prompts: list[str] | None = None,
                 project_dir: str | Path = ".", progress: bool = True,
                 base_profile_path: str | Path | None = None) -> None:
        self._t_start = time.perf_counter()  # for seconds_to_first_round
        self.params = params
        self.project_dir = Path(project_dir)
        self.out_dir = self.project_dir / params.train.out_dir
        # under torchrun: join the process group first (its device is cuda:LOCAL_RANK on GPUs)
        self.device = distributed.init(params.model.device, params.train.dist_timeout)
        self.world = distributed.world_size()
        self.progress = progress and distributed.is_main()
        if self.world > params.train.prompts_per_round:
            raise distributed.DistributedError(
                f"{self.world} ranks but train.prompts_per_round={params.train.prompts_per_round}: every rank needs "
                "at least one whole prompt group; lower train.nproc or raise train.prompts_per_round")
        # Fail before any model is loaded or round computed; then hold the folder (one writer per run: rank 0,
        # the only rank that writes). A refusal on rank 0 stops every rank.
        self._lock: RunLock | None = None
        refusal = None
        if distributed.is_main():
            try:
                check_writable_folder(self.out_dir)
                self._lock = RunLock(self.out_dir)
            except Exception as err:  # noqa: BLE001 - re-raised below, on every rank
                refusal = err
        message = distributed.broadcast_object(None if refusal is None else f"{type(refusal).__name__}: {refusal}")
        if refusal is not None:
            raise refusal
        if message is not None:
            raise distributed.DistributedError(f"rank 0 refused the run: {message}")
        try:
            self._setup(params, train_prompts, eval_prompts, base_profile_path)
        except BaseException:
            self.close()
            raise

    def _setup(self, params: Params, train_prompts: list[str], eval_prompts: list[str] | None,
               base_profile_path: str | Path | None) -> None:
        if params.model.threads:
            torch.set_num_threads(params.model.threads)
        self.reward = reward_from_params(params, self.project_dir)
        for p in train_prompts + (eval_prompts or []):
            self.reward.validate_prompt(p)
        self.train_prompts, self.eval_prompts = train_prompts, eval_prompts
        self.policy, self.base_ref = load_base_policy(params.model, self.project_dir)
        self.policy.to(self.device)
        self.recorder = EntropyRecorder.from_params(params.entropy) if params.entropy.record else None
        if self.recorder is not None:
            self.recorder.install(self.policy)
        self.strategy = build_strategy(params)
        self.probe_spec = ProbeSpec.from_params(params)
        # The base profile is lazy: each round's new prompts are probed under the base policy (_probe_base).
        self.base_profile_path = base_profile_path
        self._frozen_copy = False  # full fine-tuning: the base is a frozen copy of the transformer
        self.base_profile = self._load_base_profile(base_profile_path) if self.strategy.needs_base_profile else None
        # peak_direction auto: calibrated now, while the policy is still the base
        self.peak_calibration = self._calibrate_peak_direction() if self.strategy.needs_base_profile else None
        if params.model.finetune == "lora":
            lp = params.model.lora
            self.policy.add_lora(LoraSpec(lp.rank, lp.alpha, tuple(lp.target_modules), lp.init), seed=params.seed)
        else:
            self.policy.set_full_finetune()
            self._frozen_copy = True
        self._setup_data_parallel()
        self.named_trainable = {n: p for n, p in self.policy.transformer.named_parameters() if p.requires_grad}
        o = params.train.optim
        self.optimizer = torch.optim.AdamW(list(self.named_trainable.values()), lr=o.lr, betas=o.betas,
                                           eps=o.eps, weight_decay=o.weight_decay)
        self.ema = EMA(list(self.named_trainable.values()), params.train.ema_decay) if params.train.ema_decay else None
        self.callbacks: list[RoundCallback] = []
        # images (N, H, W, 3) of the evaluation end_round ran itself (the record carries its metrics), for a
        # callback that stores them (flows/ranks.py); the pipeline's tasks call evaluate_with_images instead
        self.last_eval_images: np.ndarray | None = None
        self.round, self.nfe = 0, 0
        self.history: list[RoundRecord] = []
        self.rejected_streak = 0  # consecutive rejected rounds (a NaN/inf reward, advantage, loss, gradient, weight)
        self._unsaved = False  # an accepted round's update is not in the saved state yet (save_every > 1)
        self.base_eval: dict[str, Any] | None = None
        self._resume()

    def close(self) -> None:
        """Give back the run folder's lock (also done when the process ends, kill -9 included)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # ----- the loop --------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train until `train.rounds` (resuming where the state left off); returns a summary."""
        if self.base_eval_due():
            self.evaluate_base()
        bar = tqdm(total=self.params.train.rounds, initial=self.round, desc="train", unit="round",
                   disable=not self.progress)
        while self.round < self.params.train.rounds:
            record = self.run_round()
            bar.update(1)
            bar.set_postfix(reward="rejected" if isinstance(record, RejectedRound) else f"{record.reward_mean:.3f}",
                            nfe=self.nfe)
        bar.close()
        return {"rounds": self.round, "nfe": self.nfe, "history": self.history, "base_eval": self.base_eval,
                "checkpoint": str(self.out_dir / "checkpoint")}

    def run_round(self) -> RoundRecord | RejectedRound:
        """One round: plan → sample → score (+ advantages) → optimize → record/evaluate/save."""
        work = self.begin_round()
        self.sample(work)
        self.score(work)
        self.optimize(work)
        return self.end_round(work)

    # ----- stages (the pipeline calls these one by one) ---------------------------------------
    def begin_round(self) -> RoundWork:
        """Prompts of the next round and the strategy's plan (group sizes, SDE/train steps)."""
        t0 = time.perf_counter()
        ctx = self._context(self.round)
        cond = self.policy.encode_prompts(ctx.prompts)
        work = RoundWork(ctx, self.strategy.plan_round(ctx), cond)
        work.times["plan"] = time.perf_counter() - t0
        return work

    def sample(self, work: RoundWork) -> Rollout:
        t0 = time.perf_counter()
        s = self.params.sampler
        prompt_index, rank = expand_groups(work.plan.group_sizes)
        seeds = sample_seeds(derive_seed(self.params.seed, "rollout", work.ctx.round), prompt_index, rank, False)
        init_seeds = None
        if s.same_noise:  # one initial noise per group; the SDE noise stays per sample
            init_seeds = sample_seeds(derive_seed(self.params.seed, "init", work.ctx.round), prompt_index, rank, True)
        plan = work.plan.plan
        if self.world > 1:  # this rank's whole groups; seeds stay those of the global sample
            work.shard = self._shard_samples(work.plan, prompt_index)
            mine = work.shard[0]
            prompt_index, seeds, plan = prompt_index[mine], seeds[mine], StepPlan(plan.sde[mine], plan.train[mine])
            init_seeds = None if init_seeds is None else init_seeds[mine]
        self.policy.eval()
        with distributed.unsharded(self.policy.transformer):
            work.rollout = generate(self.policy, work.ctx.prompts, prompt_index, seeds, plan,
                                    init_seeds=init_seeds, sde=s.sde,
                                    noise_level=s.noise_level, shift=s.shift, cond=work.cond, recorder=self.recorder,
                                    progress=self.progress)
        work.times["sample"] = time.perf_counter() - t0
        return work.rollout

    def score(self, work: RoundWork) -> RewardResult:
        """Rewards and group advantages; a NaN/inf among them marks the round rejected (`work.rejected`)."""
        t0 = time.perf_counter()
        ro = work.rollout
        work.scored = self.reward(ro.images, [work.ctx.prompts[i] for i in ro.prompt_index])
        work.advantages = compute_advantages(work.scored, ro.prompt_index, self.params)
        _check_scores(work)
        if work.shard is not None:  # each rank checked its own groups: one NaN rejects the round everywhere
            work.rejected = self._agree_rejected(work.rejected)
        work.times["score"] = time.perf_counter() - t0
        return work.scored

    def optimize(self, work: RoundWork) -> dict[str, float]:
        """The policy update. On a NaN/inf loss, gradient or updated weight, the weights and optimizer state
        go back to the round's start and the round is marked rejected; a rejected round is not updated."""
        _check_scores(work)  # again: the pipeline rebuilds `work` from the stored scores
        if work.rejected is not None:
            return work.stats
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(derive_seed(self.params.seed, "update", work.ctx.round))
        full = self.params.model.finetune == "full"  # a full copy of a large model belongs in host memory
        snapshot = RoundSnapshot(self.named_trainable, self.optimizer, "cpu" if full else None)
        try:
            work.stats = policy_update(self.policy, self.optimizer, work.rollout, work.advantages, work.cond,
                                       self._update_cfg(), gen, self._update_shard(work))
            snapshot.check_weights()
        except NonFiniteRound as err:
            work.rejected = err.reason
        if work.shard is not None:  # FSDP2 checks its own weight shard: every rank rejects if one does
            work.rejected = self._agree_rejected(work.rejected)
        if work.rejected is not None:
            snapshot.restore()
            return work.stats
        if self.ema is not None:
            self.ema.update()
        work.times["optimize"] = time.perf_counter() - t0
        return work.stats

    def end_round(self, work: RoundWork, evaluation: dict[str, Any] | None = None,
                  publish: RoundCallback | None = None) -> RoundRecord | RejectedRound:
        """Count NFE, build the round record, evaluate and save when due, notify callbacks.

        `evaluation`: the result of `evaluate()` on the updated policy when the caller (the
        pipeline's evaluation task) already ran it; its time is `work.times["eval"]`.
        `publish`: called with this round's record after the `callbacks`, before the state is saved.
        """
        if work.rejected is not None:
            return self._reject(work)
        self.rejected_streak = 0
        ro, scored, advantages = self._round_view(work)
        # every pass over the trained transitions is a forward of the denoiser (inner_epochs passes)
        update_calls = int(work.stats.get("trained_transitions", 0)) * self.params.train.inner_epochs
        self.nfe += ro.nfe + work.plan.probe_nfe + update_calls * self.policy.nfe_per_call
        record = self._record(work, ro, scored, advantages, self.strategy.observe(work.ctx, ro, scored.score))
        if work.ctx.round == 0:  # model loading, calibration, base eval and round 0 (not its eval) of a fresh run
            record = replace(record, seconds_to_first_round=time.perf_counter() - self._t_start)
        self.round = work.ctx.round + 1
        if evaluation is not None:
            record = record.with_eval(evaluation)
        elif self.eval_due(self.round):
            t0 = time.perf_counter()
            evaluation, self.last_eval_images = self.evaluate_with_images()
            record = record.with_eval(evaluation, time.perf_counter() - t0)
        self._finish_round(record, publish)
        return record

    def _reject(self, work: RoundWork) -> RejectedRound:
        """A rejected round: its compute counts (NFE), nothing is trained, saved or passed to callbacks; the
        reason goes to the log and `rounds/rejected-NNNN.json`. Too many in a row stop the run."""
        rollout_nfe, scores = work.rollout.nfe, None if work.scored is None else np.asarray(work.scored.score)
        if work.shard is not None:  # every rank's part (all ranks reject the same rounds)
            rollout_nfe = sum(distributed.all_gather_objects(rollout_nfe))
            parts = distributed.all_gather_objects(scores)
            scores = None if any(p is None for p in parts) else np.concatenate(parts)
        self.nfe += rollout_nfe + work.plan.probe_nfe
        self.rejected_streak += 1
        r, limit = work.ctx.round, self.params.train.max_rejected_rounds
        finite = scores is not None and bool(np.isfinite(scores).any())
        record = RejectedRound(round=r, rejected=work.rejected, nfe=self.nfe, streak=self.rejected_streak,
                               reward_mean=float(np.nanmean(scores)) if finite else None,
                               prompts=list(work.ctx.prompts))
        with distributed.main_writes("rejected round") as mine:
            if mine:
                atomic_write_json(self.out_dir / "rounds" / f"rejected-{r:04d}.json", record.to_json())
        log.warning("round %d rejected (%s): weights and optimizer state kept from its start; %d of %d allowed "
                    "rejected rounds in a row", r, work.rejected, self.rejected_streak, limit)
        self.round = r + 1
        stopping = self.rejected_streak >= limit
        if self._unsaved and (stopping or self.round == self.params.train.rounds):
            self.save()  # the sound updates since the last save (the weights are the round's start, all finite)
        if stopping:
            saved = self.out_dir / "checkpoint"
            raise RoundsRejectedError(
                f"{self.rejected_streak} rounds in a row (up to round {r}) had NaN/inf values, the last one: "
                f"{work.rejected}. Training stopped (train.max_rejected_rounds = {limit}); the last good "
                f"checkpoint is {saved if saved.is_dir() else 'not written yet'}, and resuming restarts after "
                f"its round. Check the reward (reward.name, its dtype) and train.optim.lr.")
        return record

    # ----- hooks for the pipeline (flows/): stages run as separate tasks ------------------------
    def eval_due(self, rounds_done: int) -> bool:
        """Whether the policy is evaluated after `rounds_done` completed rounds."""
        t = self.params.train
        return bool(t.eval_every and rounds_done % t.eval_every == 0) or rounds_done == t.rounds

    def base_eval_due(self) -> bool:
        return self.round == 0 and self.params.train.eval_base and bool(self.eval_prompts) and self.base_eval is None

    def evaluate_base(self) -> tuple[dict[str, Any], np.ndarray | None]:
        """Evaluate the base policy (the 'before' of before/after), kept in out_dir/eval_base.json;
        returns the result and its images (N, H, W, 3) uint8."""
        self.base_eval, images = self.evaluate_with_images()
        with distributed.main_writes("base eval") as mine:
            if mine:
                atomic_write_json(self.out_dir / "eval_base.json", self.base_eval)
        return self.base_eval, images

    def restore_round(self, rollout: Rollout, plan: RoundPlan, scored: RewardResult | None = None,
                      advantages: torch.Tensor | None = None, times: dict[str, float] | None = None) -> RoundWork:
        """The RoundWork of round `self.round` rebuilt from stored stage outputs (flows.round_io)."""
        ctx = self._context(self.round)
        if rollout.prompts != ctx.prompts:
            raise ValueError(f"stored rollout of round {self.round} was sampled for other prompts than this "
                             "run's (stale artifacts from another run?)")
        return RoundWork(ctx, plan, self.policy.encode_prompts(ctx.prompts), rollout=rollout, scored=scored,
                         advantages=advantages, times=dict(times or {}))

    # ----- pieces ----------------------------------------------------------------------------
    def _context(self, r: int) -> RoundContext:
        p = self.params
        ids = self._prompt_ids(r)
        prompts = [self.train_prompts[i] for i in ids]
        return RoundContext(round=r, prompts=prompts, prompt_ids=ids, num_steps=p.sampler.num_steps,
                            rng=np.random.default_rng(derive_seed(p.seed, "plan", r) % 2**63),
                            probe=self._probe, base_profile=self.base_profile)

    def _prompt_ids(self, r: int) -> list[int]:
        """Prompts of round r: consecutive slices of per-epoch seeded permutations of the train set."""
        n, k = len(self.train_prompts), self.params.train.prompts_per_round
        ids: list[int] = []
        pos = r * k
        while len(ids) < k:
            epoch, offset = divmod(pos, n)
            perm = np.random.default_rng(derive_seed(self.params.seed, "epoch", epoch) % 2**63).permutation(n)
            take = perm[offset : offset + k - len(ids)].tolist()
            ids += take
            pos += len(take)
        return ids

    def _probe(self, prompts: list[str]):
        """Entropy probe of the current policy (aegpo.entropy.profile.probe: fixed per-prompt noise)."""
        self.policy.eval()
        with distributed.unsharded(self.policy.transformer):
            return probe(self.policy, prompts, self.probe_spec, self.recorder)

    def _load_base_profile(self, path: str | Path | None = None) -> LazyBaseProfile:
        """The lazy base-entropy profile: prompts are probed under the base policy when a round first needs
        them, into the per-prompt store under aegpo.cache_dir; a precomputed table (`path`, the `profile`
        stage) is used as it is and only prompts it lacks are probed."""
        if self.recorder is None:
            raise ValueError(f"{self.params.train.strategy} needs attention entropy: set entropy.record=true")
        preload = EntropyProfile.from_table(read_table(path, PROFILE_SCHEMA)) if path is not None else None
        store = ProfileStore(self.project_dir / self.params.aegpo.cache_dir, self.base_ref["manifest_sha256"],
                             self.probe_spec)
        profile = LazyBaseProfile(self._probe_base, store, self.policy.nfe_per_call, self.params.sampler.num_steps,
                                  preload=preload)
        profile.set_layer_names(self.recorder.layer_names)
        if path is None:
            self.base_profile_path = store.dir
        return profile

    def _probe_base(self, prompts: list[str]) -> Rollout:
        """Entropy probe of the BASE policy (LoRA: adapters disabled; full fine-tuning: the frozen copy), from
        the same fixed probe noise as `_probe`."""
        self.policy.eval()
        try:
            with self.policy.reference():
                if self._frozen_copy:  # the frozen copy's processors record elsewhere: record on it for now
                    self.recorder.install(self.policy)
                return probe(self.policy, prompts, self.probe_spec, self.recorder, progress=self.progress)
        finally:
            if self._frozen_copy:
                self.recorder.install(self.policy)  # back on the trained transformer

    def _calibrate_peak_direction(self) -> dict[str, Any] | None:
        """peak_direction auto: measure (or reuse) the critical-steps calibration on the base, resolve the strategy's
        direction; None when the direction is fixed in params."""
        a = self.params.aegpo
        uses_steps = getattr(self.strategy, "use_local", False) or a.delta_aggregate == "peaks"
        if a.peak_direction != "auto" or not uses_steps:
            return None
        from aegpo.bench.critical_steps import load_or_calibrate, record_summary, summary_line

        prompts = self.train_prompts[: a.calibration_prompts]
        result, _ = load_or_calibrate(self.policy.eval(), self.base_profile.entropy_t, self.base_ref["manifest_sha256"],
                                      prompts, self.reward, self.params, self.base_profile.probe_nfe(len(prompts)),
                                      self.project_dir / a.cache_dir, progress=self.progress)
        summary = record_summary(result)
        self.strategy.resolve_peak_direction(result["direction"], summary)
        log.info("%s", summary_line(result))
        return summary

    def _update_cfg(self) -> UpdateConfig:
        t, s = self.params.train, self.params.sampler
        return UpdateConfig(sde=s.sde, noise_level=s.noise_level, clip_range=t.clip_range, kl_beta=t.kl_beta,
                            max_grad_norm=t.optim.max_grad_norm, optimizer_steps=t.optimizer_steps,
                            micro_batch=t.micro_batch, inner_epochs=t.inner_epochs)

    def _record(self, work: RoundWork, rollout: Rollout, scored: RewardResult, advantages: torch.Tensor,
                extra: dict[str, Any]) -> RoundRecord:
        """The round's record from its whole view (`_round_view`: every rank's samples)."""
        ctx = work.ctx
        idx = rollout.prompt_index.numpy()
        per_prompt = []
        for i, prompt in enumerate(ctx.prompts):
            sel = idx == i
            per_prompt.append(PromptResult(prompt, ctx.prompt_ids[i], int(sel.sum()), float(scored.score[sel].mean()),
                                           float(scored.score[sel].std())))
        ent = rollout.entropy
        return RoundRecord(
            round=ctx.round, nfe=self.nfe, rollout_nfe=rollout.nfe, probe_nfe=work.plan.probe_nfe,
            reward_mean=float(scored.score.mean()), reward_std=float(scored.score.std()),
            reward_parts={k: float(v.mean()) for k, v in scored.parts.items()},
            adv_abs_mean=float(advantages.abs().mean()), num_samples=rollout.num_samples,
            sde_steps_per_sample=float(rollout.plan.sde.sum(1).float().mean()),
            train_steps_per_sample=float(rollout.plan.train.sum(1).float().mean()),
            update=UpdateStats(**work.stats), seconds=dict(work.times), per_prompt=per_prompt, plan=work.plan.info,
            entropy_t=None if ent is None else ent.mean(0).tolist(), extra=extra)

    def evaluate(self) -> dict[str, Any]:
        """The current policy's evaluation on the eval prompts (EMA weights when EMA is on)."""
        return self.evaluate_with_images()[0]

    def evaluate_with_images(self) -> tuple[dict[str, Any], np.ndarray | None]:
        """`evaluate()` and its images (N, H, W, 3) uint8, None without eval prompts."""
        if not self.eval_prompts:
            return {}, None
        e = self.params.eval
        self.policy.eval()
        ctx = self.ema.applied() if self.ema is not None else contextlib.nullcontext()
        with ctx, distributed.unsharded(self.policy.transformer):
            result = evaluate(self.policy, self.eval_prompts, self.reward, num_steps=e.num_steps,
                              samples_per_prompt=e.samples_per_prompt, seed=e.seed, shift=self.params.sampler.shift,
                              batch_size=e.batch_size, progress=self.progress)
        images = result.pop("images")
        return result, images

    def _finish_round(self, record: RoundRecord, publish: RoundCallback | None = None) -> None:
        self.history.append(record)
        with distributed.main_writes("round record") as mine:
            if mine:  # rank 0 alone writes records and notifies trackers (callbacks are attached there only)
                atomic_write_json(self.out_dir / "rounds" / f"round-{record.round:04d}.json", record.to_json())
                for cb in [*self.callbacks, *([publish] if publish is not None else [])]:
                    cb(record)
        t = self.params.train
        self._unsaved = True
        if self.round % t.save_every == 0 or self.round == t.rounds:
            self.save()
        ev = record.eval or {}
        log.info("round %d: reward %.3f nfe %d%s", record.round, record.reward_mean, self.nfe,
                 "".join(f" eval {k} {ev[k]:.3f}" for k in metric_names(ev)) if ev else "")

    # ----- persistence -----------------------------------------------------------------------
    def save(self) -> None:
        """Resumable state, then the final-form checkpoint (EMA weights when EMA is on)."""
        self._unsaved = False
        info = {"round": self.round, "nfe": self.nfe, "strategy": self.strategy.state_dict(),
                "params": _json_params(self.params), "world_size": self.world}
        trainable, optimizer, policy = self._full_views()
        with distributed.main_writes("state") as mine:  # the others wait: nobody runs ahead of a save
            if not mine:
                return
            save_state(self.out_dir / "state", trainable, optimizer, self.ema.state_tensors() if self.ema else {}, info)
            self._save_checkpoint(policy)

    def _full_views(self):
        """(trainable, optimizer, policy) as whole tensors: FSDP2 shards are gathered (a collective: every rank
        calls this, rank 0 writes)."""
        trainable, optimizer, policy = self.named_trainable, self.optimizer, self.policy
        if self.parallel == "fsdp":
            trainable = {n: distributed.full_tensor(p.detach()) for n, p in trainable.items()}
            optimizer = distributed.FullOptimizerView(self.optimizer)
            policy = distributed.FullPolicyView(self.policy, {
                k: distributed.full_tensor(v) for k, v in self.policy.transformer.state_dict().items()})
        return trainable, optimizer, policy

    def _save_checkpoint(self, policy=None) -> None:
        ctx = self.ema.applied() if self.ema is not None else contextlib.nullcontext()
        with ctx:
            save_trained(policy if policy is not None else self.policy, self.out_dir / "checkpoint", self.base_ref,
                         meta={"round": self.round, "nfe": self.nfe, "params": _json_params(self.params)})

    def _resume(self) -> None:
        state_dir = self.out_dir / "state"
        if distributed.is_main():  # rank 0 owns the folder
            # A kill inside a save: put back the last complete folder, then drop half-written ones.
            for folder in (state_dir, self.out_dir / "checkpoint"):
                if recover_directory(folder):
                    log.warning("%s: an interrupted save was rolled back to the previous complete folder", folder)
            for path in clean_litter(self.out_dir):
                log.info("removed %s (left by an interrupted write)", path)
        loaded = self._read_state(state_dir)
        if loaded is None:
            return
        trainable, opt_tensors, ema, info, base_eval, records = loaded
        changed = sorted(k for k, v in _json_params(self.params).items()
                         if info["params"].get(k) != v and not k.startswith(RESUME_MAY_CHANGE))
        if changed:
            raise ValueError(f"{state_dir} was written with different parameters ({', '.join(changed)}); "
                             "use another train.out_dir or delete the folder to start over")
        params = list(self.named_trainable.values())
        with torch.no_grad():
            for name, p in self.named_trainable.items():
                p.copy_(distributed.like(trainable[name], p))  # this rank's shard under FSDP2
        if self.parallel == "fsdp":  # AdamW moments of a parameter are sharded like it
            opt_tensors = {k: distributed.like(v, params[int(k.partition(".")[0])]) if v.dim() else v
                           for k, v in opt_tensors.items()}
        optimizer_from_tensors(self.optimizer, opt_tensors, info["optimizer"])
        if self.ema is not None:
            self.ema.load_state_tensors(ema)
        self.strategy.load_state_dict(info["strategy"])
        self.round, self.nfe = info["round"], info["nfe"]
        self.base_eval = base_eval
        self.history.extend(records)
        self._repair_checkpoint()
        log.info("resumed %s at round %d (saved by %d rank(s), now %d)", self.out_dir, self.round,
                 info.get("world_size", 1), self.world)

    # ----- data parallelism (aegpo.distributed); every method is a no-op on one rank -----------------
    def _setup_data_parallel(self) -> None:
        """FSDP2 shards full fine-tuning of sd3/flux before the optimizer sees the weights; DDP/none otherwise."""
        p = self.params.model
        self.parallel = distributed.parallel_mode(self.params.train.data_parallel, p.finetune, p.kind)
        if self.parallel == "fsdp":
            if self.params.train.ema_decay:
                raise distributed.DistributedError("FSDP2 shards the weights: train.ema_decay needs "
                                                   "train.data_parallel=ddp (or 0)")
            distributed.fully_shard_transformer(self.policy.transformer)
        self.grad_sync = distributed.grad_sync_for(self.policy, self.parallel)

    def _shard_samples(self, plan: RoundPlan, prompt_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(global ids of this rank's samples, rank of every sample): whole groups, balanced by denoiser calls."""
        t = self.params.train
        nfe_call = self.policy.nfe_per_call
        # a trained transition costs a forward and a backward (about 3 forwards) in each of the inner epochs
        costs = distributed.group_costs(prompt_index, plan.plan.train.sum(1), plan.plan.sde.shape[1] * nfe_call,
                                        3.0 * t.inner_epochs * nfe_call, len(plan.group_sizes))
        groups = distributed.shard_groups(costs, self.world)
        group_rank = torch.empty(len(plan.group_sizes), dtype=torch.long)
        for r, gs in enumerate(groups):
            group_rank[gs] = r
        sample_rank = group_rank[prompt_index]
        return torch.nonzero(sample_rank == distributed.rank()).squeeze(1), sample_rank

    def _update_shard(self, work: RoundWork) -> UpdateShard | None:
        if work.shard is None:
            return None
        return UpdateShard(work.shard[0], work.shard[1], work.plan.plan.train.sum(1).long(), distributed.rank(),
                           self.world, self.grad_sync)

    def _round_view(self, work: RoundWork) -> tuple[Rollout, RewardResult, torch.Tensor]:
        """The whole round on every rank: the rank's own rollout, or the gathered light parts of all ranks'
        (prompt index, seeds, plan, Entropy(t), rewards, advantages; transitions and images stay local)."""
        ro, scored = work.rollout, work.scored
        if work.shard is None:
            return ro, scored, work.advantages
        mine = {"ids": work.shard[0], "score": np.asarray(scored.score),
                "parts": {k: np.asarray(v) for k, v in scored.parts.items()}, "adv": work.advantages,
                "entropy": ro.entropy_layers, "nfe": ro.nfe}
        parts = distributed.all_gather_objects(mine)
        ids = torch.cat([p["ids"] for p in parts])
        order = torch.argsort(ids)

        def ordered(xs):
            return xs[order.numpy()] if isinstance(xs, np.ndarray) else xs[order]
        score = ordered(np.concatenate([p["score"] for p in parts]))
        part_arrays = {k: ordered(np.concatenate([p["parts"][k] for p in parts])) for k in mine["parts"]}
        ent = None if mine["entropy"] is None else ordered(torch.cat([p["entropy"] for p in parts]))
        prompt_index, group_rank = expand_groups(work.plan.group_sizes)
        s = self.params.sampler
        full = Rollout(prompts=ro.prompts, prompt_index=prompt_index,
                       seeds=sample_seeds(derive_seed(self.params.seed, "rollout", work.ctx.round), prompt_index,
                                          group_rank, False),
                       sigmas=ro.sigmas, plan=work.plan.plan, final=torch.empty(0, *ro.final.shape[1:]),
                       images=np.zeros((len(prompt_index), 0, 0, 3), np.uint8),
                       trans_sample=torch.empty(0, dtype=torch.long), trans_step=torch.empty(0, dtype=torch.long),
                       x_t=torch.empty(0), x_next=torch.empty(0), log_prob=torch.empty(0),
                       nfe=sum(p["nfe"] for p in parts), entropy_layers=ent,
                       extra={"ranks": self.world, "sde": s.sde})
        return full, RewardResult(score=score, parts=part_arrays), ordered(torch.cat([p["adv"] for p in parts]))

    def _agree_rejected(self, reason: str | None) -> str | None:
        """The first rank's rejection reason, on every rank (None when no rank rejects the round)."""
        return next((r for r in distributed.all_gather_objects(reason) if r is not None), None)

    def _read_state(self, state_dir: Path):
        """(trainable, optimizer tensors, EMA, info, base eval, round records) read by rank 0 and sent to all."""
        loaded = None
        if distributed.is_main() and state_dir.exists():
            trainable, opt_tensors, ema, info = load_state(state_dir)
            remedy = "restore it from a copy, or delete it (the run continues; its history lacks that record)"
            base_eval_path = self.out_dir / "eval_base.json"
            base_eval = read_json_file(base_eval_path, remedy) if base_eval_path.is_file() else None
            records = []
            for r in range(info["round"]):
                path = self.out_dir / "rounds" / f"round-{r:04d}.json"
                if path.is_file():
                    records.append(RoundRecord.from_json(read_json_file(path, remedy)))
            loaded = (trainable, opt_tensors, ema, info, base_eval, records)
        return distributed.broadcast_object(loaded)

    def _repair_checkpoint(self) -> None:
        """Rewrite the checkpoint when a kill fell between the state's save and the checkpoint's."""
        from aegpo.checkpoint import CheckpointError, read_manifest

        saved_round = None
        if distributed.is_main():
            try:
                saved_round = read_manifest(self.out_dir / "checkpoint").get("meta", {}).get("round")
            except CheckpointError:
                saved_round = None
        if distributed.broadcast_object(saved_round != self.round):
            log.warning("%s is behind the saved state (round %s, state at %d): rewritten from the state",
                        self.out_dir / "checkpoint", saved_round, self.round)
            _, _, policy = self._full_views()
            with distributed.main_writes("checkpoint") as mine:
                if mine:
                    self._save_checkpoint(policy)


def _json_params(params: Params) -> dict[str, Any]:
    return json.loads(json.dumps({k: v for k, v in flatten(params).items()}, default=list))

