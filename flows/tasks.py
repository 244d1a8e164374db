"""Prefect tasks of the pipeline: thin wrappers over aegpo that take and return small manifests.

The round's tasks receive the training flow's `TrainingSession` (flows.session: the run's spec,
store and trainer, passed by reference) and round numbers; every task returns URIs, hashes and a few
numbers, never models or tensors. The round in flight stays in the session between a round's tasks;
what they store (flows.round_io) is a side output, read back only when the trainer was rebuilt in
between (a retry after a failure).

| task                  | reads                          | writes (store)                          | retries |
|-----------------------|--------------------------------|-----------------------------------------|---------|
| profile-base-entropy  | base checkpoint, train prompts | cache/profiles/base-entropy-*.parquet   | I/O     |
| generate-rollouts     | the policy (session)           | rounds/round-N/{transitions,images}     | I/O     |
| score-rewards         | transitions, images            | rounds/round-N/{rewards,rollouts}.parquet | I/O   |
| update-policy         | transitions, rewards           | (the policy, in memory)                 | I/O     |
| evaluate-policy       | the policy                     | evals/<label>/{eval.json,rows.parquet,images.png} | I/O |
| finish-round          | the round in flight            | state/, checkpoint/, rounds/round-N.json | no     |
| sync-run              | run folder                     | state/, checkpoint/ trees (remote stores) | I/O   |

Retries happen only for transient errors (flows._prefect.is_transient): never for
out-of-memory or bad input. A task that fails while changing the trainer discards it
(`TrainingSession.mutating`), so a retry starts again from the last saved state.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from aegpo.entropy.profile import ProbeSpec, cache_key
from aegpo.eval_metrics import eval_summary, metric_names
from aegpo.record import RejectedRound, RoundRecord
from aegpo.tables import PROFILE_SCHEMA, from_parquet_bytes
from flows._prefect import publish_markdown, publish_table, retry_on_io, run_logger
from flows.progress import step_logger
from flows.round_io import RunStore
from flows.session import TrainingSession
from flows.spec import RunSpec, read_prompts, resolve
from flows.storage import StorageError, open_storage
from flows.tracking import Tracker, allocation_table

IO_RETRIES = {"retries": 2, "retry_delay_seconds": [2, 10], "retry_condition_fn": retry_on_io}


# ----- base-entropy profile -------------------------------------------------------------------------
def _base_digest(spec: RunSpec) -> str:
    from aegpo.checkpoint import manifest_digest
    from aegpo.models.registry import policy_class

    params = spec.params()
    cls = policy_class(params.model.kind)
    if hasattr(cls, "base_ref"):
        return cls.base_ref(params.model, spec.project)["manifest_sha256"]
    return manifest_digest(resolve(spec.project, params.model.checkpoint))


def profile_key(spec: RunSpec) -> tuple[str, str]:
    """(aegpo cache key, storage key) of the base-entropy profile: base checkpoint × prompt set × probe."""
    params = spec.params()
    key = cache_key(_base_digest(spec), read_prompts(params, spec.project, "train"), ProbeSpec.from_params(params))
    return key, f"{params.aegpo.cache_dir}/base-entropy-{key[:16]}.parquet"


def _profile_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    spec = parameters["spec"]
    spec = spec if isinstance(spec, RunSpec) else RunSpec.model_validate(spec)
    return f"aegpo-profile-{profile_key(spec)[0][:32]}-{spec.storage_uri or spec.project_dir}"


@task(name="profile-base-entropy", cache_key_fn=_profile_cache_key, persist_result=True, result_serializer="json",
      cache_expiration=timedelta(days=365), **IO_RETRIES)
def profile_base_entropy(spec: RunSpec) -> dict[str, Any]:
    """The base policy's Entropy(t) over the train prompts: computed once per cache key, then reused."""
    from aegpo.checkpoint import load_base_policy
    from aegpo.entropy.profile import load_or_compute_base_profile
    from aegpo.entropy.recorder import EntropyRecorder

    params = spec.params()
    storage = open_storage(spec.storage_uri, spec.project)
    key, store_key = profile_key(spec)
    if storage.exists(store_key):
        data = storage.get_bytes(store_key)
        table = from_parquet_bytes(data, PROFILE_SCHEMA, storage.uri(store_key))
        if (table.schema.metadata or {}).get(b"aegpo.cache_key", b"").decode() == key:
            run_logger().info("base-entropy profile: reusing %s", storage.uri(store_key))
            return {**storage.describe_object(store_key, data).as_dict(), "cache_key": key, "rows": table.num_rows,
                    "computed": False}
    t0 = time.perf_counter()
    policy, base_ref = load_base_policy(params.model, spec.project)
    recorder = EntropyRecorder.from_params(params.entropy)
    recorder.install(policy)
    prompts = read_prompts(params, spec.project, "train")
    log = run_logger()
    log.info("base-entropy profile: probing %d prompts (one ODE trajectory each)", len(prompts))
    progress = step_logger("base-entropy profile", "prompts", log.info)
    _, path, _ = load_or_compute_base_profile(policy, base_ref["manifest_sha256"], prompts,
                                              ProbeSpec.from_params(params),
                                              recorder, spec.project / params.aegpo.cache_dir, progress=progress)
    data = path.read_bytes()
    local = storage.local_path(store_key)
    obj = storage.describe_object(store_key, data) if local == path.resolve() else storage.put_bytes(store_key, data)
    rows = from_parquet_bytes(data).num_rows
    run_logger().info("base-entropy profile: %d prompts, %d rows in %.1fs -> %s", len(prompts), rows,
                      time.perf_counter() - t0, obj.uri)
    publish_markdown("aegpo-base-profile", f"Base-entropy profile `{obj.uri}`: {len(prompts)} prompts, {rows} rows, "
                     f"cache key `{key[:16]}`.", "Base-entropy profile")
    return {**obj.as_dict(), "cache_key": key, "rows": rows, "computed": True}


# ----- one training round -----------------------------------------------------------------------------
# These tasks take the flow's TrainingSession (flows.session) by reference; NO_CACHE: nothing hashes it.
@task(name="run-state", task_run_name="run-state", cache_policy=NO_CACHE, **IO_RETRIES)
def run_state(session: TrainingSession) -> dict[str, Any]:
    """Where the run stands (building the session's trainer resumes it from the saved state)."""
    t = session.trainer
    return {"round": t.round, "nfe": t.nfe, "rounds": t.params.train.rounds, "base_eval_due": t.base_eval_due()}


@task(name="generate-rollouts", task_run_name="generate-rollouts-r{round_idx:04d}", cache_policy=NO_CACHE,
      **IO_RETRIES)
def generate_rollouts(session: TrainingSession, round_idx: int) -> dict[str, Any]:
    """Plan the round (group sizes, explored steps) and sample it; stores transitions and images."""
    t = session.at_round(round_idx)
    with session.mutating():  # planning may advance a strategy's state: a retry must start from the saved state
        work = t.begin_round()
        t.sample(work)
        objs = session.store.save_rollout(round_idx, work.rollout, work.plan)
    session.in_flight[round_idx] = work
    return {"round": round_idx, "num_samples": work.rollout.num_samples, "rollout_nfe": work.rollout.nfe,
            "group_sizes": list(work.plan.group_sizes), "times": dict(work.times),
            **{k: v.as_dict() for k, v in objs.items()}}


@task(name="score-rewards", task_run_name="score-rewards-r{rollouts[round]:04d}", cache_policy=NO_CACHE,
      **IO_RETRIES)
def score_rewards(session: TrainingSession, rollouts: dict[str, Any]) -> dict[str, Any]:
    """Score the stored images and compute group advantages; stores rewards and the rollouts table."""
    r = rollouts["round"]
    t = session.at_round(r)
    work = session.in_flight.get(r)
    if work is None:  # a rebuilt trainer: the round's rollout from the store
        rollout, plan = session.store.load_rollout(r)
        work = session.in_flight[r] = t.restore_round(rollout, plan, times=rollouts["times"])
    t.score(work)
    objs = session.store.save_scores(r, work.ctx.prompt_ids, work.rollout, work.scored, work.advantages)
    return {"round": r, "reward_mean": float(work.scored.score.mean()), "reward_std": float(work.scored.score.std()),
            "times": dict(work.times), **{k: v.as_dict() for k, v in objs.items()}}


@task(name="update-policy", task_run_name="update-policy-r{rollouts[round]:04d}", cache_policy=NO_CACHE,
      **IO_RETRIES)
def update_policy(session: TrainingSession, rollouts: dict[str, Any], scores: dict[str, Any]) -> dict[str, Any]:
    """The clipped policy-gradient update on the stored transitions and advantages."""
    r = rollouts["round"]
    t = session.at_round(r)
    work = session.in_flight.pop(r, None)
    if work is None or work.scored is None:  # a rebuilt trainer: the round's outputs from the store
        rollout, plan = session.store.load_rollout(r)
        scored, advantages = session.store.load_scores(r)
        work = t.restore_round(rollout, plan, scored, advantages, times=scores["times"])
    with session.mutating():
        t.optimize(work)
    session.pending[r] = work
    return {"round": r, "stats": dict(work.stats), "eval_due": t.eval_due(r + 1)}


@task(name="evaluate-policy", task_run_name="evaluate-policy-{label}", cache_policy=NO_CACHE, **IO_RETRIES)
def evaluate_policy(session: TrainingSession, label: str, rounds_done: int) -> dict[str, Any]:
    """Evaluate the current policy on the eval prompts (fixed seeds); `label` "base" before round 0."""
    spec, t = session.spec, session.trainer
    t0 = time.perf_counter()
    result, images = t.evaluate_base() if label == "base" else t.evaluate_with_images()
    seconds = time.perf_counter() - t0
    if rounds_done - 1 in session.pending:
        session.pending[rounds_done - 1].times["eval"] = seconds
    objs = session.store.save_eval(label, result, images)
    if spec.mlflow_run_id:
        tracker = Tracker(spec.tracking_uri, spec.experiment)
        tracker.log_evaluation(spec.mlflow_run_id, label, rounds_done, result, images,
                               {"aegpo.run_dir": spec.run_dir})
    metrics = eval_summary(result, ("nfe",))
    return {"label": label, "rounds_done": rounds_done, "metrics": metrics, "seconds": seconds,
            **{k: v.as_dict() for k, v in objs.items()}}


@task(name="finish-round", task_run_name="finish-round-r{round_idx:04d}", cache_policy=NO_CACHE)
def finish_round(session: TrainingSession, round_idx: int, evaluation: dict[str, Any] | None = None) -> dict[str, Any]:
    """End the round: NFE, record, MLflow and Prefect artifacts, then the resumable state (in that order)."""
    t = session.trainer
    if t.round == round_idx + 1 and round_idx not in session.pending:
        return {"round": round_idx, "already_finished": True}  # a retry after the state was saved
    work = session.pending.pop(round_idx, None)
    if work is None:
        raise RuntimeError(f"round {round_idx} of {session.spec.run_dir} has no policy update in this process "
                           "(was it restarted?): restart the training flow to redo the round")
    result = None
    if evaluation is not None:
        result = session.store.storage.get_json(evaluation["eval"]["key"])
    with session.mutating():
        record = t.end_round(work, result, publish=_RoundPublisher(session.spec, session.store))
    try:
        session.store.drop_transitions(round_idx)
    except (OSError, StorageError) as err:  # only space is at stake: the round is complete and saved
        run_logger().warning("round %d: could not remove its transitions: %s", round_idx, err)
    rejected = isinstance(record, RejectedRound)
    return {"round": round_idx, "nfe": record.nfe, "reward_mean": record.reward_mean,
            "probe_nfe": 0 if rejected else record.probe_nfe, "rejected": record.rejected if rejected else None,
            "eval": (evaluation or {}).get("metrics")}


class _RoundPublisher:
    """Trainer callback: logs the round to MLflow and the Prefect UI before the state is saved.

    Logging before saving means a round is logged at least once: a run killed in between
    redoes the round and logs it again (same step), never skips it.
    """

    def __init__(self, spec: RunSpec, store: RunStore) -> None:
        self.spec, self.store = spec, store

    def __call__(self, record: RoundRecord) -> None:
        r, spec = record.round, self.spec
        media = spec.media_every > 0 and (r + 1) % spec.media_every == 0
        if spec.mlflow_run_id:
            images = None
            if media:
                from flows.round_io import png_array

                images = png_array(self.store.storage.get_bytes(self.store.round_key(r, "images.png")))
            Tracker(spec.tracking_uri, spec.experiment).log_round(spec.mlflow_run_id, record, images, media)
        publish_markdown("aegpo-round-summary", round_summary_markdown(spec, record), f"Round {r} of {spec.run_name}")
        publish_allocation(record, f"ΔEntropy and rollouts per prompt, round {r} of {spec.run_name}")


def round_summary_markdown(spec: RunSpec, record: RoundRecord) -> str:
    ev = record.eval or {}
    plan, u = record.plan, record.update
    lines = [f"### {spec.run_name}: round {record.round}", "", "| metric | value |", "|---|---|",
             f"| reward mean ± std | {record.reward_mean:.4f} ± {record.reward_std:.4f} |",
             f"| samples | {record.num_samples} |", f"| cumulative NFE | {record.nfe} |",
             f"| loss / clip fraction / KL | {u.loss:.4g} / {u.clip_frac:.3f} / {u.kl:.3g} |"]
    if plan.get("group_sizes"):
        g = plan["group_sizes"]
        lines.append(f"| group sizes (min/max) | {min(g)} / {max(g)} |")
    lines += [f"| eval {k} | {ev[k]:.3f} |" for k in metric_names(ev)] if ev else []
    lines += ["", f"Run folder `{spec.run_dir}`; MLflow run `{spec.mlflow_run_id}`."]
    return "\n".join(lines)


@task(name="sync-run", task_run_name="sync-run-r{round_idx:04d}", cache_policy=NO_CACHE, **IO_RETRIES)
def sync_run(session: TrainingSession, round_idx: int) -> dict[str, Any]:
    """Copy the saved state, checkpoint and round record to a remote store (no-op for the local one)."""
    store, run_path = session.store, session.spec.run_path
    if store.storage.local_path(store.run_key) is not None:
        return {"round": round_idx, "synced": False}
    state = store.push_tree(run_path / "state", "state")
    checkpoint = store.push_tree(run_path / "checkpoint", "checkpoint")
    record = run_path / "rounds" / f"round-{round_idx:04d}.json"
    if record.is_file():
        store.push_file(record, f"rounds/{record.name}")
    if (run_path / "eval_base.json").is_file():
        store.push_file(run_path / "eval_base.json", "eval_base.json")
    return {"round": round_idx, "synced": True, "state": (state or {}).get("version"),
            "checkpoint": (checkpoint or {}).get("version")}


def publish_allocation(record: RoundRecord, description: str) -> None:
    """The round's per-prompt ΔEntropy and allocation as the Prefect table artifact `aegpo-entropy-allocation`."""
    table = allocation_table(record)
    publish_table("aegpo-entropy-allocation", [dict(zip(table, row)) for row in zip(*table.values())], description)
