"""One writer per run folder: an exclusive `flock` on `<run>/.aegpo-run.lock`.

Every writer of a run folder (`aegpo train`, the pipeline's training session) takes this lock
before it reads or writes anything there. The kernel releases a flock when its process ends,
kill -9 included, so a lock left by a dead process never blocks anyone: the file stays, its
flock does not. The file names the holder (pid, host) for the message the second writer sees.

Within one process the lock is shared (counted): a resumed `Trainer` or a pipeline session
that builds a trainer in the same process for the same folder is not a second writer.

A folder that is itself replaced as a whole (a checkpoint written by `atomic_directory`, e.g.
`pretrain.out`) cannot hold its own lock file: the swap would move the file away and the next
writer would lock a new one. Its lock lives beside it instead (`sibling_lock_file`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from aegpo.io_utils import clean_litter, recover_directory

LOCK_FILE = ".aegpo-run.lock"
log = logging.getLogger(__name__)


class RunInUseError(RuntimeError):
    """Another process is writing into the same run folder."""


class RunFolderError(ValueError):
    """The run folder cannot be used (not a folder, not writable)."""


def check_writable_folder(folder: str | Path, what: str = "train.out_dir") -> Path:
    """Create `folder` if needed and prove a file can be written there; fail naming the folder otherwise."""
    folder = Path(folder)
    for parent in [folder, *folder.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise RunFolderError(f"{what} {folder}: {parent} is a file, not a folder; "
                                     f"choose another {what} or move that file away")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".aegpo-check.", suffix=".tmp") as f:
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise RunFolderError(f"{what} {folder} is not writable ({err.strerror or err}); choose a writable "
                             f"{what}, fix its permissions or free space on its disk") from None
    return folder


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _recorded_holder(text: str) -> tuple[int | None, str | None]:
    """(pid, host) recorded in a lock file ("pid 123 on host")."""
    parts = text.split()
    if len(parts) >= 4 and parts[0] == "pid" and parts[1].isdigit() and parts[2] == "on":
        return int(parts[1]), parts[3]
    return None, None


def sibling_lock_file(folder: str | Path) -> Path:
    """The lock file of a folder that is swapped as a whole: `<parent>/.<name>.aegpo-run.lock`."""
    folder = Path(folder).resolve()  # "." has no name of its own
    return folder.with_name(f".{folder.name}{LOCK_FILE}")


class _Held:
    def __init__(self, fd: int) -> None:
        self.fd, self.count = fd, 0


_HELD: dict[Path, _Held] = {}


class RunLock:
    """The run folder's lock; `close()` gives it back (the last holder in this process releases the flock).

    `lock_file`: where the lock lives when not `<run_dir>/.aegpo-run.lock` (see `sibling_lock_file`);
    `advice`: what the refused writer's message tells the user to do.
    """

    def __init__(self, run_dir: str | Path, lock_file: str | Path | None = None,
                 advice: str = "wait for it to finish or stop it (its progress is kept)") -> None:
        run_dir = Path(run_dir)
        lock_path = run_dir / LOCK_FILE if lock_file is None else Path(lock_file)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        self.path = lock_path.resolve()
        self._closed = False
        self._advice = advice
        held = _HELD.get(self.path)
        if held is None:
            held = _HELD[self.path] = _Held(self._acquire(run_dir))
        held.count += 1

    def _acquire(self, run_dir: Path) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = self.path.read_text(encoding="utf-8", errors="replace").strip()
            os.close(fd)
            pid, host = _recorded_holder(text)
            holder = text or "unknown"
            if pid is not None and host == os.uname().nodename and not _pid_alive(pid):
                holder += ", no longer running: a process it started still holds the lock"
            raise RunInUseError(f"run folder {run_dir} is in use by another process ({holder}); {self._advice}") \
                from None
        previous = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        pid, host = _recorded_holder(previous)
        if pid is not None and pid != os.getpid():
            # The flock was free, so its holder is gone (killed or ended without cleaning up).
            log.info("run folder %s: previous writer (pid %d on %s) is gone; its lock is cleared", run_dir, pid, host)
        with contextlib.suppress(OSError):  # the flock is the lock; the holder's name is informational
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
        return fd

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        held = _HELD.get(self.path)
        if held is None:
            return
        held.count -= 1
        if held.count <= 0:
            _HELD.pop(self.path, None)
            with contextlib.suppress(OSError):
                os.ftruncate(held.fd, 0)  # no holder named once released
            with contextlib.suppress(OSError):
                fcntl.flock(held.fd, fcntl.LOCK_UN)
            os.close(held.fd)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def hold_pretrain_folders(out: Path, work_dir: Path) -> Iterator[None]:
    """`aegpo pretrain`'s folders: check both are writable, lock them, clear what a killed run left there.

    `out` is the base checkpoint (replaced as a whole by each save, so locked through `sibling_lock_file`),
    `work_dir` holds the intermediate checkpoints. Nothing here imports torch: the CLI refuses a second writer
    within a second.
    """
    check_writable_folder(out.parent, "pretrain.out's folder")
    check_writable_folder(work_dir, "--work-dir")
    advice = ("wait for it to finish, or stop it (its intermediate checkpoints in --work-dir are kept: "
              "pretrain.init_from can start from one)")
    with contextlib.ExitStack() as stack:
        # `out` is replaced as a whole at the end (atomic_directory), so its lock lives beside it
        stack.enter_context(RunLock(out, lock_file=sibling_lock_file(out), advice=advice))
        stack.enter_context(RunLock(work_dir, advice=advice))
        recover_directory(out)  # a kill between the two renames of the final save
        removed = clean_litter(work_dir)
        for tmp in out.parent.glob(f".{out.name}.*.tmp"):  # not clean_litter(out.parent): it may hold anything
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
        for litter in removed:
            log.info("removed %s (left by an interrupted save)", litter)
        yield
