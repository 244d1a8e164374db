"""The evaluation flow `aegpo-evaluate`: a checkpoint's eval metrics (those its reward reports) on the eval prompts.

    python -m aegpo.cli pipeline evaluate --checkpoint artifacts/train/checkpoint --out reports/eval.json
    prefect deployment run 'aegpo-evaluate/gpu' --param checkpoint=runs/train/aegpo-1a2b3c4d/checkpoint

`checkpoint` is a local folder, or the key of a checkpoint in the artifact store (e.g. a run's
`runs/train/<run>/checkpoint` when AEGPO_STORAGE_URI is S3). The result is a child MLflow run of
the checkpoint's training run (found by its run-folder tag) or a run of its own, the per-prompt
rows and image grid in the store, and `out` (a metrics JSON for DVC) when given.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from aegpo.checkpoint import CheckpointError, read_manifest
from aegpo.config import Params, load_params, params_from_dict
from aegpo.io_utils import atomic_write_json
from flows._prefect import publish_markdown, run_logger
from flows.round_io import RunStore
from flows.spec import params_file, read_prompts, resolve
from flows.storage import Storage, open_storage
from flows.tasks import IO_RETRIES
from flows.tracking import Tracker, check_tracking, default_tracking_uri


class EvalSpec(BaseModel):
    """The evaluation's manifest (see flows.spec.RunSpec for the training one)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    project_dir: str
    params_path: str | None
    overrides: tuple[str, ...] = ()
    values: dict[str, Any]  # the validated params, parsed once when the evaluation was prepared
    checkpoint: str  # a local folder (absolute) or a store key
    stored: bool  # whether `checkpoint` is a store key
    storage_uri: str | None = None
    tracking_uri: str
    experiment: str = "aegpo"

    def params(self) -> Params:
        return params_from_dict(self.values, "evaluation manifest")

    @property
    def project(self) -> Path:
        return Path(self.project_dir)


def prepare_eval(checkpoint: str | None, params_path: str | None = "params.yaml", overrides: list[str] | tuple = (),
                 project_dir: str | Path = ".", storage_uri: str | None = None, tracking_uri: str | None = None,
                 experiment: str = "aegpo") -> EvalSpec:
    """Validate params, eval prompts, the checkpoint, the store and the tracking server."""
    project = Path(project_dir).resolve()
    path = params_file(project, params_path)
    params = load_params(path, list(overrides))
    read_prompts(params, project, "eval")
    storage = open_storage(storage_uri, project)
    storage.check()
    name = checkpoint or params.model.checkpoint
    folder = resolve(project, name)
    stored = False
    if folder.is_dir():
        read_manifest(folder)  # CheckpointError for a folder that is not ours
        target = str(folder)
    elif storage.local_path("") is None and storage.tree_manifest(name.strip("/")) is not None:
        target, stored = name.strip("/"), True
    else:
        raise CheckpointError(f"checkpoint {name} is neither a local folder nor stored at {storage.uri(name)}")
    tracking = tracking_uri or default_tracking_uri(project)
    check_tracking(tracking)
    return EvalSpec(project_dir=str(project), params_path=None if path is None else str(path),
                    overrides=tuple(overrides),
                    values=params.model_dump(mode="json"), checkpoint=target, stored=stored, storage_uri=storage_uri,
                    tracking_uri=tracking, experiment=experiment)


def _local_checkpoint(spec: EvalSpec, storage: Storage) -> Path:
    if not spec.stored:
        return Path(spec.checkpoint)
    folder = (spec.project / "cache" / "checkpoints"
              / hashlib.sha256(storage.uri(spec.checkpoint).encode()).hexdigest()[:16])
    storage.get_tree(spec.checkpoint, folder)
    return folder


EVAL_KEYS = ("eval.", "reward.", "sampler.shift", "model.guidance_scale", "model.device")


def _reusable_eval(spec: EvalSpec, params: Params, meta: dict[str, Any], storage: Storage,
                   run_dir: str | None) -> tuple[dict[str, Any], Any] | None:
    """The training run's own evaluation of this very checkpoint, if it used the same settings.

    The Trainer evaluates after its last round with fixed seeds, then saves the checkpoint; the
    same weights, prompts and settings give the same numbers, so they are reused, not recomputed.
    """
    import json

    from aegpo.config import flatten
    from flows.round_io import grid_tiles, png_array

    rounds, trained = meta.get("round"), meta.get("params") or {}
    if not run_dir or not rounds:
        return None
    record_path = resolve(spec.project, run_dir) / "rounds" / f"round-{rounds - 1:04d}.json"
    images_key = f"{run_dir}/evals/round-{rounds:04d}/images.png"
    if not record_path.is_file() or not storage.exists(images_key):
        return None
    current = json.loads(json.dumps(flatten(params), default=list))
    if any(trained.get(k) != v for k, v in current.items() if k.startswith(EVAL_KEYS)):
        return None
    result = json.loads(record_path.read_text(encoding="utf-8")).get("eval")
    prompts = read_prompts(params, spec.project, "eval")
    if not result or [r["prompt"] for r in result.get("rows", [])] != prompts:
        return None
    grid = png_array(storage.get_bytes(images_key))
    n = len(prompts) * params.eval.samples_per_prompt
    cols = min(16, n)
    return result, grid_tiles(grid, n, (grid.shape[0] // -(-n // cols), grid.shape[1] // cols))


@task(name="evaluate-checkpoint", task_run_name="evaluate-checkpoint", cache_policy=NO_CACHE, **IO_RETRIES)
def evaluate_checkpoint(spec: EvalSpec, label: str, reuse: bool = True) -> dict[str, Any]:
    """Evaluate the checkpoint; store rows and images; log an MLflow (child) run."""
    from aegpo.checkpoint import load_policy
    from aegpo.distributed import resolve_device
    from aegpo.eval_metrics import eval_summary
    from aegpo.evaluate import evaluate
    from aegpo.rewards.registry import reward_from_params

    params = spec.params()
    storage = open_storage(spec.storage_uri, spec.project)
    folder = _local_checkpoint(spec, storage)
    manifest = read_manifest(folder)
    meta = manifest.get("meta") or {}
    run_dir = (meta.get("params") or {}).get("train.out_dir") if manifest["form"] != "base" else None
    reused = _reusable_eval(spec, params, meta, storage, run_dir) if reuse else None
    if reused is not None:
        result, images = reused
        run_logger().info("%s: the training run evaluated this checkpoint with the same settings; reusing it", label)
    else:
        policy = load_policy(folder, guidance_scale=params.model.guidance_scale).to(resolve_device(params.model.device))
        e = params.eval
        result = evaluate(policy.eval(), read_prompts(params, spec.project, "eval"),
                          reward_from_params(params, spec.project), num_steps=e.num_steps,
                          samples_per_prompt=e.samples_per_prompt, seed=e.seed, shift=params.sampler.shift,
                          batch_size=e.batch_size)
        images = result.pop("images")
    store = RunStore(storage, run_dir or "evals")
    objs = store.save_eval(label, result, images)
    tracker = Tracker(spec.tracking_uri, spec.experiment)
    parent = tracker.find_run({"aegpo.run_dir": run_dir, "aegpo.kind": "training"}) if run_dir else None
    child = tracker.log_evaluation(parent, label, int(meta.get("round", 0)), result, images,
                                   {"aegpo.checkpoint": str(spec.checkpoint), "aegpo.reused": str(reused is not None)})
    metrics = eval_summary(result)
    run_logger().info("%s: %s", label, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return {"label": label, "metrics": metrics, "eval_nfe": result["nfe"], "train_nfe": meta.get("nfe"),
            "train_rounds": meta.get("round"), "run_dir": run_dir, "mlflow_run_id": child, "parent_run_id": parent,
            **{k: v.as_dict() for k, v in objs.items()}}


@flow(name="aegpo-evaluate", log_prints=True)
def evaluate_flow(checkpoint: str | None = None, params_path: str | None = "params.yaml",
                  overrides: list[str] | None = None, project_dir: str = ".", out: str | None = None,
                  label: str = "final", storage_uri: str | None = None, tracking_uri: str | None = None,
                  experiment: str = "aegpo", reuse: bool = True) -> dict[str, Any]:
    """Evaluate `checkpoint` (default: model.checkpoint, the base) on eval.prompts; write `out` if given.

    `reuse`: when the checkpoint's training run already evaluated these exact weights with the same
    eval settings (its last round), take that result instead of computing it again.
    """
    spec = prepare_eval(checkpoint, params_path, overrides or [], project_dir, storage_uri, tracking_uri, experiment)
    result = evaluate_checkpoint(spec, label, reuse)
    measured = out_metrics(result)
    metrics = {**measured, "nfe": result["train_nfe"] or 0, "rounds": result["train_rounds"] or 0}
    from aegpo.eval_metrics import eval_summary

    base = eval_summary(_base_eval(spec, result.get("run_dir"))) or {}
    metrics.update({f"base_{k}": v for k, v in base.items()})
    if out:
        atomic_write_json(resolve(spec.project, out), measured)
    publish_markdown("aegpo-evaluation", "\n".join([
        f"### Evaluation `{label}` of `{spec.checkpoint}`", "", "| metric | value |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in metrics.items()]]), f"Evaluation {label}")
    return {**result, "summary": metrics, "base_metrics": base}


def out_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """What `out` (the DVC metrics file) holds: this evaluation's figures only. The checkpoint's rounds and NFE and
    the base policy's accuracy are the train stage's (reports/train_metrics.json): `dvc metrics show` names each
    figure once."""
    return {**result["metrics"], "eval_nfe": result["eval_nfe"]}


def _base_eval(spec: EvalSpec, run_dir: str | None) -> dict[str, Any] | None:
    import json

    if not run_dir:
        return None
    path = resolve(spec.project, run_dir) / "eval_base.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
