"""Small Prefect helpers shared by the flows: which errors to retry, logging and UI artifacts.

They work outside a Prefect run too (`task.fn(...)` in unit tests): the logger falls back to
the standard `aegpo.flows` logger and artifacts are skipped.
"""

from __future__ import annotations

import logging
from typing import Any

from flows.storage import StorageError

NOT_TRANSIENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying (I/O, unreachable services); never for out-of-memory or bad input."""
    name = type(exc).__name__
    if name == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return False  # a retry would allocate the same memory again
    if isinstance(exc, StorageError):
        return exc.transient
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError):
        return not isinstance(exc, NOT_TRANSIENT_OS_ERRORS)
    if name == "MlflowException":
        text = str(exc)
        return any(s in text for s in ("Max retries exceeded", "Connection", "TEMPORARILY_UNAVAILABLE", "timed out"))
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and is_transient(cause)


def retry_on_io(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry a failed task only when its error is transient."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - we classify whatever the task raised
        return is_transient(exc)
    return False


def in_prefect_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return TaskRunContext.get() is not None or FlowRunContext.get() is not None


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    if in_prefect_run():
        from prefect import get_run_logger

        return get_run_logger()
    return logging.getLogger("aegpo.flows")


def flow_run_id() -> str | None:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx is not None and ctx.flow_run is not None else None


def publish_markdown(key: str, markdown: str, description: str) -> None:
    """A markdown artifact in the Prefect UI (keys: lower case, digits and dashes)."""
    if not in_prefect_run():
        return
    from prefect.artifacts import create_markdown_artifact

    try:
        create_markdown_artifact(markdown=markdown, key=key, description=description)
    except Exception as err:  # noqa: BLE001 - artifacts are informational; training goes on
        run_logger().warning("could not create Prefect artifact %s: %s", key, err)


def publish_table(key: str, rows: list[dict[str, Any]], description: str) -> None:
    """A table artifact in the Prefect UI."""
    if not in_prefect_run() or not rows:
        return
    from prefect.artifacts import create_table_artifact

    try:
        create_table_artifact(table=rows, key=key, description=description)
    except Exception as err:  # noqa: BLE001
        run_logger().warning("could not create Prefect artifact %s: %s", key, err)
