"""flows.calibration_tracking: the peak-direction calibration reaches MLflow as a param, metrics and its plot."""

from __future__ import annotations

from mlflow import MlflowClient

from aegpo.record import RoundRecord
from flows.calibration_tracking import log_peak_calibration
from flows.tracking import Tracker


def test_calibration_is_logged_once_with_its_plot(mlflow_db, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot = tmp_path / "critical-steps-abc.png"
    plt.plot([0, 1], [1, 0])
    plt.savefig(plot)
    plt.close()
    tracker = Tracker(mlflow_db, "exp", (tmp_path / "mlruns").as_uri())
    run_id = tracker.start_training_run("r", {"aegpo.run_dir": "runs/x", "aegpo.fingerprint": "f" * 64},
                                        {"train.rounds": 2}, {})
    cal = {"direction": "low", "reason": "negative", "rho": -0.79, "ci_low": -0.86, "ci_high": -0.75, "nfe": 5920,
           "plot": str(plot)}
    client = MlflowClient(mlflow_db)
    plain = RoundRecord.from_json({"round": 1, "nfe": 50, "reward_mean": 0.5, "plan": {"peak_direction": "low"}})
    assert not log_peak_calibration(client, run_id, plain)
    record = RoundRecord.from_json({"round": 0, "nfe": 100, "reward_mean": 0.5, "reward_std": 0.1, "per_prompt": [],
                                    "plan": {"peak_direction": "low", "peak_calibration": cal}})
    tracker.log_round(run_id, record)
    run = client.get_run(run_id)
    assert run.data.params["aegpo.peak_direction_resolved"] == "low"
    assert run.data.metrics["calibration/rho"] == -0.79 and run.data.metrics["calibration/nfe"] == 5920
    assert [a.path for a in client.list_artifacts(run_id, "calibration")] == ["calibration/critical-steps-abc.png"]
