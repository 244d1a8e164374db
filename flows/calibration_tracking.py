"""MLflow record of the `aegpo.peak_direction: auto` calibration (aegpo/bench/critical_steps.py).

Called from `Tracker.log_round` with the parent run's id and each round record; acts only on the
record that carries the calibration (`plan.peak_calibration`, round 0 of a run). The direction it
chose becomes the param `aegpo.peak_direction_resolved`, its evidence the metrics `calibration/*`,
and its plot (Entropy(t) beside the reward spread of SDE at each step) the artifact
`calibration/critical_steps.png`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def log_peak_calibration(client, run_id: str, record: dict[str, Any]) -> bool:
    """Log the calibration carried by `record` to run `run_id`; returns whether there was one."""
    cal = (record.get("plan") or {}).get("peak_calibration")
    if not cal:
        return False
    client.log_param(run_id, "aegpo.peak_direction_resolved", cal["direction"])
    client.log_param(run_id, "aegpo.peak_calibration_reason", str(cal.get("reason", ""))[:500])
    for key in ("rho", "ci_low", "ci_high", "nfe"):
        if cal.get(key) is not None:  # undefined correlation (a constant curve) stays unlogged
            client.log_metric(run_id, f"calibration/{key}", float(cal[key]), step=record["round"])
    plot = cal.get("plot")
    if plot and Path(plot).is_file():
        client.log_artifact(run_id, plot, "calibration")
    return True
