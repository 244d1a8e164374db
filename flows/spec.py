"""The run manifest every task receives, and the checks made before anything is written.

`prepare_run` validates params.yaml (and overrides), the prompt files, the base checkpoint, the
artifact store and the tracking store, in that order, and returns a `RunSpec`: a small,
serialisable description of the run (paths, URIs, names, ids) that flows pass to tasks instead
of models or tensors. Any bad input stops the run here with a message naming the file, key or
endpoint, before a folder is created or a byte is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from aegpo.checkpoint import CheckpointError, read_manifest
from aegpo.config import BUILTIN, Params, apply_overrides, load_params, params_from_dict
from aegpo.prompt_files import read_prompt_file
from flows.round_io import run_fingerprint, run_name
from flows.storage import StorageSettings, open_storage
from flows.tracking import check_tracking, default_tracking_uri


class RunSpec(BaseModel):
    """What a task needs to find everything of its run; JSON-serialisable, no secrets."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    project_dir: str  # absolute; relative paths in params.yaml resolve against it
    params_path: str | None  # absolute, or None for the built-in defaults (where they were read from)
    overrides: tuple[str, ...] = ()
    values: dict[str, Any]  # the validated params (file + overrides), parsed once when the run was prepared
    run_dir: str  # the Trainer's train.out_dir, relative to project_dir
    run_name: str
    fingerprint: str
    strategy: str
    storage_uri: str | None = None  # None: the project folder
    tracking_uri: str
    experiment: str = "aegpo"
    mlflow_run_id: str | None = None
    base_profile_key: str | None = None  # storage key of the base-entropy profile Parquet table
    media_every: int = 5  # MLflow Entropy(t) plot and sample grid every N rounds

    def params(self) -> Params:
        """The params parsed when the run was prepared (an edit of params.yaml since then does not leak into
        the run, whose fingerprint names them), with train.out_dir pointing at this run's folder."""
        return params_from_dict(apply_overrides(self.values, [f"train.out_dir={self.run_dir}"]), "run manifest")

    @property
    def project(self) -> Path:
        return Path(self.project_dir)

    @property
    def run_path(self) -> Path:
        return self.project / self.run_dir

    @property
    def run_key(self) -> str:
        """Where the run's artifacts go in the store (its folder relative to the project)."""
        return Path(self.run_dir).as_posix()


def resolve(project: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else project / p


def params_file(project: Path, params_path: str | None) -> Path | None:
    """The params file to read, resolved against the project; None for the built-in defaults (`builtin`)."""
    if params_path is None or params_path == BUILTIN:
        return None
    return resolve(project, params_path)


def read_prompts(params: Params, project: Path, which: str = "train") -> list[str]:
    """The train or eval prompt set, each prompt validated by the reward (PromptFileError names the line)."""
    from aegpo.rewards.registry import reward_from_params

    reward = reward_from_params(params, project)
    path = params.train.prompts if which == "train" else params.eval.prompts
    return read_prompt_file(resolve(project, path), reward.validate_prompt)


def check_base_checkpoint(params: Params, project: Path) -> None:
    """The base checkpoint must be an aegpo checkpoint (kinds loaded from a folder)."""
    from aegpo.models.registry import policy_class

    cls = policy_class(params.model.kind)
    if hasattr(cls, "from_pretrained_params"):
        return  # real models validate their own source when loaded
    folder = resolve(project, params.model.checkpoint)
    manifest = read_manifest(folder)
    if manifest.get("form") != "base":
        raise CheckpointError(f"model.checkpoint {folder} is a trained ({manifest.get('form')}) checkpoint; "
                              "a base checkpoint is expected")


def prepare_run(params_path: str | None = "params.yaml", overrides: list[str] | tuple[str, ...] = (),
                project_dir: str | Path = ".", *, run_dir: str | None = None, storage_uri: str | None = None,
                tracking_uri: str | None = None, experiment: str = "aegpo", media_every: int = 0,
                need_eval_prompts: bool = True, need_tracking: bool = True) -> RunSpec:
    """Validate everything a run reads and every service it talks to; return its RunSpec."""
    project = Path(project_dir).resolve()
    path = params_file(project, params_path)
    params = load_params(path, list(overrides))
    read_prompts(params, project, "train")
    if need_eval_prompts:
        read_prompts(params, project, "eval")
    check_base_checkpoint(params, project)
    name = run_name(params)
    folder = run_dir or f"{params.train.out_dir}/{name}"
    folder_path = resolve(project, folder).resolve()
    if project not in folder_path.parents:
        raise ValueError(f"run folder {folder_path} must be inside the project folder {project} "
                         "(its path relative to the project is its key in the artifact store)")
    folder = folder_path.relative_to(project).as_posix()
    settings = StorageSettings.from_env()
    uri = storage_uri if storage_uri is not None else settings.uri
    open_storage(uri, project, settings).check()
    tracking = tracking_uri or default_tracking_uri(project)
    if need_tracking:
        check_tracking(tracking)
    return RunSpec(project_dir=str(project), params_path=None if path is None else str(path),
                   overrides=tuple(overrides), values=params.model_dump(mode="json"), run_dir=folder, run_name=name,
                   fingerprint=run_fingerprint(params),
                   strategy=params.train.strategy, storage_uri=uri or None, tracking_uri=tracking,
                   experiment=experiment, media_every=media_every or params.train.eval_every or 5)


def artifact_location(spec: RunSpec) -> str | None:
    """Where MLflow puts artifacts of a new experiment: beside the other artifacts of the store."""
    if spec.tracking_uri.startswith(("http://", "https://")):
        return None  # the server decides (it may proxy artifacts)
    if spec.storage_uri and spec.storage_uri.startswith("s3://"):
        return spec.storage_uri.rstrip("/") + "/mlflow"
    return (spec.project / "mlruns").as_uri()


def run_tags(spec: RunSpec, flow_run_id: str | None) -> dict[str, str]:
    """Tags of the MLflow parent run: how to find it again, and where it came from."""
    import os
    import subprocess

    tags: dict[str, Any] = {"aegpo.run_dir": spec.run_dir, "aegpo.fingerprint": spec.fingerprint,
                            "aegpo.strategy": spec.strategy, "aegpo.kind": "training"}
    if flow_run_id:
        tags["prefect.flow_run_id"] = flow_run_id
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp"] = os.environ["DVC_EXP_NAME"]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=spec.project_dir, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        if sha:
            tags["git_sha"] = sha
    except (OSError, subprocess.SubprocessError):
        pass
    return {k: str(v) for k, v in tags.items()}
