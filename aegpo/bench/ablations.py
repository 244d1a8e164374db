"""`aegpo bench ablations`: AEGPO's open definition choices, one switch at a time, on the efficiency
benchmark's settings.

Each variant below is one override of the params (params.yaml unless `--params`); each runs
`aegpo bench efficiency` with strategy `aegpo` into `<out>/<variant>/` (resumable: a finished run is
read back, not rerun). `<out>/table.md` lists final eval strict / dense per variant, next to the `aegpo`
row of the efficiency benchmark's summary (the defaults) when that summary used the same NFE budget.
Quoted in docs/findings.md §2.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aegpo.config import Params, apply_overrides, params_from_dict
from aegpo.io_utils import atomic_write_text

log = logging.getLogger(__name__)

# variant name → overrides of the params; each changes one definition choice of docs/method.md
VARIANTS: dict[str, list[str]] = {
    "peak-high": ["aegpo.peak_direction=high"],  # the paper's reading: explore Entropy(t) maxima
    "delta-absolute": ["aegpo.delta=absolute"],  # the difference instead of ÷ base entropy (our deviation)
    "alloc-proportional": ["aegpo.allocation=proportional"],  # budgets ∝ ΔEntropy instead of the median split
    "k3": ["aegpo.peaks_k=3"],  # three explored steps instead of four
}


@dataclass
class AblationSpec:
    variants: list[str]
    seeds: list[int]
    nfe_budget: int = 78_000
    eval_every_nfe: int = 26_000
    jobs: int = 2


def check_variants(names: list[str]) -> None:
    """ValueError naming the unknown variants (before anything runs)."""
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"--variants: unknown {', '.join(map(repr, unknown))}; expected some of {', '.join(VARIANTS)}")


def variant_params(params: Params, name: str) -> Params:
    """`params` with the variant's overrides applied."""
    return params_from_dict(apply_overrides(params.model_dump(mode="json"), VARIANTS[name]), f"ablation {name}")


def ablation_table(rows: list[tuple[str, str, dict[str, Any]]], nfe_budget: int, seeds: list[int]) -> str:
    """table.md: one row per (name, overrides, the efficiency summary's `aegpo` entry)."""
    lines = [f"`aegpo` at {nfe_budget} NFE per run, seeds {','.join(map(str, seeds))}", "",
             "| variant | overrides | final strict (mean ± std) | final dense (mean) | seeds |",
             "|---|---|---|---|---|"]
    for name, overrides, s in rows:
        lines.append(f"| {name} | {overrides or '—'} | {s['final_strict_mean']:.3f} ± {s['final_strict_std']:.3f} | "
                     f"{s['final_dense_mean']:.3f} | {','.join(map(str, s['seeds']))} |")
    return "\n".join(lines) + "\n"


def run_ablations(params: Params, spec: AblationSpec, out: str | Path,
                  reference: str | Path | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """Run every variant of `spec`; write `<out>/table.md`; return its rows."""
    from aegpo.bench.efficiency import BenchSpec, run_efficiency

    check_variants(spec.variants)
    out = Path(out)
    rows: list[tuple[str, str, dict[str, Any]]] = []
    if reference is not None and Path(reference).is_file():
        ref = json.loads(Path(reference).read_text(encoding="utf-8"))
        if ref["settings"]["nfe_budget"] == spec.nfe_budget and "aegpo" in ref["strategies"]:
            rows.append((f"default ({Path(reference).parent})", "", ref["strategies"]["aegpo"]))
    bench = BenchSpec(strategies=["aegpo"], seeds=spec.seeds, nfe_budget=spec.nfe_budget,
                      eval_every_nfe=spec.eval_every_nfe, jobs=spec.jobs)
    for name in spec.variants:
        log.info("ablation %s: %s", name, " ".join(VARIANTS[name]))
        summary = run_efficiency(variant_params(params, name), bench, out / name)
        rows.append((name, " ".join(VARIANTS[name]), summary["strategies"]["aegpo"]))
    atomic_write_text(out / "table.md", ablation_table(rows, spec.nfe_budget, spec.seeds))
    return rows
