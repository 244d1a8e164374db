"""One writer per run folder, between real processes: `aegpo train`, `aegpo pretrain` and the pipeline share one
lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aegpo.run_lock import LOCK_FILE, RunInUseError, RunLock, sibling_lock_file

REPO = Path(__file__).resolve().parents[2]
HOLD = """
import sys, time
from aegpo.run_lock import RunLock
lock = RunLock(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _holder(run: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout.readline().strip() == "held"
    return proc


def _train(project: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aegpo.cli", "train", *extra], cwd=project, env=_env(),
                          capture_output=True, text=True, timeout=600)


def _pretrain(out: Path, work: Path, steps: int) -> subprocess.Popen:
    """`aegpo pretrain` of a tiny architecture (`steps` steps of 2 images) into `out`, intermediate ones in `work`."""
    tiny = ["pretrain.arch.num_layers=1", "pretrain.arch.num_heads=1", "pretrain.arch.head_dim=8",
            "pretrain.arch.text_dim=8", "pretrain.arch.text_layers=1", "pretrain.batch_size=2", "pretrain.warmup=1",
            f"pretrain.steps={steps}", f"pretrain.save_every={max(1, steps // 2)}", f"pretrain.out={out}"]
    args = [a for s in tiny for a in ("-S", s)]
    return subprocess.Popen([sys.executable, "-m", "aegpo.cli", "pretrain", "--params", "builtin", *args,
                             "--work-dir", str(work)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for_lock(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (path.is_file() and f"pid {proc.pid} " in path.read_text()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never named pid {proc.pid}"
        time.sleep(0.05)


def test_a_second_pretrain_into_the_same_out_or_work_dir_is_refused(tmp_path):
    out, work = tmp_path / "models" / "base", tmp_path / "work"
    first = _pretrain(out, work, 10**6)  # runs until killed
    try:
        _wait_for_lock(work / LOCK_FILE, first)  # taken after the lock of `out`: both are held
        for folder, second in ((out, _pretrain(out, tmp_path / "other-work", 2)),
                               (work, _pretrain(tmp_path / "other-out", work, 2))):
            _, err = second.communicate(timeout=120)
            assert second.returncode == 2, err
            assert f"run folder {folder} is in use by another process (pid {first.pid} on" in err, err
            assert "intermediate checkpoints in --work-dir are kept" in err and "Traceback" not in err
        assert not out.exists() and not (tmp_path / "other-out").exists()  # refused before any work
    finally:
        first.kill()
        first.communicate(timeout=10)
    assert f"pid {first.pid}" in sibling_lock_file(out).read_text()  # the dead holder's file is still there
    (tmp_path / "models" / ".base.x1.tmp").mkdir()  # litter of a save it was killed in
    after = _pretrain(out, work, 2)
    _, err = after.communicate(timeout=120)
    assert after.returncode == 0, err
    assert f"previous writer (pid {first.pid}" in err and "is gone" in err
    assert (out / "aegpo_checkpoint.json").is_file() and (work / "step-000001").is_dir()
    assert not (tmp_path / "models" / ".base.x1.tmp").exists()


@pytest.fixture
def project(tiny_project):
    return tiny_project(1, train_extra=", eval_base: false", eval_extra=", samples_per_prompt: 1")


def test_second_writer_is_refused_and_a_dead_holders_lock_is_cleared(project):
    run = project / "runs" / "train"
    holder = _holder(run)
    try:
        t0 = time.monotonic()
        second = _train(project)
        assert second.returncode == 2, second.stderr
        assert "is in use by another process" in second.stderr and f"pid {holder.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        assert not (run / "state").exists() and not (run / "rounds").exists()  # refused before any work
        assert time.monotonic() - t0 < 120
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    assert f"pid {holder.pid}" in (run / LOCK_FILE).read_text()  # the dead holder's file is still there
    after = _train(project)
    assert after.returncode == 0, after.stderr
    assert f"previous writer (pid {holder.pid}" in after.stderr and "is gone" in after.stderr
    assert (run / "checkpoint" / "aegpo_checkpoint.json").is_file()


def test_the_pipeline_session_and_aegpo_train_use_the_same_lock(tmp_path):
    from flows.session import RunLock as SessionLock

    assert SessionLock is RunLock  # one mechanism for every writer
    holder = _holder(tmp_path / "run")
    try:
        with pytest.raises(RunInUseError, match=f"pid {holder.pid}"):
            RunLock(tmp_path / "run")
    finally:
        holder.kill()
        holder.wait(10)
    RunLock(tmp_path / "run").close()  # free again once the holder is dead


def test_in_one_process_the_lock_is_shared_and_released_by_the_last_holder(tmp_path):
    a = RunLock(tmp_path / "run")
    b = RunLock(tmp_path / "run")  # e.g. a pipeline session and the trainer it builds
    a.close()
    probe = subprocess.run([sys.executable, "-c", "import sys; from aegpo.run_lock import RunLock; "
                            "RunLock(sys.argv[1])", str(tmp_path / "run")], env=_env(), capture_output=True, text=True)
    assert probe.returncode != 0 and "in use by another process" in probe.stderr
    b.close()
    probe = subprocess.run([sys.executable, "-c", "import sys; from aegpo.run_lock import RunLock; "
                            "RunLock(sys.argv[1])", str(tmp_path / "run")], env=_env(), capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
