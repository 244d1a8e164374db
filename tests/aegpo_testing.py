"""Helpers shared by tests (imported as `aegpo_testing`; tests/ is on sys.path under pytest)."""

from __future__ import annotations

import torch

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
