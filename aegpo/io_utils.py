"""Atomic file and folder writes: a reader never sees a half-written file or checkpoint.

Folder swap protocol (`atomic_directory`), and what a kill -9 at each phase leaves:

1. write everything into `.<name>.<random>.tmp`   → `<name>` untouched; the `.tmp` folder is litter
2. rename `<name>` → `.<name>.old`                 → `<name>` untouched (rename is atomic)
3. rename `.<name>.<random>.tmp` → `<name>`        → no `<name>`, the previous complete one is `.<name>.old`
4. delete `.<name>.old`                            → new `<name>`; a whole or partly deleted `.old` is litter

`recover_directory` undoes phase 3's gap (moves `.<name>.old` back, the latest *complete* folder)
and `clean_litter` removes the rest; the trainer runs both at start while it holds the run lock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


class WriteError(OSError):
    """A write refused by the disk (full, read-only, no permission); the previous complete file is kept."""


def _write_error(path: Path, err: OSError) -> OSError:
    if err.errno not in DISK_ERRNOS or isinstance(err, WriteError):
        return err
    return WriteError(err.errno, f"cannot write {path}: {err.strerror}; the previous complete version is kept. "
                                 "Free space or make the folder writable, then run the same command again to resume")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _write_error(path, err) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise _write_error(path, err) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `path` (old contents removed), else it is deleted.

    The swap is two renames (old → backup, new → path), so `path` is either the old
    or the new complete folder, except for the instant between the two renames.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        recover_directory(path)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    except OSError as err:
        raise _write_error(path, err) from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the final folder gets the usual permissions
    try:
        yield tmp
        backup = None
        if path.exists():
            backup = path.with_name(f".{path.name}.old")
            if backup.exists():
                shutil.rmtree(backup)
            os.replace(path, backup)
        os.replace(tmp, path)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            recover_directory(path)  # the second rename failed: the previous folder goes back
        if isinstance(err, OSError):
            raise _write_error(path, err) from None
        if _is_disk_full(err):  # safetensors reports its write errors as its own exception type
            raise _write_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) from None
        raise


def _is_disk_full(err: BaseException) -> bool:
    text = str(err)
    return "No space left on device" in text or "StorageFull" in text or "code: 28" in text


def backup_path(path: str | Path) -> Path:
    """Where `atomic_directory` keeps the previous folder between its two renames."""
    path = Path(path)
    return path.with_name(f".{path.name}.old")


def recover_directory(path: str | Path) -> bool:
    """Put back the previous complete folder when a kill fell between the two renames of a swap.

    Returns True when something was restored. When `path` exists, a `.old` beside it is only
    litter (phase 4) and is left for `clean_litter`.
    """
    path = Path(path)
    backup = backup_path(path)
    if path.exists() or not backup.is_dir():
        return False
    os.replace(backup, path)
    return True


def is_litter(entry: Path) -> bool:
    """A temporary file/folder of an interrupted atomic write, or a `.old` whose successor is in place."""
    name = entry.name
    if not name.startswith("."):
        return False
    if name.endswith(".tmp"):
        return True
    if name.endswith(".old") and len(name) > 5:
        return (entry.parent / name[1:-4]).exists()
    return False


def clean_litter(folder: str | Path) -> list[Path]:
    """Delete what interrupted atomic writes left under `folder` (recursively); returns what went.

    Only call this while no other process writes there (the trainer holds the run lock).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    stack = [folder]
    while stack:
        current = stack.pop()
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in sorted(current.iterdir()):
                if is_litter(entry):
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        with contextlib.suppress(FileNotFoundError):
                            entry.unlink()
                    removed.append(entry)
                elif entry.is_dir() and not entry.is_symlink():
                    stack.append(entry)
    return removed


class CorruptFileError(ValueError):
    """A file the project wrote (or was given) that cannot be read back; the message says what to do.

    `reason`: "missing", "empty", "damaged" (truncated or not the expected format) or "unreadable" (an OSError),
    for a caller that treats some of them differently (a cache rebuilds a damaged entry, not an unreadable disk).
    """

    def __init__(self, message: str, reason: str = "damaged") -> None:
        super().__init__(message)
        self.reason = reason


def check_file(path: str | Path, remedy: str) -> Path:
    """`path` as a Path when it is a non-empty file; a missing or zero-byte file raises CorruptFileError naming it.

    `remedy`: what the user should do about it (appended to the message).
    """
    path = Path(path)
    if not path.is_file():
        raise CorruptFileError(f"{path} is missing; {remedy}", reason="missing")
    if path.stat().st_size == 0:
        raise CorruptFileError(f"{path} is empty (0 bytes, an interrupted copy?); {remedy}", reason="empty")
    return path


def read_safetensors(path: str | Path, remedy: str, read: Callable[[str], T]) -> T:
    """`read(str(path))` of a safetensors file, after `check_file`; a damaged file raises CorruptFileError naming it.

    A damaged header (truncated, garbage, not safetensors) is reason "damaged"; an OSError while reading (disk
    error, no permission) is reason "unreadable". Nothing is ever unpickled.
    """
    from safetensors import SafetensorError

    path = check_file(path, remedy)
    try:
        return read(str(path))
    except (SafetensorError, ValueError) as err:
        raise CorruptFileError(f"{path} is not a readable safetensors file (truncated or damaged: {_short(err)}); "
                               f"{remedy}", reason="damaged") from None
    except OSError as err:
        raise CorruptFileError(f"{path} cannot be read ({err.strerror or _short(err)}); {remedy}",
                               reason="unreadable") from None


def load_safetensors(path: str | Path, remedy: str) -> dict[str, Any]:
    """Tensors of a safetensors file; a missing, empty or damaged file raises CorruptFileError naming it."""
    from safetensors.torch import load_file

    return read_safetensors(path, remedy, load_file)


def check_safetensors(path: str | Path, remedy: str) -> None:
    """Read only the header of a safetensors file: catches missing, empty and truncated files cheaply."""
    from safetensors import safe_open

    def header(name: str) -> None:
        with safe_open(name, framework="pt"):
            pass

    read_safetensors(path, remedy, header)


def read_json_file(path: str | Path, remedy: str) -> Any:
    """A JSON file; missing, unreadable or truncated → CorruptFileError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CorruptFileError(f"{path} is missing; {remedy}", reason="missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"{path} is not valid JSON (truncated or edited? {_short(err)}); {remedy}") from None


def _short(err: BaseException, limit: int = 200) -> str:
    return shorten(str(err), limit)


def shorten(text: str, limit: int = 200) -> str:
    """`text` cut to `limit` characters for a message (quoted input must not flood the terminal)."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"
