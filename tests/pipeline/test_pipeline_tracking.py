"""flows.tracking: metric names and steps, run reuse on resume, unreachable servers."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
from mlflow import MlflowClient

from aegpo.record import RoundRecord
from flows.tracking import Tracker, TrackingError, allocation_table, check_tracking, round_metrics

from pipeline_helpers import free_port

RECORD = RoundRecord.from_json({
    "round": 3, "nfe": 1200, "rollout_nfe": 300, "probe_nfe": 40, "reward_mean": 0.5, "reward_std": 0.1,
    "reward_dense": 0.6, "reward_strict": 0.4, "adv_abs_mean": 0.7, "num_samples": 6, "loss": 0.01, "kl": 0.0,
    "clip_frac": 0.2, "grad_norm": 1.5, "sde_steps_per_sample": 2.0, "train_steps_per_sample": 2.0,
    "seconds_sample": 1.0, "seconds_optimize": 2.0, "entropy_t": [4.0, 4.1, 4.2],
    "per_prompt": [{"prompt": "a red circle", "prompt_id": 5, "group_size": 4, "reward_mean": 0.5, "reward_std": 0.1},
                   {"prompt": "two blue squares", "prompt_id": 9, "group_size": 2, "reward_mean": 0.5,
                    "reward_std": 0.0}],
    "plan": {"delta_entropy": [0.3, 0.1], "base_entropy": [4.0, 4.1], "current_entropy": [4.3, 4.2],
             "group_sizes": [4, 2], "chosen_steps": [[0, 1], [1, 2]]},
})


def test_round_metrics_cover_the_round():
    m = round_metrics(RECORD)
    assert m["reward/mean"] == 0.5 and m["reward/strict"] == 0.4 and m["nfe/cumulative"] == 1200
    assert m["entropy/delta_mean"] == pytest.approx(0.2) and m["entropy/delta_max"] == pytest.approx(0.3)
    assert (m["group_size/min"], m["group_size/max"], m["group_size/mean"]) == (2, 4, 3)
    assert m["steps/chosen_mean"] == 1.0 and m["policy/clip_frac"] == 0.2 and m["time/optimize_s"] == 2.0
    table = allocation_table(RECORD)
    assert table["delta_entropy"] == [0.3, 0.1] and table["chosen_steps"] == ["0 1", "1 2"]
    grpo = round_metrics(replace(RECORD, plan={}))
    assert "entropy/delta_mean" not in grpo and grpo["group_size/max"] == 4


def test_runs_are_reused_by_tags_and_children_by_label(mlflow_db, tmp_path):
    tracker = Tracker(mlflow_db, "exp", (tmp_path / "mlruns").as_uri())
    tags = {"aegpo.run_dir": "runs/train/x", "aegpo.fingerprint": "f" * 64, "aegpo.kind": "training"}
    parent = tracker.start_training_run("x", tags, {"train.rounds": 3, "model.lora.rank": 4}, {"train": {}})
    tracker.log_round(parent, RECORD, np.zeros((6, 8, 8, 3), np.uint8), media=True)
    tracker.finish(parent, "FAILED")
    assert tracker.start_training_run("x", tags, {}, {}) == parent  # a resumed run continues its curves
    assert tracker.start_training_run("x", {**tags, "aegpo.fingerprint": "e" * 64}, {}, {}) != parent
    result = {"strict": 0.25, "dense": 0.5, "reward": 0.4, "nfe": 10, "rows": [{"prompt": "p", "reward": 0.4}],
              "samples_per_prompt": 2}
    child = tracker.log_evaluation(parent, "round-0003", 3, result, np.zeros((2, 8, 8, 3), np.uint8))
    assert tracker.log_evaluation(parent, "round-0003", 3, result) == child
    client = MlflowClient(mlflow_db)
    assert client.get_run(parent).data.params["model.lora.rank"] == "4"
    assert client.get_run(parent).info.status == "RUNNING"
    assert [m.step for m in client.get_metric_history(parent, "eval/strict")] == [3, 3]
    assert client.get_run(child).data.tags["mlflow.parentRunId"] == parent
    assert len(client.search_runs([tracker.experiment_id])) == 3


def test_unreachable_tracking_server_is_named():
    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(TrackingError, match=f"MLflow tracking server {uri} is unreachable after 2 attempts"):
        check_tracking(uri, attempts=2, delay=0.1)
    assert time.monotonic() - t0 < 10
    check_tracking("sqlite:///x.db")  # a file store needs no server
