"""Bad input gets one clear line (exit code 2) and loses nothing: no run folder, no changed file."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from aegpo.cli import main
from flows.session import RunLock

from pipeline_helpers import REPO, free_port


def _snapshot(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


CASES = {
    "missing prompt file": (lambda p: (p / "data" / "train.txt").unlink(), [], "train.txt does not exist"),
    "empty prompt set": (lambda p: (p / "data" / "train.txt").write_text("# nothing\n\n"), [], "holds no prompts"),
    "malformed prompt": (lambda p: (p / "data" / "eval.txt").write_text("a red circle\nfour red circles\n"), [],
                         "eval.txt, line 2"),
    "malformed params.yaml": (lambda p: (p / "params.yaml").write_text("train: [1,\n"), [], "not valid YAML"),
    "params fail validation": (None, ["-S", "train.group_size=1"], "train.group_size"),
    "unknown parameter": (None, ["-S", "train.roundz=3"], "unknown key 'train.roundz'"),
    "checkpoint not ours": (lambda p: (p / "ckpt").mkdir(), ["-S", "model.checkpoint=ckpt"], "not an aegpo checkpoint"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_before_anything_is_written(case, make_project, capsys):
    proj = make_project()
    mutate, args, message = CASES[case]
    if mutate:
        mutate(proj)
    before = _snapshot(proj)
    assert main(["pipeline", "train", "--project-dir", str(proj), *args]) == 2
    assert message in capsys.readouterr().err
    assert _snapshot(proj) == before and not (proj / "runs").exists()


def test_unreachable_s3_endpoint_is_named(make_project, capsys, monkeypatch):
    proj = make_project()
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AEGPO_STORAGE_URI", "s3://aegpo/runs")
    monkeypatch.setenv("AEGPO_S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AEGPO_S3_MAX_ATTEMPTS", "2")
    assert main(["pipeline", "train", "--project-dir", str(proj)]) == 2
    assert f"S3 endpoint {endpoint} is unreachable" in capsys.readouterr().err
    assert not (proj / "runs").exists()


def test_unreachable_tracking_server_is_named(make_project, capsys, monkeypatch):
    proj = make_project()
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["pipeline", "train", "--project-dir", str(proj)]) == 2
    assert f"MLflow tracking server {uri} is unreachable" in capsys.readouterr().err
    assert not (proj / "runs").exists()


def test_evaluating_a_folder_that_is_not_a_checkpoint(make_project, capsys):
    proj = make_project()
    (proj / "notours").mkdir()
    (proj / "notours" / "weights.bin").write_bytes(b"x")
    assert main(["pipeline", "evaluate", "--project-dir", str(proj), "--checkpoint", "notours"]) == 2
    assert "not an aegpo checkpoint" in capsys.readouterr().err


def test_a_run_folder_is_trained_by_one_process_at_a_time(tmp_path):
    # within one process the lock is shared (a session and its trainer); another process is refused
    lock = RunLock(tmp_path / "run")
    probe = subprocess.run([sys.executable, "-c", "import sys; from flows.session import RunLock; "
                            "RunLock(sys.argv[1])", str(tmp_path / "run")], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    assert probe.returncode != 0 and "in use by another process" in probe.stderr
    lock.close()
    RunLock(tmp_path / "run").close()
