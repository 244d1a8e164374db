"""MLflow: an experiment whose artifacts live elsewhere is refused clearly; a run that cannot log is FAILED."""

from __future__ import annotations

import pytest

from flows.tracking import Tracker, TrackingError


@pytest.fixture
def no_aws_credentials(monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "MLFLOW_S3_ENDPOINT_URL", "AEGPO_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def test_a_local_run_on_an_s3_experiment_is_refused_with_what_to_do(tmp_path, no_aws_credentials):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    Tracker(uri, "aegpo", "s3://bucket/mlflow").experiment_id  # an earlier run with S3 storage
    local = Tracker(uri, "aegpo", (tmp_path / "mlruns").as_uri())
    with pytest.raises(TrackingError, match="keeps its artifacts at s3://bucket/mlflow") as info:
        local.start_training_run("r", {"aegpo.run_dir": "x", "aegpo.fingerprint": "f"}, {"a": 1}, {"a": 1})
    assert "--experiment" in str(info.value)
    assert local.client.search_runs([local.client.get_experiment_by_name("aegpo").experiment_id]) == []


def test_a_run_whose_artifacts_cannot_be_written_is_marked_failed(tmp_path, no_aws_credentials):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "aegpo", "s3://bucket/mlflow")  # no credentials: every artifact write fails
    with pytest.raises(TrackingError, match="marked FAILED"):
        tracker.start_training_run("r", {"aegpo.run_dir": "x", "aegpo.fingerprint": "f"}, {"a": 1}, {"a": 1})
    runs = tracker.client.search_runs([tracker.experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
