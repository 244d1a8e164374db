"""A storage endpoint that accepts connections and never answers: every operation ends by its deadline."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.storage import StorageError, StorageSettings, open_storage, redact_text, redact_url

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("operation", ["check", "put", "get", "list"])
def test_each_operation_gives_up_at_its_deadline(hung_endpoint, operation, monkeypatch):
    for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    settings = StorageSettings(endpoint_url=hung_endpoint, region="us-east-1", deadline=2.0, read_timeout=30.0)
    store = open_storage("s3://bucket/prefix", settings=settings)
    calls = {"check": store.check, "put": lambda: store.put_bytes("k", b"x" * 1000),
             "get": lambda: store.get_bytes("k"), "list": lambda: store.list("runs/")}
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=f"S3 endpoint {hung_endpoint} did not answer") as info:
        calls[operation]()
    elapsed = time.monotonic() - t0
    # the read timeout (30 s) alone would hang far longer: the operation deadline cut it
    assert info.value.transient and 1.5 < elapsed < 6, elapsed


def test_deadline_settings_come_from_the_environment():
    s = StorageSettings.from_env({"AEGPO_S3_CONNECT_TIMEOUT": "1.5", "AEGPO_S3_READ_TIMEOUT": "7",
                                  "AEGPO_S3_DEADLINE": "30", "AEGPO_S3_MIN_MBPS": "4"})
    assert (s.connect_timeout, s.read_timeout, s.deadline, s.min_mbps) == (1.5, 7, 30, 4)
    assert s.transfer_deadline(8_000_000) == pytest.approx(32)  # 8 MB at 4 MB/s on top
    d = StorageSettings.from_env({})
    assert (d.connect_timeout, d.read_timeout, d.deadline, d.max_attempts) == (5, 20, 60, 4)
    for bad in ("0", "-1", "inf", "nan", "soon"):
        with pytest.raises(StorageError, match="AEGPO_S3_DEADLINE"):
            StorageSettings.from_env({"AEGPO_S3_DEADLINE": bad})


def test_doctor_answers_within_30_s_against_a_hung_endpoint_and_prints_no_credential(hung_endpoint, tmp_path):
    port = hung_endpoint.rsplit(":", 1)[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "AEGPO_STORAGE_URI": "s3://bucket/x",
           "AEGPO_S3_ENDPOINT_URL": hung_endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "MLFLOW_TRACKING_URI": f"http://alice:hunter2@127.0.0.1:{port}",
           "MLFLOW_S3_ENDPOINT_URL": f"http://bob:sekrit@127.0.0.1:{port}"}
    env.pop("AEGPO_S3_DEADLINE", None)  # the defaults must do it
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "aegpo.cli", "pipeline", "doctor", "--project-dir", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    elapsed = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert elapsed < 30, elapsed
    assert f"S3 endpoint {hung_endpoint} did not answer" in proc.stderr
    assert "Traceback" not in out
    assert "hunter2" not in out and "sekrit" not in out
    assert "alice:***@" in out and "bob:***@" in out


def test_credentials_in_urls_are_redacted():
    assert redact_url("https://user:pw@minio.local:9000/x") == "https://user:***@minio.local:9000/x"
    assert redact_url("http://token@host") == "http://***@host"
    assert redact_url("http://127.0.0.1:9000") == "http://127.0.0.1:9000"
    text = 'Could not connect to the endpoint URL: "http://k:s3cr3t@10.0.0.1:9000/bucket"'
    assert "s3cr3t" not in redact_text(text) and "http://k:***@10.0.0.1:9000/bucket" in redact_text(text)
    settings = StorageSettings(uri="s3://b/p", endpoint_url="http://k:s3cr3t@10.0.0.1:9000")
    assert "s3cr3t" not in settings.describe()
    store = open_storage("s3://b/p", settings=settings)
    assert "s3cr3t" not in store.endpoint
