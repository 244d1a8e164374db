"""kill -9 a training run mid-run, start it again: it continues from the last completed round, loses
nothing already written, and ends with the same weights (bit for bit) as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from aegpo.train_state import load_state

ROUNDS = 4


def _cmd(project) -> list[str]:
    return [sys.executable, "-m", "aegpo.cli", "pipeline", "train", "--project-dir", str(project)]


def _env(prefect_server: str) -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": prefect_server, "OMP_NUM_THREADS": "1"}


def _run_dir(project):
    [run] = list((project / "runs" / "train").iterdir())
    return run


@pytest.mark.slow  # three flow runs in subprocesses
def test_kill_9_then_resume_equals_an_uninterrupted_run(prefect_server, make_project):
    env = _env(prefect_server)
    straight = make_project("straight", rounds=ROUNDS, eval_every=2)
    done = subprocess.run(_cmd(straight), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    killed = make_project("killed", rounds=ROUNDS, eval_every=2)
    proc = subprocess.Popen(_cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not list(killed.glob("runs/train/*/rounds/round-0001.json")):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "round 1 never completed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run = _run_dir(killed)
    saved_round = json.loads((run / "state" / "state.json").read_text())["round"]
    assert 1 <= saved_round < ROUNDS, saved_round  # killed mid-run (round 1's record was written)

    # Nothing written is half-written: every table, record and the state read back.
    for table in run.rglob("*.parquet"):
        pq.read_table(table)
    for record in run.rglob("*.json"):
        json.loads(record.read_text())
    load_state(run / "state")
    before = {p: p.read_bytes() for p in run.glob("rounds/round-*/rollouts.parquet")
              if int(p.parent.name.split("-")[1]) < saved_round}

    again = subprocess.run(_cmd(killed), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"trained {ROUNDS} rounds" in again.stdout
    assert all(p.read_bytes() == data for p, data in before.items())  # completed rounds are kept as they were

    a = load_file(str(_run_dir(straight) / "state" / "trainable.safetensors"))
    b = load_file(str(run / "state" / "trainable.safetensors"))
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert (_run_dir(straight) / "checkpoint" / "denoiser.safetensors").read_bytes() == \
        (run / "checkpoint" / "denoiser.safetensors").read_bytes()

    client = MlflowClient(f"sqlite:///{killed / 'mlflow.db'}")
    exp = client.get_experiment_by_name("aegpo").experiment_id
    [parent] = client.search_runs([exp], "tags.`aegpo.kind` = 'training'")  # the resumed run continued it
    steps = sorted({m.step for m in client.get_metric_history(parent.info.run_id, "reward/mean")})
    assert steps == list(range(ROUNDS)) and parent.info.status == "FINISHED"
