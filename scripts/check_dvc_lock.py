#!/usr/bin/env python
"""Fail when the committed dvc.lock does not describe this checkout: CI's guard that the reported results
(reports/, README's numbers) come from the code, parameters and data they claim.

    .venv/bin/python scripts/check_dvc_lock.py        # exit 0: in sync; exit 1: lists what changed

It reads `dvc status --json` and reports a stage whose command, parameters or git-tracked dependencies changed
since the lock was written, or whose git-tracked outputs (reports/*, cache: false) differ from the lock. What a
fresh clone cannot have is not a mismatch: outputs only in DVC's cache ("not in cache", "deleted") and
dependencies that are such outputs. Fix a mismatch by running the pipeline (`bash scripts/main.sh`) and
committing dvc.lock with reports/ — never by `dvc commit` alone, which would record hashes of results that this
code did not produce. Takes seconds (hashes, no training).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ABSENT = ("not in cache", "deleted")  # what a fresh clone lacks by construction


def mismatches(status: dict[str, Any]) -> list[str]:
    """The lines of `dvc status --json` that say the lock does not describe the checkout."""
    found = []
    for stage, entries in status.items():
        for entry in entries:
            if isinstance(entry, str):  # "changed command", "always changed"
                found.append(f"{stage}: {entry}")
                continue
            for kind, changes in entry.items():
                for path, what in changes.items():
                    if isinstance(what, dict):  # params file: {key: "modified" | "new" | "deleted"}
                        found += [f"{stage}: {kind}: {path}: {key} {how}" for key, how in what.items()]
                    elif what not in ABSENT:
                        found.append(f"{stage}: {kind}: {path} {what}")
    return found


def dvc_status(repo: Path) -> dict[str, Any]:
    dvc = Path(sys.executable).parent / "dvc"
    proc = subprocess.run([str(dvc), "status", "--json"], cwd=repo, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"dvc status failed in {repo}:\n{proc.stderr}")
    return json.loads(proc.stdout or "{}")


def main() -> int:
    repo = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    found = mismatches(dvc_status(repo))
    if found:
        print(f"dvc.lock does not match {repo}:\n  " + "\n  ".join(found)
              + "\nRun the pipeline (bash scripts/main.sh) and commit dvc.lock and reports/.", file=sys.stderr)
        return 1
    print(f"dvc.lock matches {repo}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
