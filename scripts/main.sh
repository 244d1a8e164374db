#!/usr/bin/env bash
# The main job: set up (if needed) and run the aegpo pipeline on the built-in defaults, then print the
# before/after eval accuracy and where to look.
#
#   bash scripts/main.sh            # dvc repro evaluate: prompts → (frozen) base → train → evaluate
#   bash scripts/main.sh --flow     # the training flow directly (no DVC), then the evaluation flow
#
# Nothing to set up by hand: a Prefect server is started for the duration of the job (its history
# stays in .prefect/), MLflow writes to mlflow.db, artifacts go to the project folder (or to
# AEGPO_STORAGE_URI, see docs/pipeline.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false \
       MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true DVC_NO_ANALYTICS=1 \
       PREFECT_HOME="${PREFECT_HOME:-$ROOT/.prefect}" PREFECT_LOGGING_EXTRA_LOGGERS=aegpo \
       PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED=true PREFECT_SERVER_LOGS_STREAM_PUBLISHING_ENABLED=true

source scripts/setup_venv.sh  # .venv with the project (uv; AEGPO_INSTALLER=pip for pip alone)
export PATH="$ROOT/.venv/bin:$PATH"

# One Prefect server for every stage (a stage alone would start a temporary one, ~10 s each).
if [ -z "${PREFECT_API_URL:-}" ]; then
  PORT="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  mkdir -p "$PREFECT_HOME"
  # The UI asks PREFECT_UI_API_URL for its API, else 127.0.0.1:4200 whatever --port says ("Can't connect").
  PREFECT_UI_API_URL="http://127.0.0.1:$PORT/api" \
    prefect server start --host 127.0.0.1 --port "$PORT" > "$PREFECT_HOME/server.log" 2>&1 &
  SERVER_PID=$!
  trap 'kill "$SERVER_PID" 2>/dev/null || true' EXIT
  export PREFECT_API_URL="http://127.0.0.1:$PORT/api"
  for _ in $(seq 1 240); do
    python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "$PREFECT_API_URL/health" \
      2>/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$PREFECT_HOME/server.log"; exit 1; }
    sleep 0.5
  done
  echo "Prefect server for this job (UI while it runs): ${PREFECT_API_URL%/api}"
fi

if [ "${1:-}" = "--flow" ]; then
  python -m aegpo.cli pipeline train --export artifacts/train --reports reports
  python -m aegpo.cli pipeline evaluate --checkpoint artifacts/train/checkpoint --out reports/eval.json
else
  dvc repro evaluate  # not the `profile` stage: training profiles what it needs (the full profile is for spare GPUs)
fi

python - <<'PY'
import json
from pathlib import Path

train = json.loads(Path("reports/train_metrics.json").read_text())
final = json.loads(Path("reports/eval.json").read_text())
base = train.get("base_eval") or {}
print(f"\n== aegpo ({train['strategy']}): {train['rounds']} rounds, {train['nfe']} denoiser evaluations ==")
for key in [k for k in final if k != "eval_nfe"]:  # the reward's metrics, headline first
    before = base.get(key)
    print(f"eval {key:6s}: {before if before is None else f'{before:.3f}'} (base) -> {final[key]:.3f} (trained)")
if train.get("seconds_to_first_round") is not None:
    print(f"time to first round: {train['seconds_to_first_round']:.1f} s (model loading, calibration, base eval, "
          "round 0; base-entropy probes are lazy)")
cal = train.get("peak_calibration")
num = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731 - a one-line formatter
if train.get("peak_direction"):
    print(f"explored steps: Entropy(t) {'maxima' if train['peak_direction'] == 'high' else 'minima'} "
          f"(peak_direction {train['peak_direction']}" + (
              f", chosen by the auto calibration: Spearman rho {num(cal['rho'])}, 95% CI {num(cal['ci_low'])} .. "
              f"{num(cal['ci_high'])} over {cal['prompts']} prompts, {cal['nfe']:,} NFE; {cal['reason']})"
              if cal else ")"))
PY
# The experiment's id for a direct link (MLflow 3's UI opens its GenAI view unless the link says workflowType).
EXP="$(python -c 'import sqlite3; print(sqlite3.connect("mlflow.db").execute(
    "select experiment_id from experiments where name = '"'aegpo'"'").fetchone()[0])' 2>/dev/null || true)"
cat <<EOF

Where to look (with the venv active: source .venv/bin/activate):
  MLflow UI    mlflow ui --backend-store-uri sqlite:///$ROOT/mlflow.db
               → http://127.0.0.1:5000/#/experiments/${EXP:-0}/runs?workflowType=machine_learning
               (the training view; experiment "aegpo": reward and eval curves, the allocation table, Entropy(t)
               plots, captioned sample grids, the LoRA checkpoint)
  DVC          dvc metrics show; dvc plots show (→ dvc_plots/index.html, works offline)
               dvc exp show --only-changed --drop 'Created|State|Executor' --md \\
                 --keep 'strict|dense|base_eval\.strict|nfe|train\.strategy|train\.rounds'
  Prefect UI   PREFECT_HOME=$PREFECT_HOME PREFECT_UI_API_URL=http://127.0.0.1:4200/api prefect server start --port 4200
               → http://127.0.0.1:4200 (another port: set PREFECT_UI_API_URL to match, else the UI shows
               "Can't connect to Server API"). Flow runs aegpo-train / round-NNNN with their states, artifacts
               "aegpo-round-summary", "aegpo-entropy-allocation", "aegpo-run-summary"
  Files        reports/ (metrics, plot CSVs), artifacts/train/ (LoRA checkpoint, rollouts tables),
               runs/train/<strategy>-<fingerprint>/ (rounds, evals, resumable state)
EOF
