"""aegpo.conventions against aegpo.samplers: Flow-GRPO's log-prob and KL, restated from their formulas, relate to
ours by the documented per-step factors; the presets hold the values those factors give."""

from __future__ import annotations

import math
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from aegpo import conventions
from aegpo.config import load_params
from aegpo.samplers import kl_to_reference, mean_and_std, sigma_schedule, step

REPO = Path(__file__).resolve().parents[1]


def _theirs_cps_log_prob(prev, mean):
    return -((prev - mean) ** 2).mean(dim=tuple(range(1, prev.ndim)))  # no 1/(2 s²), no constants


@pytest.mark.parametrize("t", [0, 3, 8])
def test_cps_log_ratio_is_2_std_squared_times_ours(t):
    g = torch.Generator().manual_seed(t)
    sig = sigma_schedule(10, 3.0)
    x, v_old, dv = (torch.randn(4, 3, 8, 8, generator=g) for _ in range(3))
    v_new = v_old + 0.3 * dv  # a large step: float32 log-probs, so the ratio must stand out of rounding
    s, sn, a = sig[t], sig[t + 1], 0.8
    old = step("cps", x, v_old, s, sn, a, generator=g)
    new = step("cps", x, v_new, s, sn, a, prev=old.prev)
    std = conventions.transition_std("cps", float(s), float(sn), a, float(sig[1]))
    assert old.std[0].item() == pytest.approx(std, rel=1e-6)
    ours = new.log_prob - old.log_prob
    mean_new, _ = mean_and_std("cps", x, v_new, s, sn, a)
    theirs = _theirs_cps_log_prob(old.prev, mean_new) - _theirs_cps_log_prob(old.prev, old.mean)
    torch.testing.assert_close(theirs, 2 * std**2 * ours, rtol=1e-3, atol=1e-6)
    eq = conventions.equivalents("cps", a, 10, 3.0, 1e-5, 0.0, [t])[0]
    assert eq.clip_range == pytest.approx(1e-5 / (2 * std**2))
    # Their clip boundary ρ_F = 1 + ε is our ρ = clip_high.
    assert math.exp(2 * std**2 * math.log(eq.clip_high)) == pytest.approx(1 + 1e-5, abs=1e-12)


@pytest.mark.parametrize("t", [0, 4, 8])
def test_flow_kl_is_minus_dsigma_times_ours(t):
    g = torch.Generator().manual_seed(10 + t)
    sig = sigma_schedule(10, 3.0)
    x, v, v_ref = (torch.randn(2, 3, 8, 8, generator=g) for _ in range(3))
    s, sn, a, smax = sig[t], sig[t + 1], 0.7, float(sig[1])
    mean, std = mean_and_std("flow", x, v, s, sn, a, smax)
    ref, _ = mean_and_std("flow", x, v_ref, s, sn, a, smax)
    ours = kl_to_reference(mean, ref, std)
    coeff = a * math.sqrt(float(s) / (1 - (smax if float(s) >= 1 else float(s))))  # their std_dev_t
    theirs = ((mean - ref) ** 2).mean(dim=(1, 2, 3)) / (2 * coeff**2)
    torch.testing.assert_close(theirs, float(s - sn) * ours, rtol=1e-4, atol=0)
    assert std.flatten()[0].item() == pytest.approx(conventions.transition_std("flow", float(s), float(sn), a, smax))
    eq = conventions.equivalents("flow", a, 10, 3.0, 1e-4, 0.04, [t])[0]
    assert eq.kl_beta == pytest.approx(0.04 * float(s - sn)) and eq.clip_range == 1e-4


def _preset(name: str) -> list[str]:
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "preset.py"), name], capture_output=True, text=True,
                         check=True).stdout
    return shlex.split(out)[1::2]


def test_presets_are_valid_and_hold_the_converted_values():
    geneval = load_params(REPO / "params.yaml", _preset("flow-grpo-geneval-sd3"))
    rows = conventions.equivalents("flow", 0.7, 10, 3.0, 1e-4, 0.04)
    assert geneval.train.kl_beta == pytest.approx(conventions.preset_value(rows, "kl_beta"), rel=1e-3)
    assert geneval.train.clip_range == 1e-4 and geneval.sampler.sde == "flow"
    fast = load_params(REPO / "params.yaml", _preset("flow-grpo-fast-nocfg-sd3"))
    rows = conventions.equivalents("cps", 0.8, 10, 3.0, 1e-5, 0.0, [0, 1, 2, 3, 4])
    assert fast.train.clip_range == pytest.approx(conventions.preset_value(rows, "clip_range"), rel=1e-3)
    assert fast.sampler.sde == "cps" and fast.train.kl_beta == 0
    for path in (REPO / "presets").glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        assert doc["source"] and doc["not_reproduced"], path


def test_unknown_preset_is_named():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "preset.py"), "nope"], capture_output=True, text=True)
    assert proc.returncode != 0 and "no preset 'nope'" in proc.stderr and "flow-grpo-geneval-sd3" in proc.stderr
