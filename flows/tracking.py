"""MLflow tracking of pipeline runs, always through `MlflowClient` with explicit run ids.

One **parent run** per training run (found again by its tags when the run resumes, so a
resumed run continues the same curves), a **child run** per evaluation. Nothing here uses
MLflow's fluent active-run API: tasks on other threads or processes never open stray runs.

Where runs go: `tracking_uri` (flow parameter) > `MLFLOW_TRACKING_URI` > a SQLite file
`mlflow.db` in the project (artifacts under `mlruns/`, or `<AEGPO_STORAGE_URI>/mlflow` when
storage is S3). An `http(s)://` tracking server works the same; it is checked first and an
unreachable one fails the run before anything is written, naming the URI.

Metric steps: per-round metrics use `step = round` (0-based round index); evaluation metrics
(`eval/*`) use `step = rounds completed` (0 = the base policy before training).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from aegpo.eval_metrics import eval_summary
from aegpo.record import UPDATE_KEYS, RoundRecord
from flows import media
from flows.calibration_tracking import log_peak_calibration

log = logging.getLogger("aegpo.flows.tracking")
# MLflow draws a "Downloading artifacts" progress bar for every table it reads back (the allocation table each round):
# two bar lines a round in the job's log and nothing to watch. Off unless the user asks for it.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

PARAM_BATCH = 100  # MLflow's limit of params per log_batch call
# MLflow 3 opens an experiment in its GenAI view (traces, "Evaluation runs") unless told it is a model-training one:
# the experiment tag below says so (custom_model_development = "Machine learning" in the UI). MLflow 3.17's UI also
# follows a per-browser GenAI / Machine-learning switch; links we print add `?workflowType=machine_learning`.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"
ALLOCATION_TABLE = "tables/allocation.json"
ALLOCATION_COLUMNS = ["key", "delta_entropy", "budget", "explored_steps", "round", "prompt", "reward_mean", "prompt_id",
                      "base_entropy", "current_entropy"]


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be reached or used."""


def default_tracking_uri(project_dir: str | Path) -> str:
    """MLFLOW_TRACKING_URI, else the project's SQLite file."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return env if env else f"sqlite:///{Path(project_dir).resolve() / 'mlflow.db'}"


def check_tracking(uri: str, attempts: int = 3, delay: float = 1.0) -> None:
    """Fail with a message naming `uri` when a tracking server does not answer its /health check."""
    if not uri.startswith(("http://", "https://")):
        return
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as resp:
                if resp.status == 200:
                    return
                last = TrackingError(f"HTTP {resp.status}")
        except (urllib.error.URLError, OSError) as err:
            last = err
        if attempt + 1 < attempts:
            time.sleep(delay * (attempt + 1))
    raise TrackingError(f"MLflow tracking server {uri} is unreachable after {attempts} attempts ({last}); "
                        "start it, or unset MLFLOW_TRACKING_URI to use the project's mlflow.db")


def share_s3_endpoint() -> None:
    """MLflow reads its S3 endpoint from MLFLOW_S3_ENDPOINT_URL: default it to aegpo's (one setting for both)."""
    from flows.storage import StorageSettings, quiet_credential_notices

    quiet_credential_notices()  # MLflow's S3 clients log "Found credentials" each, like ours
    endpoint = StorageSettings.from_env().endpoint_url
    if endpoint and not os.environ.get("MLFLOW_S3_ENDPOINT_URL"):
        os.environ["MLFLOW_S3_ENDPOINT_URL"] = endpoint


# ----- what gets logged ---------------------------------------------------------------------------
def _stats(prefix: str, values: list[float] | None) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values, dtype=np.float64)
    return {f"{prefix}_mean": float(arr.mean()), f"{prefix}_std": float(arr.std()),
            f"{prefix}_min": float(arr.min()), f"{prefix}_max": float(arr.max())}


def round_metrics(record: RoundRecord) -> dict[str, float]:
    """The MLflow metrics of one round record (aegpo.record), by metric name."""
    plan = record.plan
    m: dict[str, float] = {"reward/mean": record.reward_mean, "reward/std": record.reward_std,
                           "advantage/abs_mean": record.adv_abs_mean}
    m.update({f"reward/{k}": v for k, v in record.reward_parts.items() if isinstance(v, (int, float))})
    m.update({f"policy/{k}": getattr(record.update, k) for k in UPDATE_KEYS})
    m.update({f"entropy/{k}": v for k, v in _stats("delta", plan.get("delta_entropy")).items()})
    if plan.get("current_entropy"):
        m["entropy/current_mean"] = float(np.mean(plan["current_entropy"]))
    if plan.get("base_entropy"):
        m["entropy/base_mean"] = float(np.mean(plan["base_entropy"]))
    if record.entropy_t:
        m["entropy/rollout_mean"] = float(np.mean(record.entropy_t))
    sizes = record.group_sizes
    m.update({f"group_size/{k.split('_', 1)[1]}": v for k, v in _stats("g", sizes).items()})
    chosen = [s for row in plan.get("chosen_steps") or [] for s in row]
    if chosen:
        m["steps/chosen_mean"] = float(np.mean(chosen))
    m["steps/sde_per_sample"] = record.sde_steps_per_sample
    m["steps/train_per_sample"] = record.train_steps_per_sample
    m["nfe/cumulative"] = record.nfe
    m["nfe/rollout"] = record.rollout_nfe
    m["nfe/probe"] = record.probe_nfe
    m.update({f"time/{k}_s": v for k, v in record.seconds.items()})
    return {k: float(v) for k, v in m.items() if v is not None and np.isfinite(float(v))}


def allocation_table(record: RoundRecord) -> dict[str, list]:
    """Per-prompt ΔEntropy and allocation of one round (columns of equal length)."""
    pp = record.per_prompt
    n = len(pp)
    col = functools.partial(media.plan_column, record)
    return {"round": [record.round] * n, "prompt_id": [p.prompt_id for p in pp], "prompt": [p.prompt for p in pp],
            "delta_entropy": col("delta_entropy"), "base_entropy": col("base_entropy"),
            "current_entropy": col("current_entropy"), "group_size": [p.group_size for p in pp],
            "chosen_steps": ([" ".join(map(str, s)) for s in col("chosen_steps")] if record.plan.get("chosen_steps")
                             else [""] * n),
            "reward_mean": [p.reward_mean for p in pp], "reward_std": [p.reward_std for p in pp]}


def entropy_figure(record: RoundRecord):
    """Matplotlib figure: the round's Entropy(t) (rollouts, and the probe when there was one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    for key, label in (("entropy_t", "rollouts"), ("probe_entropy_t", "probe (ODE)")):
        values = record.entropy_t if key == "entropy_t" else record.plan.get(key)
        if values:
            ax.plot(range(len(values)), values, marker="o", label=label)
    ax.set_xlabel("denoising step t")
    ax.set_ylabel("attention entropy (nats)")
    ax.set_title(f"Entropy(t), round {record.round}")
    ax.legend()
    fig.tight_layout()
    return fig


# ----- the tracker ----------------------------------------------------------------------------------
class Tracker:
    """Parent/child MLflow runs of aegpo, by explicit run id."""

    def __init__(self, tracking_uri: str, experiment: str = "aegpo", artifact_location: str | None = None) -> None:
        from mlflow import MlflowClient

        share_s3_endpoint()
        self.uri, self.experiment = tracking_uri, experiment
        self.artifact_location = artifact_location
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self._experiment_id: str | None = None

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                self._experiment_id = self.client.create_experiment(self.experiment, self.artifact_location,
                                                                    tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
            else:
                self._check_artifact_location(exp.artifact_location)
                self._experiment_id = exp.experiment_id
                if EXPERIMENT_KIND_TAG not in exp.tags:  # experiments made before the tag existed
                    # (never override a choice)
                    self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
        return self._experiment_id

    def _check_artifact_location(self, existing: str) -> None:
        """Refuse an experiment whose artifacts live in another kind of store than this run's.

        (After an S3 run, a local run on the same mlflow.db would otherwise write its artifacts to
        S3 without credentials and crash.)
        """
        if self.artifact_location is None or not existing:
            return
        want = self.artifact_location.split("://", 1)[0] if "://" in self.artifact_location else "file"
        have = existing.split("://", 1)[0] if "://" in existing else "file"
        if want != have:
            from flows.storage import redact_url

            raise TrackingError(
                f"MLflow experiment {self.experiment!r} in {redact_url(self.uri)} keeps its artifacts at "
                f"{redact_url(existing)}, but this run's artifacts go to {redact_url(self.artifact_location)} "
                f"(AEGPO_STORAGE_URI changed?); pass --experiment with another name, or restore the storage "
                "settings of that experiment")

    def find_run(self, tags: dict[str, str], parent_id: str | None = None) -> str | None:
        """The newest run of the experiment carrying all `tags` (and `parent_id` when given)."""
        conds = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
        if parent_id:
            conds.append(f"tags.`mlflow.parentRunId` = '{parent_id}'")
        runs = self.client.search_runs([self.experiment_id], " and ".join(conds), max_results=1,
                                       order_by=["attributes.start_time DESC"])
        return runs[0].info.run_id if runs else None

    def start_training_run(self, run_name: str, run_tags: dict[str, str], flat_params: dict[str, Any],
                           params_doc: dict[str, Any]) -> str:
        """The parent run of a training run: the existing one when resuming (same run folder and fingerprint)."""
        key = {k: run_tags[k] for k in ("aegpo.run_dir", "aegpo.fingerprint")}
        run_id = self.find_run(key)
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            for k, v in run_tags.items():
                self.client.set_tag(run_id, k, v)
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=run_tags)
        run_id = run.info.run_id
        from mlflow.entities import Param

        try:
            items = [Param(k, str(v)[:6000]) for k, v in sorted(flat_params.items())]
            for start in range(0, len(items), PARAM_BATCH):
                self.client.log_batch(run_id, params=items[start:start + PARAM_BATCH])
            self.client.log_dict(run_id, params_doc, "config/params.json")
        except Exception as err:  # the run must not stay RUNNING: it is marked FAILED, with a clear error
            from flows.storage import redact_text

            with contextlib.suppress(Exception):
                self.client.set_terminated(run_id, "FAILED")
            raise TrackingError(f"MLflow run {run_id} could not store its parameters at "
                                f"{redact_text(run.info.artifact_uri or '?')} (marked FAILED): "
                                f"{type(err).__name__}: {redact_text(str(err))[:300]}") from err
        return run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[start:start + 1000])

    def log_round(self, run_id: str, record: RoundRecord, images: np.ndarray | None = None,
                  media: bool = False) -> None:
        """Per-round metrics (step = round), the round's rows of the allocation table, and with `media` the
        Entropy(t) plot and the captioned rollout grid (`images`: a batch (N, H, W, 3), or the stored grid
        (H, W, 3) of the round's N rollouts) as the `rollout-samples` image at this step."""
        self.log_metrics(run_id, round_metrics(record), step=record.round)
        log_peak_calibration(self.client, run_id, record)  # peak_direction auto: the choice and its evidence
        self.log_allocation(run_id, record)
        if media:
            self.log_round_media(run_id, record, images)

    def log_allocation(self, run_id: str, record: RoundRecord) -> None:
        """Append the round's rows to the run's one allocation table (`tables/allocation.json`, shown by the UI's
        table view with a `round` column); a round logged again (resumed run) replaces its rows."""
        import pandas as pd

        rows = pd.DataFrame(media.allocation_rows(record), columns=ALLOCATION_COLUMNS)
        existing = self._read_table(run_id, ALLOCATION_TABLE)
        if existing is not None and "round" in existing and (existing["round"] == record.round).any():
            kept = existing[existing["round"] != record.round]
            merged = pd.concat([kept, rows], ignore_index=True).sort_values("round", kind="stable")
            self._write_table(run_id, merged, ALLOCATION_TABLE)
        else:
            self.client.log_table(run_id, rows, ALLOCATION_TABLE)  # appends; records the table for the UI

    def log_round_media(self, run_id: str, record: RoundRecord, images: np.ndarray | None) -> None:
        """The round's Entropy(t) plot (`plots/entropy_t/round-NNNN.png`) and its captioned rollout grid
        (image key `rollout-samples`, step = round). Logged once: a second call for the same round does nothing."""
        r = record.round
        plot = f"plots/entropy_t/round-{r:04d}.png"
        if plot in self._artifact_paths(run_id, "plots/entropy_t"):
            return
        if images is not None:
            n = sum(p.group_size for p in record.per_prompt)
            tiles = media.tiles_of(images, n, tile=None) if images.ndim == 3 else images
            self.client.log_image(run_id, media.rollout_grid(tiles, record), key="rollout-samples", step=r)
        if record.entropy_t or record.plan.get("probe_entropy_t"):
            import matplotlib.pyplot as plt

            fig = entropy_figure(record)
            self.client.log_figure(run_id, fig, plot)
            plt.close(fig)

    def log_final_media(self, run_id: str, record: RoundRecord, images: np.ndarray | None) -> None:
        """Media of the run's last round, so that every run has an Entropy(t) plot and a sample grid however
        short it was (skipped when the media cadence already logged that round)."""
        self.log_round_media(run_id, record, images)

    def _artifact_paths(self, run_id: str, path: str) -> set[str]:
        return {a.path for a in self.client.list_artifacts(run_id, path)}

    def _read_table(self, run_id: str, artifact_file: str):
        import tempfile

        import pandas as pd

        if artifact_file not in self._artifact_paths(run_id, str(Path(artifact_file).parent)):
            return None
        with tempfile.TemporaryDirectory() as tmp:
            local = self.client.download_artifacts(run_id, artifact_file, tmp)
            return pd.read_json(local, orient="split")

    def _write_table(self, run_id: str, frame, artifact_file: str) -> None:
        """Replace a table artifact in MLflow's own table format (`log_table` would append to it)."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(artifact_file).name
            frame.to_json(local, orient="split", index=False, date_format="iso")
            self.client.log_artifact(run_id, str(local), str(Path(artifact_file).parent))

    def log_evaluation(self, parent_id: str | None, label: str, rounds_done: int, result: dict[str, Any],
                       images: np.ndarray | None = None, extra_tags: dict[str, str] | None = None) -> str:
        """A child run per evaluation (reused if this label was logged before), plus `eval/*` on the parent."""
        tags = {"aegpo.kind": "evaluation", "aegpo.eval_label": label, **(extra_tags or {})}
        child = self.find_run({"aegpo.eval_label": label, "aegpo.kind": "evaluation"}, parent_id) if parent_id else None
        if child is None:
            if parent_id:
                tags["mlflow.parentRunId"] = parent_id
            child = self.client.create_run(self.experiment_id, run_name=f"eval-{label}", tags=tags).info.run_id
        metrics = {k: float(v) for k, v in eval_summary(result, ("nfe",)).items()}
        self.log_metrics(child, metrics, step=rounds_done)
        rows = result.get("rows") or []
        if rows:
            self.client.log_table(child, {k: [r.get(k) for r in rows] for k in rows[0]}, "tables/eval_rows.json")
        grid = None
        if images is not None and len(images) and rows:
            headline = ", ".join(f"{k} {v:.3f}" for k, v in list(metrics.items())[:2] if k != "nfe")
            title = f"Evaluation {label} ({rounds_done} rounds): {headline}"
            grid = media.eval_grid(images, rows, int(result.get("samples_per_prompt", 1)), title=title,
                                   score_keys=[k for k in metrics if k != "nfe"])
            self.client.log_image(child, grid, artifact_file="samples/eval_grid.png")
        self.client.set_terminated(child, "FINISHED")
        if parent_id:
            self.log_metrics(parent_id, {f"eval/{k}": v for k, v in metrics.items() if k != "nfe"}, step=rounds_done)
            if grid is not None and not self._has_image(parent_id, "eval-samples", rounds_done):
                self.client.log_image(parent_id, grid, key="eval-samples", step=rounds_done)
        return child

    def _has_image(self, run_id: str, key: str, step: int) -> bool:
        """Whether `log_image(key=key, step=step)` was done on the run (MLflow names the file after both)."""
        prefix = f"images/{key.replace('/', '~')}+step+{step}+"
        return any(p.startswith(prefix) for p in self._artifact_paths(run_id, "images"))

    def log_checkpoint(self, run_id: str, checkpoint_dir: str | Path) -> None:
        self.client.log_artifacts(run_id, str(checkpoint_dir), "checkpoint")

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)
