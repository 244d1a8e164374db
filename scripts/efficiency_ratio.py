#!/usr/bin/env python
"""NFE-to-target of every row against a reference row, per seed, across `aegpo bench efficiency` outputs.

    .venv/bin/python scripts/efficiency_ratio.py --target 0.340 --reference grpo \
        benchmarks/results/efficiency-long/curves.csv benchmarks/results/efficiency-long-grpo/curves.csv

One invocation of the benchmark gives each row's NFE to the target, but the reference may need a longer budget than
the other rows (`grpo` reaches 0.340 only after 160k NFE here), so its longer run lives in another output folder.
This reads several curves.csv files; where the same (row, seed) appears in more than one, the longer curve is used,
and the evals the two share must be equal (a longer run with the same settings repeats the shorter one exactly),
otherwise the script stops. For each row and seed it prints the NFE at which eval strict accuracy first reaches the
target (linear interpolation between evals, the benchmark's own rule), the ratio to the reference's on that seed,
and the ratio of the means. Where the reference never reaches the target on a seed, the ratio is only an upper
bound: the row's NFE over the reference's last NFE (printed as "< x"). docs/findings.md §2 quotes its output.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

from aegpo.bench.efficiency import nfe_to_reach


def read_curves(paths: list[Path]) -> dict[tuple[str, int], list[dict]]:
    """(row, seed) → eval points sorted by NFE; the longest curve wins, shared evals must agree."""
    runs: dict[tuple[str, int], list[dict]] = {}
    for path in paths:
        by_run: dict[tuple[str, int], list[dict]] = {}
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                point = {"round": int(r["round"]), "nfe": float(r["nfe"]), "strict": float(r["strict"])}
                by_run.setdefault((r["strategy"], int(r["seed"])), []).append(point)
        for key, curve in by_run.items():
            curve.sort(key=lambda p: p["nfe"])
            old = runs.get(key)
            if old is not None:
                shared = {p["round"]: p for p in old}
                for p in curve:
                    q = shared.get(p["round"])
                    if q is not None and (q["nfe"], q["strict"]) != (p["nfe"], p["strict"]):
                        sys.exit(f"{path}: {key[0]} seed {key[1]} round {p['round']} differs from an earlier file "
                                 f"({p['nfe']:.0f} NFE, strict {p['strict']} vs {q['nfe']:.0f}, {q['strict']}): "
                                 "not the same run")
                if old[-1]["nfe"] >= curve[-1]["nfe"]:
                    continue
            runs[key] = curve
    return runs


def fmt(x: float) -> str:
    return f"{x:,.0f}" if math.isfinite(x) else "—"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("curves", nargs="+", type=Path, help="curves.csv files of `aegpo bench efficiency` outputs")
    p.add_argument("--target", type=float, required=True, help="eval strict accuracy to reach")
    p.add_argument("--reference", default="grpo", help="row whose NFE-to-target is the denominator")
    args = p.parse_args()
    for path in args.curves:
        if not path.is_file():
            sys.exit(f"{path}: no such curves.csv")
    runs = read_curves(args.curves)
    seeds = sorted({seed for row, seed in runs if row == args.reference})
    if not seeds:
        sys.exit(f"--reference {args.reference!r}: no such row in {', '.join(map(str, args.curves))}")
    ref = {s: nfe_to_reach(runs[(args.reference, s)], args.target) for s in seeds}
    ref_last = {s: runs[(args.reference, s)][-1]["nfe"] for s in seeds}
    print(f"target strict {args.target:.3f}; reference {args.reference}; seeds {seeds}")
    print(f"{args.reference}: NFE to target " + " / ".join(fmt(ref[s]) for s in seeds)
          + " (last eval at " + " / ".join(fmt(ref_last[s]) for s in seeds) + ")")
    for row in sorted({row for row, _ in runs if row != args.reference}):
        if any((row, s) not in runs for s in seeds):
            print(f"{row}: skipped (not run on every seed {seeds})")
            continue
        own = {s: nfe_to_reach(runs[(row, s)], args.target) for s in seeds}
        ratios = []
        for s in seeds:
            if not math.isfinite(own[s]):
                ratios.append("—")
            elif math.isfinite(ref[s]):
                ratios.append(f"{own[s] / ref[s]:.2f}")
            else:
                ratios.append(f"< {own[s] / ref_last[s]:.2f}")
        if all(math.isfinite(own[s]) for s in seeds):
            mean_own = sum(own.values()) / len(seeds)
            if all(math.isfinite(ref[s]) for s in seeds):
                mean = f"{mean_own / (sum(ref.values()) / len(seeds)):.2f}"
            else:  # the reference's mean NFE is at least the mean of its crossings and last evals
                floor = sum(ref[s] if math.isfinite(ref[s]) else ref_last[s] for s in seeds) / len(seeds)
                mean = f"< {mean_own / floor:.3f}"
        else:
            mean = "— (not reached on every seed)"
        print(f"{row}: NFE to target " + " / ".join(fmt(own[s]) for s in seeds)
              + f"; ratio per seed {' / '.join(ratios)}; ratio of the means {mean}")


if __name__ == "__main__":
    main()
