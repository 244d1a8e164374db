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
import torch  # noqa: E402

from aegpo.models.tiny_mmdit import TinyMMDiTConfig, TinyMMDiTPolicy  # noqa: E402

TINY = TinyMMDiTConfig(num_layers=2, num_heads=2, head_dim=16, text_dim=32, text_layers=1, text_heads=2)


def tiny_policy(seed: int = 0) -> TinyMMDiTPolicy:
    torch.manual_seed(seed)
    policy = TinyMMDiTPolicy(TINY)
    # Random init puts adaLN gates at zero in diffusers; perturb every weight so outputs depend on inputs.
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return policy.eval()


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A base checkpoint folder of a 2-layer random policy."""
    from aegpo.checkpoint import save_base

    path = tmp_path_factory.mktemp("ckpt") / "tiny-base"
    save_base(tiny_policy(), path, {"note": "random weights for tests"})
    return path
