"""Global level: turn per-prompt ΔEntropy into per-prompt rollout budgets with a fixed total.

Every rule returns integer group sizes (P,) whose sum is exactly P · group_size (the budget
of uniform GRPO); `allocate` asserts it.

- ``uniform``: group_size each.
- ``median_split`` (the paper's global level, as we read it): prompts ranked by ΔEntropy; the upper
  half gets `high`, the lower half `low` (high + low = 2·group_size, e.g. 16/8 around 12). With an
  odd P the middle prompt gets group_size.
- ``proportional``: budget ∝ ΔEntropy, clamped to [floor, ceiling] by water-filling, rounded by
  largest remainder.

**Ties.** ΔEntropy values closer than `tol` (the caller states it relative to the entropy scale,
aegpo.tie_tolerance) are ties: sorted values whose neighbours lie within `tol` form one tie class
(single linkage). Float noise is not information: at round 0 of a LoRA run the policy is the base
and ΔEntropy is rounding noise (1e-8 to 1e-7 of the entropy), which must not decide budgets.
- median_split: a tie class that reaches across the median split gets group_size for all its
  members; of the prompts clearly above (U) and clearly below (L) it, the n = min(|U|, |L|) highest
  get `high` and the n lowest `low`, so the total stays P·group_size. All values tied → uniform.
  Ties inside U or L at the n-th place are broken by a seeded random order.
- proportional: each tie class is replaced by its mean before the shares are computed, so tied
  prompts get equal shares (up to the largest-remainder rounding); all tied → uniform.
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


def tie_classes(delta: np.ndarray, tol: float) -> np.ndarray:
    """(P,) int label of each prompt's tie class: sorted neighbours within `tol` share a class.

    Labels grow with ΔEntropy (class 0 holds the smallest values)."""
    order = np.argsort(delta, kind="stable")
    gaps = np.diff(delta[order]) > tol
    labels = np.empty(len(delta), dtype=np.int64)
    labels[order] = np.concatenate([[0], np.cumsum(gaps)])
    return labels


def median_split(delta: np.ndarray, group_size: int, high: int, low: int, rng: np.random.Generator,
                 tol: float = 0.0) -> np.ndarray:
    p = len(delta)
    sizes = np.full(p, group_size, dtype=np.int64)
    labels = tie_classes(delta, tol)
    if labels.max() == 0:  # everything tied: no information
        return sizes
    tiebreak = rng.permutation(p)
    order = np.lexsort((tiebreak, -delta))  # descending ΔEntropy, random among exact equals
    half = p // 2
    # classes entirely inside the top half are clearly above, entirely inside the bottom half clearly below
    above = [i for i in order[:half] if _inside(labels[i], labels, order[:half])]
    below = [i for i in order[p - half:] if _inside(labels[i], labels, order[p - half:])]
    n = min(len(above), len(below))
    if n:
        # the n highest of `above` and the n lowest of `below`; a tie class cut at the n-th place keeps
        # the seeded order of `order`
        sizes[above[:n]] = high
        sizes[below[len(below) - n:]] = low
    return sizes


def _inside(label: int, labels: np.ndarray, members: np.ndarray) -> bool:
    """Whether every prompt of tie class `label` is among `members`."""
    return int((labels == label).sum()) == int((labels[members] == label).sum())


def proportional(delta: np.ndarray, group_size: int, floor: int, ceiling: int, tol: float = 0.0) -> np.ndarray:
    p = len(delta)
    total = p * group_size
    labels = tie_classes(delta, tol)
    if labels.max() == 0:
        return np.full(p, group_size, dtype=np.int64)
    delta = np.array([delta[labels == c].mean() for c in labels])  # tied prompts share one value
    if delta.sum() == 0:
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
             floor: int = 4, ceiling: int = 24, rng: np.random.Generator | None = None,
             tol: float = 0.0) -> np.ndarray:
    """Group sizes (P,) for ΔEntropy (P,); the total is always P · group_size (asserted).

    `tol`: ΔEntropy differences up to this are ties (same units as `delta`; see the module doc)."""
    delta = _check(delta)
    if not (np.isfinite(tol) and tol >= 0):
        raise ValueError(f"allocation: the tie tolerance must be a finite number ≥ 0, got {tol}")
    if rule == "uniform":
        sizes = np.full(len(delta), group_size, dtype=np.int64)
    elif rule == "median_split":
        sizes = median_split(delta, group_size, high, low, rng or np.random.default_rng(0), tol)
    elif rule == "proportional":
        sizes = proportional(delta, group_size, floor, ceiling, tol)
    else:
        raise ValueError(f"aegpo.allocation: unknown rule {rule!r} (expected one of {RULES})")
    if int(sizes.sum()) != len(delta) * group_size:
        raise AssertionError(f"allocation {rule}: total {sizes.sum()} != budget {len(delta) * group_size}")
    if sizes.min() < 2:
        raise AssertionError(f"allocation {rule}: a group of {sizes.min()} cannot give an advantage")
    return sizes
