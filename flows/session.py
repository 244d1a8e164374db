"""The policy lives in the worker process: one `TrainingSession` per run, shared by its tasks.

Tasks exchange manifests; the model, optimizer and the round in flight stay here, in the
process that runs the flow (one worker per GPU). A session is built from the run folder's
saved state (pulling it from the store first when the store is remote and the folder is
empty), so a task in a fresh process, or a flow restarted after kill -9, continues from the
last completed round.

If a task fails while it changes the trainer (sampling, update, end of round), the session is
dropped: the next use rebuilds it from the saved state, never from a half-updated model.

A run folder is locked (aegpo.run_lock, the same flock `aegpo train` takes) while a session holds
it: two processes never train into the same folder; the lock goes with the process, kill -9 included.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aegpo.run_lock import LOCK_FILE, RunInUseError, RunLock  # noqa: F401 (re-exported: the flows' names)
from aegpo.trainer import RoundWork, Trainer
from flows.round_io import RunStore
from flows.spec import RunSpec, read_prompts
from flows.storage import open_storage


@dataclass
class TrainingSession:
    spec: RunSpec
    trainer: Trainer
    store: RunStore
    lock: RunLock
    in_flight: dict[int, RoundWork] = field(default_factory=dict)  # rounds sampled (and scored), not yet updated
    pending: dict[int, RoundWork] = field(default_factory=dict)  # rounds updated but not yet ended

    def close(self) -> None:
        self.in_flight.clear()
        self.pending.clear()
        self.trainer.close()
        self.lock.close()


_SESSIONS: dict[str, TrainingSession] = {}


def _session_key(spec: RunSpec) -> str:
    return f"{spec.project_dir}:{spec.run_dir}:{spec.fingerprint}"


def session_for(spec: RunSpec) -> TrainingSession:
    """The live session of `spec`'s run in this process, built (and resumed) on first use."""
    key = _session_key(spec)
    session = _SESSIONS.get(key)
    if session is None or session.spec.base_profile_key != spec.base_profile_key:
        if session is not None:
            session.close()
        session = _build(spec)
        _SESSIONS[key] = session
    session.spec = spec  # later specs may carry the MLflow run id
    return session


def drop_session(spec: RunSpec) -> None:
    """Forget the session (its model and lock); the next use rebuilds it from the saved state."""
    session = _SESSIONS.pop(_session_key(spec), None)
    if session is not None:
        session.close()


@contextlib.contextmanager
def mutating(spec: RunSpec) -> Iterator[None]:
    """Wrap code that changes the trainer: on any error the session is dropped (see module doc)."""
    try:
        yield
    except BaseException:
        drop_session(spec)
        raise


def _build(spec: RunSpec) -> TrainingSession:
    params = spec.params()
    run_path = spec.run_path
    lock = RunLock(run_path)
    try:
        store = RunStore(open_storage(spec.storage_uri, spec.project), spec.run_key)
        _pull_remote_progress(store, run_path)
        profile_path = _profile_path(spec, store, run_path)
        trainer = Trainer(params, read_prompts(params, spec.project, "train"),
                          read_prompts(params, spec.project, "eval"),
                          project_dir=spec.project, progress=False, base_profile_path=profile_path)
    except BaseException:
        lock.close()
        raise
    return TrainingSession(spec, trainer, store, lock)


def _pull_remote_progress(store: RunStore, run_path: Path) -> None:
    """On a machine without the run folder, fetch the stored state, round records and base eval."""
    if store.storage.local_path(store.run_key) is not None or (run_path / "state" / "state.json").is_file():
        return
    if not store.pull_tree("state", run_path / "state"):
        return
    for key in store.storage.list(f"{store.run_key}/rounds/"):
        if key.endswith(".json") and key.count("/") == store.run_key.count("/") + 2:
            store.storage.get_file(key, run_path / "rounds" / Path(key).name)
    if store.storage.exists(f"{store.run_key}/eval_base.json"):
        store.storage.get_file(f"{store.run_key}/eval_base.json", run_path / "eval_base.json")


def _profile_path(spec: RunSpec, store: RunStore, run_path: Path) -> Path | None:
    if spec.base_profile_key is None:
        return None
    local = store.storage.local_path(spec.base_profile_key)
    if local is not None:
        return local
    target = run_path / "base_entropy.parquet"
    store.storage.get_file(spec.base_profile_key, target)
    return target
