"""scripts/critical_steps.py: one SDE step per run, groups sharing their initial noise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path, *overrides: str) -> list[dict]:
    out = tmp_path / "rows.json"
    args = [sys.executable, "scripts/critical_steps.py", "--prompts", "3", "--group", "3", "--out", str(out),
            "-S", "sampler.num_steps=4", "-S", "aegpo.peaks_k=2"]
    for o in overrides:
        args += ["-S", o]
    subprocess.run(args, cwd=ROOT, check=True, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(out.read_text())


def test_noise_free_groups_have_no_spread_and_noisy_ones_do(tmp_path):
    quiet = _run(tmp_path, "sampler.noise_level=0")
    assert [r["step"] for r in quiet] == [0, 1, 2, 3]
    # η = 0: every step is the ODE, so a group that shares its initial noise is one image repeated
    assert all(r["group_std"] == 0.0 and r["groups_with_spread"] == 0.0 for r in quiet)
    assert len({round(r["reward_mean"], 9) for r in quiet}) == 1
    noisy = _run(tmp_path, "sampler.noise_level=1.0")
    assert noisy[0]["group_std"] > 0  # noise at σ = 1 changes what the base draws
    assert all(r["entropy"] > 0 for r in noisy)
