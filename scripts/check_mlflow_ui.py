#!/usr/bin/env python
"""Check in a real headless browser what a person sees of a training run in the MLflow UI; save screenshots.

Not part of the default test run (CI has no browser). Needs Chromium and its driver from Debian:

    apt-get install -y chromium chromium-driver
    .venv/bin/python scripts/check_mlflow_ui.py                      # the project's mlflow.db → docs/mlflow-*.png
    .venv/bin/python scripts/check_mlflow_ui.py --tracking-uri sqlite:////path/mlflow.db --out-dir /tmp/shots

It starts `mlflow server` on a free port, drives Chromium through chromedriver's WebDriver HTTP API
(plain urllib, no selenium) and checks, on the newest aegpo training run:

1. training view: the experiment opens on its Runs table under "Model training", not MLflow 3's GenAI
   view (traces, "Detect Issues", "Evaluation runs"), from the link we print (`?workflowType=machine_learning`);
2. reward curve: the run's "Model metrics" page draws the `reward/mean` chart;
3. Entropy(t) plot: the run's artifact viewer shows the last `plots/entropy_t/round-NNNN.png`;
4. sample grid: the final evaluation's `samples/eval_grid.png` shows, as wide as the captioned grid;
5. allocation table: the experiment's table view lists `tables/allocation.json` with its columns.

Each check saves a screenshot (docs/mlflow-<check>.png) and the script exits 0 only if all passed.
Browser flags: headless, no sandbox (root, no display), no GPU, no QUIC, no first-run, background networking,
component updates or sync, and a new empty profile folder.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from flows.local_server import free_port, wait_http

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = "workflowType=machine_learning"  # MLflow 3.17's UI follows this switch, not the experiment's kind tag
# The run page groups charts by metric prefix; a chart's legend reads "<run name> (<metric>)".
CHART_SCRIPT = """
const text = document.body ? document.body.innerText : "";
const charts = document.querySelectorAll("svg.main-svg, .js-plotly-plot");
return {ok: text.includes("(" + arguments[0] + ")") && charts.length > 0, charts: charts.length};
"""
TEXT_SCRIPT = """
const text = document.body ? document.body.innerText : "";
const want = arguments[0].filter(w => !text.includes(w));
const banned = arguments[1].filter(w => text.includes(w));
return {ok: want.length === 0 && banned.length === 0, missing: want, present: banned};
"""
# An artifact image is drawn once its <img> has loaded; its natural width tells the grid from a thumbnail.
IMAGE_SCRIPT = """
const imgs = Array.from(document.querySelectorAll("img")).filter(i => i.complete && i.naturalWidth > 0);
const big = imgs.filter(i => i.naturalWidth >= arguments[0]);
return {ok: big.length > 0, widths: imgs.map(i => i.naturalWidth),
        text: document.body.innerText.includes(arguments[1])};
"""
SEARCH_BOX = "input[placeholder*='Search metric']"
BROWSER_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1800,1100"]


class WebDriver:
    """The few WebDriver (W3C) calls we need, over HTTP."""

    def __init__(self, url: str, browser: str, profile: str, timeout: float = 120) -> None:
        self.url, self.timeout = url, timeout
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": browser, "args": [*BROWSER_FLAGS, f"--user-data-dir={profile}"]}}}}
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            return json.loads(resp.read())["value"]

    def get(self, url: str) -> None:
        self._call("POST", f"/session/{self.session}/url", {"url": url})

    def execute(self, script: str, *args) -> dict:
        return self._call("POST", f"/session/{self.session}/execute/sync", {"script": script, "args": list(args)})

    def type_into(self, css: str, text: str) -> bool:
        """Type `text` into the first element matching `css`; False if there is none (yet)."""
        try:
            found = self._call("POST", f"/session/{self.session}/element", {"using": "css selector", "value": css})
        except urllib.error.HTTPError:
            return False
        element = next(iter(found.values()))
        self._call("POST", f"/session/{self.session}/element/{element}/value", {"text": text})
        return True

    def screenshot(self, path: Path) -> None:
        png = base64.b64decode(self._call("GET", f"/session/{self.session}/screenshot"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)

    def quit(self) -> None:
        try:
            self._call("DELETE", f"/session/{self.session}")
        except (urllib.error.URLError, OSError):
            pass

    def wait_for(self, script: str, *args, timeout: float, each=None) -> dict:
        """Run `script` until it returns {'ok': true} or `timeout` passes; `each()` runs before every try."""
        deadline, seen = time.monotonic() + timeout, {}
        while time.monotonic() < deadline:
            if each is not None:
                each()
            seen = self.execute(script, *args)
            if seen.get("ok"):
                time.sleep(2)  # let drawing finish before a screenshot
                return seen
            time.sleep(1)
        return seen


def find_runs(tracking_uri: str, metric: str) -> dict[str, str]:
    """The newest aegpo training run with `metric`, its experiment, last Entropy(t) plot and final eval child."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], "tags.`aegpo.kind` = 'training'",
                                      order_by=["attributes.start_time DESC"]):
            if metric not in run.data.metrics:
                continue
            rid = run.info.run_id
            plots = sorted(a.path for a in client.list_artifacts(rid, "plots/entropy_t"))
            evals = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{rid}'",
                                       order_by=["attributes.start_time DESC"])
            grid = next((e for e in evals if any(a.path == "samples/eval_grid.png"
                                                 for a in client.list_artifacts(e.info.run_id, "samples"))), None)
            if not plots or grid is None:
                raise SystemExit(f"run {rid} has no Entropy(t) plot or no evaluation with a sample grid")
            width = grid_width(client, grid.info.run_id)
            last_round = max(m.step for m in client.get_metric_history(rid, metric))
            return {"experiment": exp.experiment_id, "run": rid, "run_name": run.info.run_name, "plot": plots[-1],
                    "last_round": str(last_round),
                    "eval_run": grid.info.run_id, "grid_width": str(width)}
    raise SystemExit(f"no aegpo training run with metric {metric!r} in {tracking_uri}")


def grid_width(client, run_id: str) -> int:
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        with Image.open(client.download_artifacts(run_id, "samples/eval_grid.png", tmp)) as img:
            return img.width


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'mlflow.db'}")
    parser.add_argument("--metric", default="reward/mean")
    parser.add_argument("--out-dir", default=str(ROOT / "docs"), help="where the screenshots go")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for each page")
    args = parser.parse_args()

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        print("needs chromium and chromedriver: apt-get install -y chromium chromium-driver", file=sys.stderr)
        return 2
    found = find_runs(args.tracking_uri, args.metric)
    out = Path(args.out_dir)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    ui_port, wd_port = free_port(), free_port()
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    procs = [subprocess.Popen([mlflow_bin, "server", "--backend-store-uri", args.tracking_uri, "--host", "127.0.0.1",
                               "--port", str(ui_port), "--workers", "1"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True),
             subprocess.Popen([driver, f"--port={wd_port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    wd, profile, results = None, tempfile.mkdtemp(prefix="aegpo-chromium-"), []
    try:
        wait_http(f"http://127.0.0.1:{ui_port}/health", args.timeout * 3, procs[0])
        wait_http(f"http://127.0.0.1:{wd_port}/status", 30, procs[1])
        wd = WebDriver(f"http://127.0.0.1:{wd_port}", browser, profile, timeout=args.timeout)
        base = f"http://127.0.0.1:{ui_port}/#/experiments/{found['experiment']}"
        run = f"{base}/runs/{found['run']}"

        def check(name: str, url: str, script: str, *script_args, each=None) -> None:
            wd.get(url)
            seen = wd.wait_for(script, *script_args, timeout=args.timeout, each=each)
            shot = out / f"mlflow-{name}.png"
            wd.screenshot(shot)
            results.append((name, bool(seen.get("ok")), url, seen, shot))

        check("training-view", f"{base}/runs?{WORKFLOW}", TEXT_SCRIPT,
              ["Model training", "Runs", found["run_name"]], ["Detect Issues", "Evaluation runs", "Sessions"])
        searched = []
        check("reward-curve", f"{run}/model-metrics?{WORKFLOW}", CHART_SCRIPT, args.metric,
              each=lambda: searched or (wd.type_into(SEARCH_BOX, args.metric) and searched.append(True)))
        check("entropy-plot", f"{run}/artifacts/{found['plot']}?{WORKFLOW}", IMAGE_SCRIPT, 300, found["plot"])
        check("eval-grid", f"{base}/runs/{found['eval_run']}/artifacts/samples/eval_grid.png?{WORKFLOW}",
              IMAGE_SCRIPT, int(found["grid_width"]), "eval_grid.png")
        check("allocation-table", f"{base}/runs?{WORKFLOW}&compareRunsMode=ARTIFACT", TEXT_SCRIPT,
              ["tables/allocation.json", "delta_entropy", f"r{found['last_round']} "], [])
    finally:
        if wd is not None:
            wd.quit()
        os.killpg(procs[0].pid, signal.SIGTERM)  # mlflow server and its workers
        procs[1].terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(profile, ignore_errors=True)
    for name, ok, url, seen, shot in results:
        detail = {k: v for k, v in seen.items() if k != "ok"}
        print(f"{'OK    ' if ok else 'FAILED'} {name}: {url}\n       {detail}; screenshot {shot}")
    return 0 if results and all(ok for _, ok, *_ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
