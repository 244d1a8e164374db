"""scripts/check_dvc_lock.py (run by .ci/run): a lock that does not describe the checkout fails CI; a fresh
clone, which lacks DVC's cache, does not."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline_helpers import REPO

spec = importlib.util.spec_from_file_location("check_dvc_lock", REPO / "scripts" / "check_dvc_lock.py")
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)
DVC = str(Path(sys.executable).parent / "dvc")

STAGES = """
stages:
  make:
    cmd: python make.py
    deps: [make.py]
    params: [n]
    outs:
      - big.txt
      - report.txt:
          cache: false
  use:
    cmd: python -c "open('used.txt', 'w').write(open('big.txt').read())"
    deps: [big.txt]
    outs:
      - used.txt:
          cache: false
"""
MAKE = "import yaml\nn = yaml.safe_load(open('params.yaml'))['n']\nopen('big.txt', 'w').write('x' * n)\n" \
       "open('report.txt', 'w').write(str(n))\n"


def test_lock_check_passes_a_fresh_clone_and_fails_on_changed_code_params_or_reports(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "dvc.yaml").write_text(STAGES)
    (repo / "params.yaml").write_text("n: 3\n")
    (repo / "make.py").write_text(MAKE)
    subprocess.run([DVC, "init", "--no-scm", "-q"], cwd=repo, check=True)
    subprocess.run([DVC, "repro", "-q"], cwd=repo, check=True, capture_output=True)
    assert check.mismatches(check.dvc_status(repo)) == []

    # A fresh clone: what only DVC's cache held is missing, and that is no mismatch.
    (repo / "big.txt").unlink()
    shutil.rmtree(repo / ".dvc" / "cache")
    assert check.mismatches(check.dvc_status(repo)) == []

    (repo / "make.py").write_text(MAKE + "# changed\n")
    assert check.mismatches(check.dvc_status(repo)) == ["make: changed deps: make.py modified"]
    (repo / "make.py").write_text(MAKE)
    (repo / "params.yaml").write_text("n: 4\n")
    assert check.mismatches(check.dvc_status(repo)) == ["make: changed deps: params.yaml: n modified"]
    (repo / "params.yaml").write_text("n: 3\n")
    (repo / "report.txt").write_text("5")  # a report edited by hand
    assert check.mismatches(check.dvc_status(repo)) == ["make: changed outs: report.txt modified"]
    (repo / "report.txt").write_text("3")
    (repo / "dvc.yaml").write_text(STAGES.replace("cmd: python make.py", "cmd: python make.py --again"))
    assert check.mismatches(check.dvc_status(repo)) == ["make: changed command"]
