"""The README's deployment walk-through against a real Prefect server and process worker on 127.0.0.1:
create the pool, deploy prefect.yaml, start a worker, run 'aegpo-train/gpu' with parameter
overrides and watch it; then check the run's states, artifacts and outputs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import urllib.request

import pytest
from mlflow import MlflowClient

from pipeline_helpers import REPO, VENV_BIN

PREFECT = str(VENV_BIN / "prefect")


def _api(url: str, path: str, body: dict) -> list[dict]:
    req = urllib.request.Request(f"{url}/{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _cli(args: list[str], env: dict, timeout: float = 120) -> str:
    out = subprocess.run([PREFECT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"prefect {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def _assert_training_run_tracked(proj, run_id: str) -> None:
    """The flow run's MLflow training run: linked to the flow run, finished, a metric per round, the checkpoint."""
    client = MlflowClient(f"sqlite:///{proj / 'mlflow.db'}")
    [parent] = client.search_runs([client.get_experiment_by_name("aegpo").experiment_id],
                                  "tags.`aegpo.kind` = 'training'")
    assert parent.data.tags["prefect.flow_run_id"] == run_id and parent.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(parent.info.run_id, "reward/mean")] == [0, 1]
    assert client.list_artifacts(parent.info.run_id, "checkpoint")


@pytest.mark.slow  # deploy, a worker, a watched run
def test_deploy_and_run_training_on_a_process_worker(prefect_server, make_project, tmp_path):
    proj = make_project(rounds=2, eval_every=1)
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_WORKER_QUERY_SECONDS": "1",
           "OMP_NUM_THREADS": "1", "PREFECT_LOGGING_LEVEL": "INFO"}  # INFO: what a user's --watch shows
    _cli(["work-pool", "create", "aegpo-gpu", "--type", "process", "--overwrite"], env)
    _cli(["--no-prompt", "deploy", "--all"], env)  # prefect.yaml at the repository root

    log = open(tmp_path / "worker.log", "wb")
    # A polling worker, not `--run-once`: a single poll can come before the flow run exists (seen in CI).
    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "aegpo-gpu", "--limit", "1"], cwd=tmp_path,
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        out = _cli(["deployment", "run", "aegpo-train/gpu", "--param", f"project_dir={proj}",
                    "--param", 'overrides=["train.rounds=2", "train.eval_every=1"]', "--param", "media_every=1",
                    "--watch", "--watch-timeout", "300"], env, timeout=330)
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGKILL)  # the run is over (watched to the end); a worker ignores SIGTERM
        log.close()
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
    assert "COMPLETED" in out.upper(), out + (tmp_path / "worker.log").read_text()[-3000:]

    flow_run = _api(prefect_server, "flow_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})[0]
    assert flow_run["state"]["type"] == "COMPLETED" and flow_run["parameters"]["overrides"][0] == "train.rounds=2"
    children = _api(prefect_server, "flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [run_id]}}})
    assert sorted(r["name"] for r in children) == ["round-0000", "round-0001"]
    assert all(r["state"]["type"] == "COMPLETED" for r in children)
    # progress reaches `--watch` (the console wraps lines): one line per round, with its entropy probes (the base
    # profile is probed lazily, the new prompts of each round)
    flat = " ".join(out.split())
    assert re.search(r"round 1/2: reward -?[0-9.]+, NFE [0-9,]+, \S+ elapsed, ETA \S+, entropy probes [0-9,]+ NFE",
                     flat), out
    assert "round 2/2: reward" in flat, out
    tasks = _api(prefect_server, "task_runs/filter",
                 {"flow_runs": {"id": {"any_": [r["id"] for r in children]}}})
    assert {"generate-rollouts-r0000", "score-rewards-r0001", "update-policy-r0001", "finish-round-r0000",
            "sync-run-r0001", "evaluate-policy-round-0001"} <= {t["name"] for t in tasks}
    artifacts = _api(prefect_server, "artifacts/filter", {"artifacts": {"key": {"any_": [
        "aegpo-round-summary", "aegpo-entropy-allocation", "aegpo-run-summary"]}}})
    assert {a["key"] for a in artifacts} == {"aegpo-round-summary", "aegpo-entropy-allocation", "aegpo-run-summary"}
    table = next(a for a in artifacts if a["key"] == "aegpo-entropy-allocation" and a["flow_run_id"] == run_id)
    assert {"prompt", "delta_entropy", "group_size"} <= set(json.loads(table["data"])[0])

    run_dir = next((proj / "runs" / "train").iterdir())
    assert (run_dir / "checkpoint" / "aegpo_checkpoint.json").is_file()
    assert sorted(p.name for p in run_dir.glob("rounds/round-*/rollouts.parquet")) == ["rollouts.parquet"] * 2
    _assert_training_run_tracked(proj, run_id)


def test_a_two_process_run_through_the_deployment(prefect_server, make_project, tmp_path):
    """`nproc=2`: the flow run on the worker starts torchrun with 2 ranks (gloo); each rank stores its
    rollouts shard, rank 0 the state, records and MLflow metrics; the flow publishes the round artifacts."""
    proj = make_project(rounds=2, eval_every=1)
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_WORKER_QUERY_SECONDS": "1",
           "OMP_NUM_THREADS": "1"}
    _cli(["work-pool", "create", "aegpo-gpu", "--type", "process", "--overwrite"], env)
    _cli(["--no-prompt", "deploy", "--all"], env)
    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "aegpo-gpu", "--limit", "1"], cwd=tmp_path,
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        out = _cli(["deployment", "run", "aegpo-train/gpu", "--param", f"project_dir={proj}", "--param", "nproc=2",
                    "--param", 'overrides=["train.rounds=2", "train.eval_every=1"]',
                    "--watch", "--watch-timeout", "400"], env, timeout=430)
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGKILL)
        log.close()
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
    assert "COMPLETED" in out.upper(), out + (tmp_path / "worker.log").read_text()[-5000:]
    flow_run = _api(prefect_server, "flow_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})[0]
    assert flow_run["parameters"]["nproc"] == 2
    tasks = _api(prefect_server, "task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
    assert any(t["name"].startswith("train-on-ranks") and t["state"]["type"] == "COMPLETED" for t in tasks)
    artifacts = _api(prefect_server, "artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    assert sum(a["key"] == "aegpo-round-summary" for a in artifacts) == 2

    run_dir = next((proj / "runs" / "train").iterdir())
    assert json.loads((run_dir / "state" / "state.json").read_text())["world_size"] == 2
    for r in range(2):
        shards = sorted(p.name for p in (run_dir / "rounds" / f"round-{r:04d}").glob("rollouts-rank-*.parquet"))
        assert shards == ["rollouts-rank-00.parquet", "rollouts-rank-01.parquet"]
    _assert_training_run_tracked(proj, run_id)
