"""Fixtures of the pipeline tests: a Prefect server, an S3 server (moto), MLflow stores, tiny projects.

One Prefect server is started for the whole session (≈10 s) and every flow, in-process or in a
subprocess, talks to it through PREFECT_API_URL; PREFECT_HOME is a temporary folder, set before
Prefect is imported. Nothing here needs the network or a GPU.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

_HOME = tempfile.mkdtemp(prefix="aegpo-test-prefect-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)  # after the session's server has stopped
os.environ["PREFECT_HOME"] = _HOME  # before anything imports prefect
for _var in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "AEGPO_STORAGE_URI", "AEGPO_S3_ENDPOINT_URL",
             "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL", "AWS_PROFILE"):
    os.environ.pop(_var, None)
os.environ.update({"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
                   "DO_NOT_TRACK": "true", "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1",
                   "TRANSFORMERS_OFFLINE": "1", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1", "PREFECT_LOGGING_LEVEL": "WARNING",
                   # the server streams flow-run logs to `prefect deployment run --watch` (as scripts/main.sh sets)
                   "PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED": "true",
                   "PREFECT_SERVER_LOGS_STREAM_PUBLISHING_ENABLED": "true"})

import pytest  # noqa: E402

from pipeline_helpers import EVAL_PROMPTS, TRAIN_PROMPTS, VENV_BIN, free_port, tiny_params, wait_http  # noqa: E402


@pytest.fixture
def make_project(tiny_base, tmp_path):
    """make_project(name, **params) → a project folder with params.yaml and prompt files."""

    def make(name: str = "proj", **extra: object) -> Path:
        proj = tmp_path / name
        (proj / "data").mkdir(parents=True, exist_ok=True)
        (proj / "data" / "train.txt").write_text("\n".join(TRAIN_PROMPTS) + "\n")
        (proj / "data" / "eval.txt").write_text("\n".join(EVAL_PROMPTS) + "\n")
        (proj / "params.yaml").write_text(tiny_params(tiny_base, **extra))
        return proj

    return make


@pytest.fixture(scope="session")
def prefect_server():
    """A real `prefect server start` on 127.0.0.1 for the session; yields its API URL."""
    port = free_port()
    log = open(Path(_HOME) / "server.log", "wb")
    proc = subprocess.Popen([str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_http(url + "/health", 300, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def prefect_api(prefect_server):
    """In-process flows report to the session's server (instead of starting a temporary one)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        os.environ["PREFECT_API_URL"] = prefect_server
        try:
            yield prefect_server
        finally:
            _drain_prefect()
            os.environ.pop("PREFECT_API_URL", None)


def _drain_prefect() -> None:
    """Send buffered logs and events now, while the server is up (not at exit, when it is gone)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server mode on 127.0.0.1 (in-memory); yields the endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, request):
    """A fresh bucket on the moto server; yields (endpoint, bucket name, boto3 client)."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    name = "aegpo-" + "".join(c for c in request.node.name.lower() if c.isalnum())[:40]
    client.create_bucket(Bucket=name)
    return s3_endpoint, name, client


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory):
    """An MLflow SQLite store migrated once (first use costs seconds); copy it per test."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_db(mlflow_template, tmp_path):
    """A tracking URI of a fresh, already migrated SQLite store."""
    path = tmp_path / "mlflow.db"
    shutil.copy(mlflow_template, path)
    return f"sqlite:///{path}"
