"""What a run prints: each S3 client resolves credentials, and botocore's notice of it is shown once."""

from __future__ import annotations

import logging

from aegpo.storage import StorageSettings, make_s3_client


def test_found_credentials_is_logged_once(caplog, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    settings = StorageSettings.from_env()
    with caplog.at_level(logging.INFO, logger="botocore.credentials"):
        for _ in range(4):  # a run makes one per store and MLflow more: each resolves the credentials again
            make_s3_client(settings)
    notices = [r for r in caplog.records if r.name == "botocore.credentials" and "Found credentials" in r.getMessage()]
    assert len(notices) == 1, [r.getMessage() for r in caplog.records]
    assert "testing" not in caplog.text  # the notice names the source, never the key
