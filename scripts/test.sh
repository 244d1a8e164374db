#!/usr/bin/env bash
# Set up (if needed) and run the test suite: the README's test command.
# Creates .venv with the CPU torch wheel (torch==2.13.0) and the locked dependencies, offline-safe.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true \
       DVC_NO_ANALYTICS=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0 -e '.[pipeline,dev]'
.venv/bin/ruff check .                       # lint: pyflakes, pycodestyle (120 columns), import order
# The default set (pyproject: not slow, not gpu); the long end-to-end runs: bash scripts/test.sh -m "slow and not gpu"
.venv/bin/python -m pytest -q "$@"
.venv/bin/python scripts/check_dvc_lock.py   # the committed dvc.lock describes this checkout (seconds)
