"""Helpers shared by tests (imported as `aegpo_testing`; tests/ is on sys.path under pytest)."""

from __future__ import annotations

from pathlib import Path

import torch

from aegpo.config import Params, load_params
from aegpo.models.tiny_mmdit import TinyMMDiTConfig, TinyMMDiTPolicy

TINY = TinyMMDiTConfig(num_layers=2, num_heads=2, head_dim=16, text_dim=32, text_layers=1, text_heads=2)


def tiny_policy(seed: int = 0) -> TinyMMDiTPolicy:
    torch.manual_seed(seed)
    policy = TinyMMDiTPolicy(TINY)
    # Random init puts adaLN gates at zero in diffusers; perturb every weight so outputs depend on inputs.
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return policy.eval()


ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "params.yaml"

# What every test changes in the shipped params.yaml, and why: the tests run a 2-layer random policy on a few
# prompts with small groups, so the settings below would not fit or would only cost time. Each test then states
# its own overrides; everything else is the configuration users run.
TEST_SCALE = (
    # the shipped budgets are spelled out for train.group_size 12: derive them from the tests' group sizes
    "aegpo.high_group=null", "aegpo.low_group=null", "aegpo.floor=null", "aegpo.ceiling=null",
    "entropy.layers=all", "entropy.query_stride=1",  # the shipped layers 2-4 exist only in the 6-layer model
    "eval.samples_per_prompt=1", "train.inner_epochs=1",  # test cost
    # the shipped `auto` calibrates the direction on the base at every Trainer start (probes, NFE): the paper's
    # maxima here; tests of the calibration set `auto` themselves
    "aegpo.peak_direction=high",
)


def shipped_params(overrides: list[str] | tuple[str, ...] = ()) -> Params:
    """The shipped params.yaml with TEST_SCALE and then `overrides` applied (the tests' configuration)."""
    return load_params(SHIPPED, [*TEST_SCALE, *overrides])
