"""Which numbers of an evaluation result are metrics, and the before/after lines that print them.

Torch-free, so reports and trackers read evaluation results without loading a model stack. An
`aegpo.evaluate.evaluate` result names its reward's metrics in `metrics` (headline first); the shapes
reward reports `strict`, `dense`, `reward`, a learned reward its score.
"""

from __future__ import annotations

_BOOKKEEPING = ("num_prompts", "samples_per_prompt", "num_steps", "seed", "nfe")


def metric_names(ev: dict) -> list[str]:
    """The reported metrics of an `evaluate` result, headline first (older results lack `metrics`: then
    every numeric key but the bookkeeping ones)."""
    if ev.get("metrics"):
        return [k for k in ev["metrics"] if k in ev]
    return [k for k, v in ev.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k not in _BOOKKEEPING]


def eval_summary(ev: dict | None, extra: tuple[str, ...] = ()) -> dict | None:
    """{metric: value} of an `evaluate` result in the reward's order (plus the `extra` keys present)."""
    if not ev:
        return None
    return {k: ev[k] for k in [*metric_names(ev), *extra] if k in ev}


def before_after_lines(before: dict | None, after: dict | None) -> list[str]:
    """'eval <metric>: base -> trained' for each metric both results report, headline first."""
    if not before or not after:
        return []
    names = [k for k in metric_names(after) if k in before]
    width = max((len(k) for k in names), default=0)
    return [f"eval {k + ':':<{width + 1}} {before[k]:.3f} (base) -> {after[k]:.3f} (trained)" for k in names]
