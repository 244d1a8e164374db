"""Local level: choose the K denoising steps to explore from Entropy(t).

Candidates are steps 0 … T−2 (the last step, σ → 0, is never explored or trained: its
transition density degenerates). Rules:

- ``topk``: the K candidates with the highest Entropy(t).
- ``peaks``: greedy non-maximum suppression: take the highest remaining step, drop every
  candidate closer than `min_spacing` steps to it, repeat K times. Spread-out peaks rather
  than K neighbours of one broad maximum.

`direction` ``high`` takes maxima of Entropy(t) (the peaks of the paper's abstract); ``low``
takes its minima (troughs: steps of the most concentrated attention; our deviation), which is
where exploration changes the reward in the built-in model (`aegpo bench critical-steps`,
docs/findings.md §2b). ``auto`` is resolved to one of them by the trainer's calibration before
any step is selected here.

Ties (plateaus) go to the earlier (noisier) step, so the choice is deterministic. Scope
``prompt`` selects per prompt from its own Entropy(t); ``batch`` selects once from the
batch mean and gives every prompt the same steps.
"""

from __future__ import annotations

import math

import numpy as np

RULES = ("topk", "peaks")
DIRECTIONS = ("high", "low")
SCOPES = ("prompt", "batch")


def max_selectable(num_steps: int, min_spacing: int) -> int:
    """How many steps NMS with `min_spacing` can pick among the T − 1 candidates."""
    return math.ceil((num_steps - 1) / max(1, min_spacing))


def _select_one(e: np.ndarray, k: int, rule: str, min_spacing: int) -> list[int]:
    cand = e[:-1]
    order = np.lexsort((np.arange(len(cand)), -cand))  # descending value, earlier step first on ties
    if rule == "topk":
        return sorted(order[:k].tolist())
    chosen: list[int] = []
    for t in order.tolist():
        if all(abs(t - c) >= min_spacing for c in chosen):
            chosen.append(t)
            if len(chosen) == k:
                break
    return sorted(chosen)


def select_steps(entropy_t: np.ndarray, k: int, rule: str = "topk", min_spacing: int = 1,
                 scope: str = "prompt", direction: str = "high") -> np.ndarray:
    """Boolean (P, T) mask of the chosen steps, from Entropy(t) (P, T)."""
    entropy_t = np.asarray(entropy_t, dtype=np.float64)
    if entropy_t.ndim != 2:
        raise ValueError(f"select_steps: expected Entropy(t) of shape (P, T), got {entropy_t.shape}")
    p, t = entropy_t.shape
    if rule not in RULES:
        raise ValueError(f"aegpo.peak_rule: unknown rule {rule!r} (expected one of {RULES})")
    if scope not in SCOPES:
        raise ValueError(f"aegpo.peak_scope: unknown scope {scope!r} (expected one of {SCOPES})")
    if direction not in DIRECTIONS:
        raise ValueError(f"aegpo.peak_direction: unknown direction {direction!r} (expected one of {DIRECTIONS})")
    spacing = min_spacing if rule == "peaks" else 1
    if not 1 <= k <= max_selectable(t, spacing):
        raise ValueError(f"aegpo.peaks_k: cannot choose {k} steps among {t - 1} candidates with spacing {spacing}")
    if not np.all(np.isfinite(entropy_t)):
        raise ValueError("select_steps: Entropy(t) has NaN/inf values")
    if direction == "low":  # troughs: the same rules on −Entropy(t)
        entropy_t = -entropy_t
    mask = np.zeros((p, t), dtype=bool)
    if scope == "batch":
        mask[:, _select_one(entropy_t.mean(0), k, rule, spacing)] = True
    else:
        for i in range(p):
            mask[i, _select_one(entropy_t[i], k, rule, spacing)] = True
    return mask
