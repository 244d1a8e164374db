"""`aegpo bench scaling` on a tiny run: both world sizes run, the summary has its fields and the weights agree.

The speed goal (≥ 1.6× images/s on 2 ranks) is not asserted here: it needs a quiet machine
(benchmarks/results/scaling holds the committed measurement)."""

from __future__ import annotations

import json
import sys

import pytest

from dist_helpers import run_ok


@pytest.mark.slow
def test_scaling_bench_on_a_tiny_run(make_dist_project):
    proj = make_dist_project()
    out = proj / "scaling"
    run_ok([sys.executable, "-m", "aegpo.cli", "bench", "scaling", "--out", str(out), "--rounds", "2"], proj,
           timeout=600)
    s = json.loads((out / "summary.json").read_text())
    assert s["ranks"] == [1, 2] and s["speedup"][0] == 1.0
    assert all(v > 0 for v in s["images_per_s"] + s["seconds_per_round"])
    assert s["max_abs_diff"][0] == 0.0 and s["max_abs_diff"][1] <= 1e-5
    assert s["settings"]["images_per_round"] == 12 and s["settings"]["timed_rounds"] == 1
    assert "cores" in s["machine"] and (out / "table.md").read_text().count("|") > 10
