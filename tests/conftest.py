"""Shared fixtures: offline settings and a tiny random-weight base checkpoint."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import pytest  # noqa: E402

from aegpo_testing import tiny_policy  # noqa: E402


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A base checkpoint folder of a 2-layer random policy."""
    from aegpo.checkpoint import save_base

    path = tmp_path_factory.mktemp("ckpt") / "tiny-base"
    save_base(tiny_policy(), path, {"note": "random weights for tests"})
    return path
