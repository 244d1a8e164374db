#!/usr/bin/env python
"""Check in a real headless browser that the MLflow UI shows a training run's reward curve.

Not part of the default test run (CI has no browser). Needs Chromium and its driver from Debian:

    apt-get install -y chromium chromium-driver
    .venv/bin/python scripts/check_mlflow_ui.py                      # the project's mlflow.db
    .venv/bin/python scripts/check_mlflow_ui.py --tracking-uri sqlite:////path/mlflow.db \\
        --screenshot docs/mlflow-reward-curve.png

It starts `mlflow server` on a free port, drives Chromium through chromedriver's WebDriver HTTP API
(plain urllib, no selenium), opens the newest aegpo training run's "Model metrics" page, filters the charts to
`reward/mean`, waits until that chart (a Plotly SVG whose legend names the metric) is drawn,
saves a screenshot, and exits 0 only if the chart was there.
Browser flags: --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage (root, no display).
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
import time
import urllib.error
import urllib.request
from pathlib import Path

from aegpo.local_server import free_port, wait_http

ROOT = Path(__file__).resolve().parents[1]
# The run page groups charts by metric prefix; a chart's legend reads "<run name> (<metric>)".
CHART_SCRIPT = """
const text = document.body ? document.body.innerText : "";
const charts = document.querySelectorAll("svg.main-svg, .js-plotly-plot");
return {hasMetric: text.includes("(" + arguments[0] + ")"), charts: charts.length, title: document.title};
"""
SEARCH_BOX = "input[placeholder*='Search metric']"


class WebDriver:
    """The few WebDriver (W3C) calls we need, over HTTP."""

    def __init__(self, url: str, browser: str, timeout: float = 120) -> None:
        self.url, self.timeout = url, timeout
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": browser,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000"]}}}}
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


def newest_training_run(tracking_uri: str, metric: str) -> tuple[str, str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], "tags.`aegpo.kind` = 'training'",
                                      order_by=["attributes.start_time DESC"]):
            if metric in run.data.metrics:
                return exp.experiment_id, run.info.run_id
    raise SystemExit(f"no aegpo training run with metric {metric!r} in {tracking_uri}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'mlflow.db'}")
    parser.add_argument("--metric", default="reward/mean")
    parser.add_argument("--screenshot", default=str(ROOT / "docs" / "mlflow-reward-curve.png"))
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for the chart")
    args = parser.parse_args()

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        print("needs chromium and chromedriver: apt-get install -y chromium chromium-driver", file=sys.stderr)
        return 2
    exp_id, run_id = newest_training_run(args.tracking_uri, args.metric)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    ui_port, wd_port = free_port(), free_port()
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    procs = [subprocess.Popen([mlflow_bin, "server", "--backend-store-uri", args.tracking_uri, "--host", "127.0.0.1",
                               "--port", str(ui_port), "--workers", "1"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True),
             subprocess.Popen([driver, f"--port={wd_port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    wd = None
    try:
        wait_http(f"http://127.0.0.1:{ui_port}/health", args.timeout * 3, procs[0])
        wait_http(f"http://127.0.0.1:{wd_port}/status", 30, procs[1])
        wd = WebDriver(f"http://127.0.0.1:{wd_port}", browser, timeout=args.timeout)
        page = f"http://127.0.0.1:{ui_port}/#/experiments/{exp_id}/runs/{run_id}/model-metrics"
        wd.get(page)
        deadline, seen, searched = time.monotonic() + args.timeout, {}, False
        while time.monotonic() < deadline:
            searched = searched or wd.type_into(SEARCH_BOX, args.metric)  # show only this metric's chart
            seen = wd.execute(CHART_SCRIPT, args.metric)
            if seen.get("hasMetric") and seen.get("charts"):
                break
            time.sleep(1)
        time.sleep(2)  # let the chart finish drawing before the screenshot
        wd.screenshot(Path(args.screenshot))
        ok = bool(seen.get("hasMetric") and seen.get("charts"))
        print(f"page {page}\n  title {seen.get('title')!r}; '{args.metric}' on the page: {seen.get('hasMetric')}; "
              f"chart elements: {seen.get('charts')}\n  screenshot: {args.screenshot}")
        print("OK: the MLflow UI shows the reward curve" if ok else "FAILED: no reward chart on the run page")
        return 0 if ok else 1
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


if __name__ == "__main__":
    sys.exit(main())
