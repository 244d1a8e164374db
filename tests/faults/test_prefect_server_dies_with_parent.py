"""kill -9 of `aegpo pipeline train` takes its temporary Prefect server with it."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in state  # a zombie has exited


def test_kill_9_of_pipeline_train_stops_its_temporary_prefect_server(tiny_project, tmp_path):
    proj = tiny_project(50)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_API", "MLFLOW_TRACKING", "AEGPO_STORAGE", "AEGPO_S3"))}
    env.update({"PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "prefect-home"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true", "OMP_NUM_THREADS": "1"})
    proc = subprocess.Popen([sys.executable, "-m", "aegpo.cli", "pipeline", "train", "--project-dir", str(proj)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    server_pid = None
    seen = []
    try:
        deadline = time.monotonic() + 240
        while server_pid is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            seen.append(line)
            match = re.search(r"temporary Prefect server \(pid (\d+)\)", line)
            if match:
                server_pid = int(match.group(1))
        assert server_pid is not None, "".join(seen[-30:])
        assert _alive(server_pid)
        time.sleep(1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        gone_by = time.monotonic() + 15
        while _alive(server_pid) and time.monotonic() < gone_by:
            time.sleep(0.2)
        assert not _alive(server_pid), "the temporary Prefect server outlived its killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()
        if server_pid is not None and _alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)
