"""Progress lines for the pipeline, logged through the Prefect logger (the flow-run page, `prefect deployment
run --watch`, and the console of `aegpo pipeline train` / `dvc repro` all show them; no terminal bar does).

    round 3/45: reward 0.312, NFE 12,345, 1m42s elapsed, ETA 24m10s, entropy probes 320 NFE
    base-entropy profile: 40% (1,166/2,914 prompts), 1m02s elapsed, ETA 1m33s
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def duration(seconds: float) -> str:
    """'42s', '3m05s', '1h02m'."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def eta(elapsed: float, done: int, total: int) -> str:
    """Remaining time at the rate so far; '?' before anything is done."""
    if done <= 0:
        return "?"
    return duration(elapsed / done * max(0, total - done))


class RoundProgress:
    """Rounds done this session, for 'round i/N' lines with an ETA at this session's pace (a resumed run's
    earlier rounds do not count towards the rate)."""

    def __init__(self, first_round: int, rounds: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.first, self.rounds, self.clock = first_round, rounds, clock
        self.start = clock()

    def line(self, round_idx: int, reward_mean: float | None, nfe: int, eval_metrics: dict[str, Any] | None = None,
             rejected: str | None = None, probe_nfe: int = 0) -> str:
        """The progress line after round `round_idx` (0-based) finished (or was rejected: `rejected` says why).

        `probe_nfe`: the round's entropy probes (the lazy base profile's new prompts and the current policy's
        ΔEntropy probes), shown when there were any: profiling progresses with the rounds."""
        done = round_idx + 1
        elapsed = self.clock() - self.start
        reward = (f"rejected ({rejected})" if rejected else "reward ?" if reward_mean is None  # a retried round
                  else f"reward {reward_mean:.4f}")
        text = (f"round {done}/{self.rounds}: {reward}, NFE {nfe:,}, {duration(elapsed)} elapsed, "
                f"ETA {eta(elapsed, done - self.first, self.rounds - self.first)}")
        if probe_nfe:
            text += f", entropy probes {probe_nfe:,} NFE"
        if eval_metrics:  # the reward's headline metrics (shapes: strict, dense)
            text += "".join(f", eval {k} {v:.3f}" for k, v in list(eval_metrics.items())[:2])
        return text


def step_logger(label: str, unit: str, log: Callable[[str], None], every: float = 0.1,
                clock: Callable[[], float] = time.monotonic) -> Callable[[int, int], None]:
    """A `(done, total)` callback that logs `label: 40% (done/total unit), elapsed, ETA` each time another
    `every` of the way is done (so once at the end)."""
    start = clock()
    state = {"next": every}

    def report(done: int, total: int) -> None:
        fraction = done / total if total else 1.0
        if fraction + 1e-9 < state["next"]:
            return
        while state["next"] <= fraction + 1e-9:
            state["next"] += every
        elapsed = clock() - start
        log(f"{label}: {fraction:.0%} ({done:,}/{total:,} {unit}), {duration(elapsed)} elapsed, "
            f"ETA {eta(elapsed, done, total)}")

    return report
