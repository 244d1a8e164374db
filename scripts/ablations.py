"""AEGPO's open definition choices, one switch at a time, on the efficiency benchmark's settings.

    .venv/bin/python scripts/ablations.py [--seeds 0,1] [--nfe-budget 78000] [--jobs 2]

Runs `aegpo bench efficiency --strategies aegpo` once per variant below (params.yaml otherwise),
each into benchmarks/results/ablations/<variant>/ (resumable: a finished variant is read back,
not rerun), and writes benchmarks/results/ablations/table.md with final eval strict / dense per
variant next to the `aegpo` row of benchmarks/results/efficiency (the defaults, same budget).
Quoted in docs/findings.md §2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from aegpo.io_utils import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "ablations"
# variant name → overrides of params.yaml; each changes one definition choice of docs/method.md
VARIANTS = {
    "peak-high": ["aegpo.peak_direction=high"],          # the paper's reading: explore Entropy(t) maxima
    "delta-absolute": ["aegpo.delta=absolute"],          # the difference instead of ÷ base entropy (our deviation)
    "alloc-proportional": ["aegpo.allocation=proportional"],  # budgets ∝ ΔEntropy instead of the median split
    "k3": ["aegpo.peaks_k=3"],                           # three explored steps instead of four
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--nfe-budget", type=int, default=78000)
    ap.add_argument("--eval-every-nfe", type=int, default=26000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
    args = ap.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"--variants: unknown {', '.join(map(repr, unknown))}; expected some of {', '.join(VARIANTS)}")
    rows = []
    reference = ROOT / "benchmarks" / "results" / "efficiency" / "summary.json"
    if reference.is_file():
        ref = json.loads(reference.read_text())
        if ref["settings"]["nfe_budget"] == args.nfe_budget and "aegpo" in ref["strategies"]:
            rows.append(("default (benchmarks/results/efficiency)", "", ref["strategies"]["aegpo"]))
    for name in names:
        out = OUT / name
        cmd = [sys.executable, "-m", "aegpo.cli", "bench", "efficiency", "--out", str(out), "--strategies", "aegpo",
               "--seeds", args.seeds, "--nfe-budget", str(args.nfe_budget), "--eval-every-nfe",
               str(args.eval_every_nfe), "--jobs", str(args.jobs)]
        for override in VARIANTS[name]:
            cmd += ["-S", override]
        print("+", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        summary = json.loads((out / "summary.json").read_text())
        rows.append((name, " ".join(VARIANTS[name]), summary["strategies"]["aegpo"]))
    lines = ["| variant | overrides | final strict (mean ± std) | final dense (mean) | seeds |", "|---|---|---|---|---|"]
    for name, overrides, s in rows:
        lines.append(f"| {name} | {overrides or '—'} | {s['final_strict_mean']:.3f} ± {s['final_strict_std']:.3f} | "
                     f"{s['final_dense_mean']:.3f} | {','.join(map(str, s['seeds']))} |")
    table = "\n".join(lines) + "\n"
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OUT / "table.md", f"`aegpo` at {args.nfe_budget} NFE per run, seeds {args.seeds}\n\n" + table)
    print(table)


if __name__ == "__main__":
    main()
