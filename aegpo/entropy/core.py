"""Attention entropy without materialising the attention matrix.

For one query row with logits s_j = q·k_j / √d and p = softmax(s):

    H = −Σ_j p_j log p_j = logsumexp(s) − Σ_j p_j s_j

so processing the queries in chunks needs only a (chunk × keys) block at a time.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def mean_query_entropy(query: torch.Tensor, key: torch.Tensor, scale: float, chunk_size: int = 1024) -> torch.Tensor:
    """Mean Shannon entropy (nats) of softmax(q kᵀ·scale) rows.

    Args:
        query: (B, H, Q, D) queries whose rows are averaged.
        key: (B, H, N, D) keys the softmax runs over.
        scale: logit scale (1/√D for standard attention).
        chunk_size: queries per block; peak extra memory is B·H·chunk_size·N floats.

    Returns:
        (B, H) float32: mean over the Q query rows of each row's entropy.
    """
    q_total = query.shape[2]
    total = torch.zeros(query.shape[:2], dtype=torch.float32, device=query.device)
    k = key.float()
    for start in range(0, q_total, chunk_size):
        q = query[:, :, start : start + chunk_size].float()
        logits = torch.matmul(q, k.transpose(-1, -2)).mul_(scale)  # (B, H, c, N)
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        probs = torch.exp(logits - lse)
        total += (lse.squeeze(-1) - (probs * logits).sum(-1)).sum(-1)
    return total / q_total


def explicit_entropy(query: torch.Tensor, key: torch.Tensor, scale: float) -> torch.Tensor:
    """Reference implementation (full matrix, for tests): (B, H) mean row entropy."""
    probs = torch.softmax(torch.matmul(query.double(), key.double().transpose(-1, -2)) * scale, dim=-1)
    return (-(probs * torch.log(probs.clamp_min(1e-300))).sum(-1)).mean(-1).float()
