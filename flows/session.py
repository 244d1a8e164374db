"""The run's trainer, owned by the training flow: `open_session(spec)` yields the `TrainingSession`
that flows/train.py:train_flow passes to each of its tasks.

Tasks exchange manifests; the model, optimizer and the round in flight stay in the session, in
the process that runs the flow (one worker per GPU). There is no registry: the flow opens the
session once, hands it to the tasks as an argument, and closes it when the run ends.

- The session holds the run folder's lock (aegpo.run_lock, the same flock `aegpo train` takes)
  from `open_session` to its end: two processes never train into the same folder, and the lock
  goes with the process, kill -9 included.
- The trainer is built on first use from the run folder's saved state (pulling it from the store
  first when the store is remote and the folder is empty), so a flow restarted after kill -9
  continues from the last completed round.
- A task that fails while it changes the trainer (sampling, update, end of round) discards it
  (`TrainingSession.mutating`): the next use, e.g. Prefect's retry of that task, rebuilds it from
  the saved state, never from a half-updated model.

A session is passed to Prefect tasks and to the round subflow by reference and is never
serialised: the tasks use `cache_policy=NO_CACHE` (nothing hashes it), and the class has
`__slots__` and no `__dict__`, so Prefect's JSON encoder gives up on it at once and records the
subflow parameter as "<TrainingSession>" instead of walking the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from aegpo.run_lock import LOCK_FILE, RunInUseError, RunLock  # noqa: F401 (re-exported: the flows' names)
from aegpo.trainer import RoundWork, Trainer
from flows.round_io import RunStore
from flows.spec import RunSpec, read_prompts
from flows.storage import open_storage


class TrainingSession:
    """One run's trainer (built lazily, rebuilt after `discard`) and its rounds in flight."""

    __slots__ = ("spec", "store", "_trainer", "in_flight", "pending")

    def __init__(self, spec: RunSpec, store: RunStore) -> None:
        self.spec, self.store = spec, store
        self._trainer: Trainer | None = None
        self.in_flight: dict[int, RoundWork] = {}  # rounds sampled (and scored), not yet updated
        self.pending: dict[int, RoundWork] = {}  # rounds updated but not yet ended

    @property
    def trainer(self) -> Trainer:
        """The run's trainer; built (resumed from the saved state) on first use and after `discard`."""
        if self._trainer is None:
            self._trainer = _build_trainer(self.spec, self.store)
        return self._trainer

    def at_round(self, round_idx: int) -> Trainer:
        """The trainer, which must be about to run round `round_idx`."""
        t = self.trainer
        if t.round != round_idx:
            raise RuntimeError(f"run {self.spec.run_dir} is at round {t.round}, not {round_idx}: "
                               "restart the training flow, it resumes from its last completed round")
        return t

    @contextlib.contextmanager
    def mutating(self) -> Iterator[None]:
        """Wrap code that changes the trainer: on any error the trainer is discarded (see module doc)."""
        try:
            yield
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Forget the trainer and the rounds in flight; the next use rebuilds it from the saved state."""
        self.in_flight.clear()
        self.pending.clear()
        trainer, self._trainer = self._trainer, None
        if trainer is not None:
            trainer.close()


@contextlib.contextmanager
def open_session(spec: RunSpec) -> Iterator[TrainingSession]:
    """Hold `spec`'s run for the block: its lock, its store and its trainer, all given back at the end."""
    lock = RunLock(spec.run_path)
    session = None
    try:
        session = TrainingSession(spec, RunStore(open_storage(spec.storage_uri, spec.project), spec.run_key))
        yield session
    finally:
        if session is not None:
            session.discard()
        lock.close()


def _build_trainer(spec: RunSpec, store: RunStore) -> Trainer:
    params = spec.params()
    _pull_remote_progress(store, spec.run_path)
    profile_path = _profile_path(spec, store, spec.run_path)
    return Trainer(params, read_prompts(params, spec.project, "train"), read_prompts(params, spec.project, "eval"),
                   project_dir=spec.project, progress=False, base_profile_path=profile_path)


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
