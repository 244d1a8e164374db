"""A tiny training run against a real S3-compatible server on 127.0.0.1 (moto's server mode): the
run's artifacts, MLflow's artifacts and a DVC remote all on the same store; a second machine (no
local run folder) resumes from what the store holds."""

from __future__ import annotations

import os
import shutil

import pytest
from mlflow import MlflowClient


def _keys(client, bucket: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.mark.slow  # two flow runs against moto S3
def test_tiny_run_on_s3_with_mlflow_and_dvc(prefect_api, s3_bucket, make_project, monkeypatch):
    from flows.train import train_flow

    endpoint, bucket, client = s3_bucket
    proj = make_project(rounds=2, eval_every=2)
    monkeypatch.setenv("AEGPO_STORAGE_URI", f"s3://{bucket}/aegpo")
    monkeypatch.setenv("AEGPO_S3_ENDPOINT_URL", endpoint)  # MLflow's endpoint defaults to it
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    tracking = f"sqlite:///{proj / 'mlflow.db'}"
    summary = train_flow(project_dir=str(proj), tracking_uri=tracking, export_dir="artifacts/train")
    run = f"aegpo/{summary['run_dir']}"
    keys = _keys(client, bucket)
    for r in range(2):
        for name in ("images.png", "rewards.parquet", "rollouts.parquet"):
            assert f"{run}/rounds/round-{r:04d}/{name}" in keys
        assert f"{run}/rounds/round-{r:04d}.json" in keys
    assert not any(k.endswith("transitions.safetensors") for k in keys)
    assert f"{run}/checkpoint/MANIFEST.json" in keys and f"{run}/state/MANIFEST.json" in keys
    assert not any(k.startswith("aegpo/cache/profiles/") for k in keys)  # profiled lazily, cached per prompt
    assert any((proj / "cache" / "profiles").glob("base-entropy-store-*/part-*.parquet"))
    assert any(k.startswith("aegpo/mlflow/") and k.endswith("checkpoint/denoiser.safetensors") for k in keys)
    assert not any(k.startswith("aegpo/mlflow/") for k in os.listdir(proj) if k == "mlruns")

    # Another machine: no local run folder. The run resumes from the stored state and goes on.
    shutil.rmtree(proj / "runs")
    more = train_flow(project_dir=str(proj), overrides=["train.rounds=3"], tracking_uri=tracking)
    assert more["rounds"] == 3 and more["mlflow_run_id"] == summary["mlflow_run_id"]
    assert f"{run}/rounds/round-0002/rollouts.parquet" in _keys(client, bucket)
    steps = [m.step for m in MlflowClient(tracking).get_metric_history(more["mlflow_run_id"], "reward/mean")]
    assert steps == [0, 1, 2]

    # DVC remote on the same store (DVC's API in-process: a dvc subprocess costs seconds each).
    from dvc.repo import Repo

    repo = Repo.init(str(proj), no_scm=True)
    with repo.config.edit() as conf:
        conf["remote"]["store"] = {"url": f"s3://{bucket}/dvc", "endpointurl": endpoint}
        conf["core"]["remote"] = "store"
    repo = Repo(str(proj))
    repo.add(str(proj / "artifacts" / "train" / "checkpoint"))
    assert repo.push() >= 2
    assert any(k.startswith("dvc/files/md5/") for k in _keys(client, bucket))
