"""Bad input and failures of multi-process runs: a clear error, and rank 0's last committed round intact."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import pytest
import torch

from dist_helpers import (
    max_abs_diff,
    rank_pid,
    records,
    run,
    run_ok,
    start,
    state_round,
    torchrun_cmd,
    train_cmd,
    trainable,
    wait_for,
)


def _digest(folder) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_more_ranks_than_devices_fails_before_anything_is_written(make_dist_project):
    proj = make_dist_project(prompts_per_round=4)
    out = run(train_cmd("--nproc", "64", "-S", "train.prompts_per_round=64"), proj, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "train.nproc=64 CPU ranks on this node but it has" in out.stderr
    assert not (proj / "runs").exists()


def test_a_missing_rendezvous_host_is_named(make_dist_project):
    proj = make_dist_project()
    out = run(train_cmd("--nnodes", "2", "--rdzv-endpoint", "no-such-node.invalid:29400"), proj, timeout=120)
    assert out.returncode == 2
    assert "rendezvous host 'no-such-node.invalid'" in out.stderr and "cannot be resolved" in out.stderr
    assert not (proj / "runs").exists()


@pytest.mark.slow
def test_resuming_on_more_ranks_than_groups_is_refused_and_the_state_kept(make_dist_project):
    proj = make_dist_project(strategy="grpo", rounds=1, prompts_per_round=1)
    run_ok(train_cmd(), proj)
    before = _digest(proj / "runs" / "train")
    out = run(torchrun_cmd(2, "-S", "train.rounds=2"), proj)
    assert out.returncode != 0
    assert "2 ranks but train.prompts_per_round=1" in out.stderr
    assert _digest(proj / "runs" / "train") == before and state_round(proj) == 1


@pytest.mark.slow
def test_a_dead_rank_stops_the_others_and_the_run_resumes_on_one_rank(one_rank_reference, make_dist_project,
                                                                       tmp_path):
    """kill -9 of rank 1 mid-run: torchrun ends the run within the collective timeout, rank 0's saved round is
    intact, and resuming it on one rank ends where a one-process run ends."""
    ref = one_rank_reference("aegpo")
    proj = make_dist_project(dist_timeout=20)
    proc = start(torchrun_cmd(2), proj, tmp_path / "run.log")
    wait_for(proj / "runs" / "train" / "state" / "state.json", proc)  # round 0 saved; kill in round 1
    victim = rank_pid(proc.pid, 1)
    t0 = time.monotonic()
    import os
    import signal

    os.kill(victim, signal.SIGKILL)
    rc = proc.wait(90)
    assert rc != 0 and time.monotonic() - t0 < 60, (tmp_path / "run.log").read_text()[-3000:]
    assert state_round(proj) in (1, 2)
    run_ok(train_cmd(), proj)  # the same run folder, now one process
    assert state_round(proj) == 3
    assert max_abs_diff(trainable(proj), trainable(ref)) <= 1e-5
    assert [r["reward_mean"] for r in records(proj)] == pytest.approx([r["reward_mean"] for r in records(ref)],
                                                                      abs=1e-6)


@pytest.mark.slow
def test_a_nan_on_one_rank_rejects_the_round_on_every_rank(make_dist_project):
    """The NaN guard agrees across ranks: rank 1's NaN reward rejects round 1 everywhere (no hang, no rank
    training on alone), rank 0 records it, and the run goes on to its last round."""
    proj = make_dist_project()
    script = str(Path(__file__).with_name("nan_on_one_rank.py"))
    out = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", script], proj)
    assert out.returncode == 0, out.stderr[-4000:]
    rounds = proj / "runs" / "train" / "rounds"
    assert json.loads((rounds / "rejected-0001.json").read_text())["rejected"].startswith("reward: 1 of")
    assert sorted(p.name for p in rounds.glob("round-*.json")) == ["round-0000.json", "round-0002.json"]
    assert state_round(proj) == 3
    assert all(bool(torch.isfinite(v).all()) for v in trainable(proj).values())
