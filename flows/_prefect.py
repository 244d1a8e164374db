"""Small Prefect helpers shared by the flows: which errors to retry, logging, UI artifacts, and the
temporary Prefect server of an in-process run (`temporary_server`: it dies with its parent).

They work outside a Prefect run too (`task.fn(...)` in unit tests): the logger falls back to
the standard `aegpo.flows` logger and artifacts are skipped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
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
    if type(exc).__name__ == "WriteError":
        return False  # a full or read-only disk: retrying would fail again (the message says what to do)
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


# ----- the temporary Prefect server of an in-process run ---------------------------------------------
# Prefect's own temporary server (started on the first API call when PREFECT_API_URL is unset) outlives
# a kill -9 of its parent. This one watches its parent: when the parent is gone it exits.
_WATCHED_SERVER = """
import os, sys, threading, time
parent = int(sys.argv[1])
def watch():
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)  # the process that started us is gone (kill -9 included): so is its temporary server
threading.Thread(target=watch, name="watch-parent", daemon=True).start()
sys.argv = ["uvicorn", *sys.argv[2:]]
from uvicorn.main import main
main()
"""


@contextlib.contextmanager
def temporary_server(startup_timeout: float = 120) -> Iterator[str | None]:
    """A local Prefect API for this process's flows when PREFECT_API_URL is unset (else nothing).

    Yields the API URL (None when an API is configured). The server process exits with this
    process (normally, on error, or on kill -9 of this process: it watches its parent pid).
    """
    if os.environ.get("PREFECT_API_URL"):
        yield None
        return
    import prefect
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    from flows.local_server import free_port, wait_http

    port = free_port()
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
           **get_current_settings().to_environment_variables(exclude_unset=True)}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-c", _WATCHED_SERVER, str(os.getpid()), "--app-dir", str(prefect.__module_path__.parent),
           "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "error", "--lifespan", "on"]
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    log = logging.getLogger("aegpo.flows")
    try:
        wait_http(url + "/health", startup_timeout, proc)
        log.info("temporary Prefect server (pid %d) on %s; it stops with this process", proc.pid, url)
        os.environ["PREFECT_API_URL"] = url
        with temporary_settings(updates={PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                _drain_to_server()
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _drain_to_server() -> None:
    """Send buffered logs and events now, while the server is still up."""
    with contextlib.suppress(Exception):
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
