#!/usr/bin/env bash
# Set up (if needed) and run the test suite: the README's test command.
# Creates .venv with torch==2.13.0 and the locked dependencies (scripts/setup_venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true \
       DVC_NO_ANALYTICS=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
source scripts/setup_venv.sh  # .venv with the project (uv; AEGPO_INSTALLER=pip for pip alone)
.venv/bin/ruff check .                       # lint: pyflakes, pycodestyle (120 columns), import order
# The default set (pyproject: not slow, not gpu); the long end-to-end runs: bash scripts/test.sh -m "slow and not gpu"
.venv/bin/python -m pytest -q "$@"
.venv/bin/python scripts/check_dvc_lock.py   # the committed dvc.lock describes this checkout (seconds)
