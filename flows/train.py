"""The training flow `aegpo-train`: base eval → rounds (one subflow each; base entropy profiled lazily) → finalize.

Run it:

    python -m aegpo.cli pipeline train -S train.rounds=5          # in-process (a temporary Prefect
                                                                  # server, or PREFECT_API_URL)
    prefect deployment run 'aegpo-train/gpu' --param overrides='["train.rounds=5"]'

Each round is its own flow run `round-NNNN` (subflow `aegpo-round`) with the tasks
generate-rollouts → score-rewards → update-policy → [evaluate-policy] → finish-round → sync-run,
the stages of `aegpo.trainer.Trainer.run_round`. The flow opens the run's `TrainingSession` once
(flows.session: the run lock and the trainer) and passes it to each task as an argument; it is
closed, and the lock given back, after the run is finalized (or failed).
The run folder is `<train.out_dir>/<strategy>-<fingerprint>` unless `run_dir` is given: the same
parameters continue the same run (after a crash or kill -9, from the last completed round);
other parameters start a new one beside it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from aegpo import distributed
from aegpo.config import flatten, split_override
from aegpo.eval_metrics import eval_summary, metric_names
from aegpo.io_utils import atomic_directory
from aegpo.strategies.registry import strategy_class
from flows._prefect import flow_run_id, publish_markdown, run_logger
from flows.progress import RoundProgress
from flows.reports import load_records, write_reports
from flows.session import TrainingSession, open_session
from flows.spec import RunSpec, artifact_location, prepare_run, resolve, run_tags
from flows.storage import open_storage, redact_url
from flows.tasks import (
    evaluate_policy,
    finish_round,
    generate_rollouts,
    publish_allocation,
    run_state,
    score_rewards,
    sync_run,
    update_policy,
)
from flows.tracking import Tracker


def _round_run_name() -> str:
    from prefect.runtime import flow_run

    return f"round-{int(flow_run.parameters.get('round_idx', 0)):04d}"


@flow(name="aegpo-round", flow_run_name=_round_run_name, log_prints=True)
def train_round(session: TrainingSession, round_idx: int) -> dict[str, Any]:
    """One round of the session's run: sample → score → update → (evaluate) → record and save → sync.

    The session is the training flow's (flows.session), passed by reference: Prefect records this
    parameter as "<TrainingSession>" and never serialises it.
    """
    rollouts = generate_rollouts(session, round_idx)
    scores = score_rewards(session, rollouts)
    update = update_policy(session, rollouts, scores)
    evaluation = None
    if update["eval_due"]:
        evaluation = evaluate_policy(session, f"round-{round_idx + 1:04d}", round_idx + 1)
    result = finish_round(session, round_idx, evaluation)
    sync_run(session, round_idx)
    run_logger().info("round %d: reward %.4f, nfe %d%s", round_idx, scores["reward_mean"], result.get("nfe", 0),
                      "".join(f", eval {k} {v:.3f}" for k, v in list(evaluation["metrics"].items())[:2])
                      if evaluation else "")
    return result


@task(name="finalize-run", task_run_name="finalize-run", cache_policy=NO_CACHE)
def finalize_run(spec: RunSpec, export_dir: str | None, reports_dir: str | None) -> dict[str, Any]:
    """Reports, exported checkpoint and rollouts, the final MLflow artifact and Prefect summary."""
    run_path = spec.run_path
    progress = _run_progress(spec)
    checkpoint = run_path / "checkpoint"
    metrics = write_reports(run_path, resolve(spec.project, reports_dir), spec.strategy) if reports_dir else None
    if export_dir:
        export = resolve(spec.project, export_dir)
        if checkpoint.is_dir():
            with atomic_directory(export / "checkpoint") as tmp:
                shutil.copytree(checkpoint, tmp, dirs_exist_ok=True)
        with atomic_directory(export / "rollouts") as tmp:
            for table in sorted(run_path.glob("rounds/round-*/rollouts.parquet")):
                shutil.copy2(table, tmp / f"{table.parent.name}.parquet")
            for table in sorted(run_path.glob("rounds/round-*/rollouts-rank-*.parquet")):  # multi-process runs
                shutil.copy2(table, tmp / f"{table.parent.name}-{table.stem.removeprefix('rollouts-')}.parquet")
    records = load_records(run_path)
    if spec.mlflow_run_id and records:  # every run ends with an Entropy(t) plot and a sample grid, however short
        from flows.round_io import RunStore, png_array

        store = RunStore(open_storage(spec.storage_uri, spec.project), spec.run_key)
        key = store.round_key(records[-1].round, "images.png")
        if not store.storage.exists(key):  # a multi-process run: rank 0's share of the round's images
            key = store.round_key(records[-1].round, "images-rank-00.png")
        grid = png_array(store.storage.get_bytes(key))
        Tracker(spec.tracking_uri, spec.experiment).log_final_media(spec.mlflow_run_id, records[-1], grid)
    if spec.mlflow_run_id and checkpoint.is_dir():
        tracker = Tracker(spec.tracking_uri, spec.experiment)
        tracker.log_checkpoint(spec.mlflow_run_id, checkpoint)
        tracker.finish(spec.mlflow_run_id)
    last_eval = next((r.eval for r in reversed(records) if r.eval), None)
    base = progress["base_eval"]
    rounds, nfe = progress["round"], progress["nfe"]
    summary = {"run_name": spec.run_name, "run_dir": spec.run_dir, "rounds": rounds, "nfe": nfe,
               "strategy": spec.strategy, "mlflow_run_id": spec.mlflow_run_id, "checkpoint": str(checkpoint),
               "base_eval": _short(base), "final_eval": _short(last_eval), "reports": metrics is not None}
    lines = [f"## {spec.run_name}", "", f"{rounds} rounds ({spec.strategy}), {nfe} denoiser evaluations.", ""]
    if base and last_eval:
        lines += [f"Eval {k}: **{base[k]:.3f} → {last_eval[k]:.3f}**." for k in metric_names(last_eval) if k in base]
    lines += ["", f"Checkpoint: `{checkpoint}`", f"MLflow run: `{spec.mlflow_run_id}` ({spec.tracking_uri})"]
    publish_markdown("aegpo-run-summary", "\n".join(lines), f"Summary of {spec.run_name}")
    if records:
        publish_allocation(records[-1], f"ΔEntropy and rollouts per prompt, last round of {spec.run_name}")
    return summary


def _run_progress(spec: RunSpec) -> dict[str, Any]:
    """Round, NFE and base evaluation of the run as saved in its folder (whichever process trained it)."""
    state = spec.run_path / "state" / "state.json"
    info = json.loads(state.read_text(encoding="utf-8")) if state.is_file() else {"round": 0, "nfe": 0}
    base = spec.run_path / "eval_base.json"
    return {"round": info["round"], "nfe": info["nfe"],
            "base_eval": json.loads(base.read_text(encoding="utf-8")) if base.is_file() else None}


@task(name="train-on-ranks", cache_policy=NO_CACHE)
def train_on_ranks(spec: RunSpec, nproc: int) -> dict[str, Any]:
    """The rounds of a multi-process run: torchrun starts `nproc` ranks of flows.ranks on this worker.

    Rank 0 logs every round to MLflow as it ends; the Prefect round artifacts are published here
    once the ranks are done, from the saved round records. A failed rank fails the task (the
    others stop within train.dist_timeout); the run resumes from its last saved round.
    """
    log = run_logger()
    start = _run_progress(spec)["round"]
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="aegpo-ranks-") as tmp:
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(spec.model_dump_json(), encoding="utf-8")
        cmd = distributed.Launch(nproc).command(["flows.ranks", "--spec", str(spec_file)])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(repo), os.environ.get("PYTHONPATH")) if p)}
        log.info("starting %d ranks: %s", nproc, " ".join(cmd))
        proc = subprocess.Popen(cmd, cwd=spec.project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        output = RankOutput()
        for line in proc.stdout:  # the ranks' output into the flow run's log
            line = line.rstrip()
            output.feed(line)
            if line:
                log.info("%s", line)
        rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"torchrun of {nproc} ranks failed (exit {rc}); the run keeps its last saved round.\n"
                           + output.report())
    progress = _run_progress(spec)
    from flows.tasks import publish_allocation, round_summary_markdown

    for record in load_records(spec.run_path)[start:progress["round"]]:
        publish_markdown("aegpo-round-summary", round_summary_markdown(spec, record),
                         f"Round {record.round} of {spec.run_name}")
        publish_allocation(record, f"ΔEntropy and rollouts per prompt, round {record.round} of {spec.run_name}")
    _push_run(spec, progress["round"])
    return {"round": progress["round"], "nfe": progress["nfe"], "ranks": nproc}


class RankOutput:
    """The ranks' merged output, kept for the error of a failed run.

    torchrun's closing report names the failed rank and its exit code only. The error itself is in what the
    ranks printed before it: their first Python traceback, or, for a rank that exits without one (an
    interpreter-level error, `sys.exit(1)`), their last lines. torchrun's first error line (glog style,
    `E1201 08:19:19.123 ... failed (exitcode: 1) local_rank: 1`) marks the start of its report; its warnings
    (`W1201 ...`, printed at start) do not.
    """

    LAUNCHER = re.compile(r"^E\d{4} \d\d:\d\d:\d\d")
    PREFIX = re.compile(r"^\[(?:default)?rank\d+\]: ?")  # torch's per-rank prefix of uncaught errors: "[rank1]: "

    def __init__(self, keep: int = 30, traceback_limit: int = 60) -> None:
        self.before: list[str] = []  # the last `keep` rank lines before torchrun's report
        self.traceback: list[str] = []  # the ranks' first traceback
        self.tail: list[str] = []  # the last lines of all output (torchrun's report included)
        self.keep, self.limit = keep, traceback_limit
        self._launcher = self._traceback_done = False

    def feed(self, line: str) -> None:
        self.tail = [*self.tail[-14:], line]
        if self._launcher or self.LAUNCHER.match(line):
            self._launcher = True
            return
        self.before = [*self.before[-(self.keep - 1):], line]
        body = self.PREFIX.sub("", line)
        if self._traceback_done:
            return
        if not self.traceback:
            if body.startswith("Traceback (most recent call last)"):
                self.traceback.append(line)
            return
        self.traceback.append(line)
        # the exception line is the first one after the header that is not indented
        self._traceback_done = bool(body) and not body[0].isspace() or len(self.traceback) >= self.limit

    def report(self) -> str:
        """The first traceback if a rank printed one, else the ranks' last lines; then torchrun's last lines."""
        if self.traceback:
            head = "First error:\n" + "\n".join(self.traceback)
        else:
            head = "The ranks' last output:\n" + "\n".join(self.before or ["(none)"])
        return head + "\ntorchrun's last output:\n" + "\n".join(self.tail)


def _push_run(spec: RunSpec, rounds: int) -> None:
    """Remote stores: state, checkpoint and round records of the finished ranks (no-op for the project folder)."""
    from flows.round_io import RunStore

    store = RunStore(open_storage(spec.storage_uri, spec.project), spec.run_key)
    if store.storage.local_path(store.run_key) is not None:
        return
    store.push_tree(spec.run_path / "state", "state")
    store.push_tree(spec.run_path / "checkpoint", "checkpoint")
    for r in range(rounds):
        record = spec.run_path / "rounds" / f"round-{r:04d}.json"
        if record.is_file():
            store.push_file(record, f"rounds/{record.name}")
    if (spec.run_path / "eval_base.json").is_file():
        store.push_file(spec.run_path / "eval_base.json", "eval_base.json")


def _short(ev: dict[str, Any] | None) -> dict[str, float] | None:
    return eval_summary(ev)


def _train_run_name() -> str:
    from prefect.runtime import flow_run

    overrides = flow_run.parameters.get("overrides") or []
    # the last one wins; `++train.strategy=` (DVC's Hydra prefix) is `train.strategy=`
    strategy = next((o.split("=", 1)[1] for o in (split_override(t)[1] for t in reversed(overrides))
                     if o.startswith("train.strategy=")), "")
    return f"train-{strategy}" if strategy else "train"


@flow(name="aegpo-train", flow_run_name=_train_run_name, log_prints=True)
def train_flow(params_path: str | None = "params.yaml", overrides: list[str] | None = None, project_dir: str = ".",
               run_dir: str | None = None, base_profile: str | None = None, export_dir: str | None = None,
               reports_dir: str | None = None, storage_uri: str | None = None, tracking_uri: str | None = None,
               experiment: str = "aegpo", media_every: int = 0, nproc: int | str | None = None) -> dict[str, Any]:
    """Train (or resume) one run of params.yaml + `overrides` (dotted `key=value`, `dvc exp run -S` grammar).

    Args:
        project_dir: where params.yaml, prompts, checkpoints and runs/ are (relative paths resolve here).
        run_dir: the run folder; default `<train.out_dir>/<strategy>-<fingerprint>`.
        base_profile: a precomputed base-entropy profile to use (else the trainer profiles each round's new
            prompts when it first draws them, cached per prompt).
        export_dir: copy the final checkpoint and the rollouts tables here (the DVC outputs).
        reports_dir: write rewards/eval/allocation CSVs and train_metrics.json here (DVC plots, metrics).
        storage_uri: artifact store (default AEGPO_STORAGE_URI, else the project folder).
        tracking_uri: MLflow (default MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow.db).
        media_every: MLflow Entropy(t) plot and sample grid every N rounds (default train.eval_every).
        nproc: processes of the run on this worker (default train.nproc; auto: its GPUs); more than one
            starts them with torchrun here (one worker per node, docs/pipeline.md).
    """
    spec = prepare_run(params_path, overrides or [], project_dir, run_dir=run_dir, storage_uri=storage_uri,
                       tracking_uri=tracking_uri, experiment=experiment, media_every=media_every)
    params = spec.params()
    log = run_logger()
    log.info("run %s in %s (store %s, tracking %s)", spec.run_name, spec.run_dir, spec.storage_uri or "project folder",
             redact_url(spec.tracking_uri))  # a URL may hold a credential: never in logs (Prefect stores them)
    if base_profile and strategy_class(params.train.strategy).needs_base_profile:
        # a precomputed profile (`aegpo pipeline profile`); without one the trainer profiles lazily: each round's
        # new prompts under the base policy, cached per prompt (no hour-long precomputation before round 0)
        spec = spec.model_copy(update={"base_profile_key": _base_profile(spec, base_profile)})
    tracker = Tracker(spec.tracking_uri, spec.experiment, artifact_location(spec))
    run_id = tracker.start_training_run(spec.run_name, run_tags(spec, flow_run_id()), flatten(params),
                                        params.model_dump(mode="json"))
    spec = spec.model_copy(update={"mlflow_run_id": run_id})
    ranks = distributed.resolve_nproc(nproc if nproc is not None else params.train.nproc, params.model.device)
    try:
        if ranks > 1:
            distributed.check_devices(ranks, params.model.device)
            train_on_ranks(spec, ranks)
            return finalize_run(spec, export_dir, reports_dir)
        with open_session(spec) as session:  # the run's lock and trainer, until the run is finalized
            state = run_state(session)
            if state["round"]:
                log.info("resuming %s at round %d of %d", spec.run_dir, state["round"], state["rounds"])
            if state["base_eval_due"]:
                evaluate_policy(session, "base", 0)
            progress = RoundProgress(state["round"], state["rounds"])
            for r in range(state["round"], state["rounds"]):
                result = train_round(session, r)
                log.info(progress.line(r, result.get("reward_mean"), result.get("nfe", 0), result.get("eval"),
                                       result.get("rejected"), result.get("probe_nfe", 0)))
            return finalize_run(spec, export_dir, reports_dir)
    except BaseException:
        tracker.finish(run_id, "FAILED")
        raise


def _base_profile(spec: RunSpec, given: str) -> str:
    """The store key of a given base-entropy profile file (uploaded if the store is remote)."""
    storage = open_storage(spec.storage_uri, spec.project)
    path = resolve(spec.project, given)
    if not path.is_file():
        raise FileNotFoundError(f"base profile {path} does not exist (run `aegpo pipeline profile --out {given}`)")
    root = storage.local_path("")
    if root is not None and root in path.resolve().parents:
        return path.resolve().relative_to(root).as_posix()
    key = f"{spec.params().aegpo.cache_dir}/{path.name}"
    storage.put_file(key, path)
    return key
