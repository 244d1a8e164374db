"""Global level: turn per-prompt ΔEntropy into per-prompt rollout budgets with a fixed total.

Every rule returns integer group sizes (P,) whose sum is exactly P · group_size (the budget
of uniform GRPO); `allocate` asserts it.

- ``uniform``: group_size each.
- ``median_split`` (the paper): prompts ranked by ΔEntropy; the upper half gets `high`, the lower
  half `low` (high + low = 2·group_size, e.g. 16/8 around 12). With an odd P the middle prompt
  gets group_size. Ties across the median are broken by a seeded random order; when all ΔEntropy
  values are equal (no information, e.g. round 0 of a LoRA run) every prompt gets group_size.
- ``proportional``: budget ∝ ΔEntropy, clamped to [floor, ceiling] by water-filling, rounded by
  largest remainder. All-zero or all-equal ΔEntropy gives the uniform budget.
"""

from __future__ import annotations

import numpy as np

RULES = ("uniform", "median_split", "proportional")


def _check(delta: np.ndarray) -> np.ndarray:
    delta = np.asarray(delta, dtype=np.float64)
    if delta.ndim != 1 or len(delta) == 0:
        raise ValueError(f"allocation: expected a non-empty 1-D ΔEntropy vector, got shape {delta.shape}")
    if not np.all(np.isfinite(delta)):
        bad = np.flatnonzero(~np.isfinite(delta)).tolist()
        raise ValueError(f"allocation: ΔEntropy is NaN/inf for prompts {bad[:5]} (check the entropy probe)")
    if np.any(delta < 0):
        raise ValueError("allocation: ΔEntropy must be ≥ 0 (use the absolute or relative magnitude)")
    return delta


def median_split(delta: np.ndarray, group_size: int, high: int, low: int, rng: np.random.Generator) -> np.ndarray:
    p = len(delta)
    sizes = np.full(p, group_size, dtype=np.int64)
    if np.ptp(delta) == 0:
        return sizes
    tiebreak = rng.permutation(p)
    order = np.lexsort((tiebreak, -delta))  # descending ΔEntropy, random among equals
    half = p // 2
    sizes[order[:half]] = high
    sizes[order[p - half:]] = low
    return sizes


def proportional(delta: np.ndarray, group_size: int, floor: int, ceiling: int) -> np.ndarray:
    p = len(delta)
    total = p * group_size
    if delta.sum() == 0 or np.ptp(delta) == 0:
        return np.full(p, group_size, dtype=np.int64)
    # Find λ with Σ clip(λ·δ, floor, ceiling) = total by bisection (the sum is monotone in λ).
    share = lambda lam: np.clip(lam * delta, floor, ceiling)  # noqa: E731
    lo, hi = 0.0, 1.0
    while share(hi).sum() < total and hi < 1e12:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if share(mid).sum() < total else (lo, mid)
    alloc = share(hi)
    if alloc.sum() < total:  # every δ > 0 prompt is at the ceiling: the rest goes evenly to δ = 0 prompts
        zero = delta == 0
        alloc[zero] = np.minimum(ceiling, alloc[zero] + (total - alloc.sum()) / zero.sum())
    alloc *= total / alloc.sum() if alloc.sum() > total else 1.0
    base = np.floor(alloc + 1e-9).astype(np.int64)
    room = np.where(base < ceiling, alloc - base, -1.0)
    for i in np.argsort(-room, kind="stable")[: max(0, total - int(base.sum()))]:
        base[i] += 1
    return base


def allocate(rule: str, delta: np.ndarray, group_size: int, *, high: int = 16, low: int = 8,
             floor: int = 4, ceiling: int = 24, rng: np.random.Generator | None = None) -> np.ndarray:
    """Group sizes (P,) for ΔEntropy (P,); the total is always P · group_size (asserted)."""
    delta = _check(delta)
    if rule == "uniform":
        sizes = np.full(len(delta), group_size, dtype=np.int64)
    elif rule == "median_split":
        sizes = median_split(delta, group_size, high, low, rng or np.random.default_rng(0))
    elif rule == "proportional":
        sizes = proportional(delta, group_size, floor, ceiling)
    else:
        raise ValueError(f"aegpo.allocation: unknown rule {rule!r} (expected one of {RULES})")
    if int(sizes.sum()) != len(delta) * group_size:
        raise AssertionError(f"allocation {rule}: total {sizes.sum()} != budget {len(delta) * group_size}")
    if sizes.min() < 2:
        raise AssertionError(f"allocation {rule}: a group of {sizes.min()} cannot give an advantage")
    return sizes
