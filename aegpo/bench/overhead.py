"""`aegpo bench overhead`: what entropy recording costs a rollout, and what a cheaper recording loses.

One run measures, on the same policy, prompts and seeds (a training-like rollout: SDE at
every step), the rollout wall time and peak memory with recording off and with each
recording variant on (layers / heads / query stride), interleaved over `repeats` so that
machine noise hits every variant alike; times are medians. Peak memory is the process's
peak RSS on CPU (reset before each rollout through /proc/self/clear_refs) or
`torch.cuda.max_memory_allocated` on GPU.

Accuracy of a variant is judged against the full recording (every layer, head and query):
`prompt_rank_corr` is the Spearman correlation across prompts of the mean Entropy(t) (what
the global level ranks), `peak_overlap` the fraction of the K steps chosen from the full recording (`aegpo.peaks_k`,
`aegpo.peak_direction`) that the variant also chooses (what the local level uses).

Writes `DIR/overhead.csv`, `DIR/overhead.md` and `DIR/summary.json` (`time_ratio`,
`memory_ratio` of the selected variant — by default the one params.yaml's `entropy:` gives).
"""

from __future__ import annotations

import csv
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aegpo.config import Params
from aegpo.entropy.recorder import EntropyRecorder
from aegpo.io_utils import atomic_write_json, atomic_write_text
from aegpo.peaks import select_steps
from aegpo.rollout import StepPlan, generate

DEFAULT_VARIANTS: dict[str, dict[str, Any]] = {
    "full": {"layers": "all", "heads": "all", "query_stride": 1},
    "all-layers-stride4": {"layers": "all", "heads": "all", "query_stride": 4},
    "all-layers-stride8": {"layers": "all", "heads": "all", "query_stride": 8},
    "3-layers-stride4": {"layers": [2, 3, 4], "heads": "all", "query_stride": 4},
    "2-layers": {"layers": [2, 3], "heads": "all", "query_stride": 1},
    "2-layers-stride4": {"layers": [2, 3], "heads": "all", "query_stride": 4},
    "1-layer": {"layers": [3], "heads": "all", "query_stride": 1},
    "1-layer-stride4": {"layers": [3], "heads": "all", "query_stride": 4},
}


def _reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) on Linux


def _peak_mib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def run_overhead(params: Params, out: str | Path, num_prompts: int = 32, repeats: int = 5,
                 variants: dict[str, dict[str, Any]] | None = None, select: str | None = None,
                 batch_size: int = 64) -> dict[str, Any]:
    from aegpo.bench.machine import machine_description
    from aegpo.checkpoint import load_policy
    from aegpo.prompt_files import read_prompt_file
    from aegpo.rollout import sample_seeds

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    variants = dict(variants or DEFAULT_VARIANTS)
    e = params.entropy
    configured = {"layers": e.layers, "heads": e.heads, "query_stride": e.query_stride}
    if select is None:
        select = "params.yaml"
        variants = {**variants, select: configured}
    policy = load_policy(params.model.checkpoint, guidance_scale=params.model.guidance_scale).eval()
    prompts = read_prompt_file(params.eval.prompts)[:num_prompts]
    s = params.sampler
    idx = torch.arange(len(prompts))
    seeds = sample_seeds(0, idx, torch.zeros_like(idx), False)
    plan = StepPlan(torch.ones(len(prompts), s.num_steps, dtype=torch.bool),
                    torch.zeros(len(prompts), s.num_steps, dtype=torch.bool))
    recorders = {name: EntropyRecorder(layers=v["layers"], heads=v["heads"], keys=e.keys, normalize=e.normalize,
                                       query_stride=v["query_stride"], chunk_size=e.chunk_size)
                 for name, v in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in ["off", *variants]}
    peaks: dict[str, list[float]] = {name: [] for name in times}
    entropy: dict[str, np.ndarray] = {}

    def rollout(name: str):
        rec = recorders.get(name)
        if rec is not None:
            rec.install(policy)
        _reset_peak()
        t0 = time.perf_counter()
        ro = generate(policy, prompts, idx, seeds, plan, sde=s.sde, noise_level=s.noise_level, shift=s.shift,
                      recorder=rec, batch_size=batch_size)
        times[name].append(time.perf_counter() - t0)
        peaks[name].append(_peak_mib())
        if rec is not None:
            entropy[name] = ro.entropy.numpy()
            rec.uninstall()

    rollout("off")  # warm-up (allocator, kernels), not counted
    times["off"].clear()
    peaks["off"].clear()
    for _ in range(repeats):
        for name in times:
            rollout(name)
    k = min(params.aegpo.peaks_k, s.num_steps - 1)
    # overlap of the steps the local level would choose; `auto` is resolved only by training's calibration, so
    # it is measured here on the paper's maxima
    direction = params.aegpo.peak_direction if params.aegpo.peak_direction != "auto" else "high"

    def chosen(e):
        return select_steps(e, k, direction=direction)

    full_peaks = chosen(entropy["full"]) if "full" in entropy else None
    rows = []
    t_off, m_off = statistics.median(times["off"]), statistics.median(peaks["off"])
    for name in times:
        row = {"variant": name, "layers": str(variants.get(name, {}).get("layers", "-")),
               "heads": str(variants.get(name, {}).get("heads", "-")),
               "query_stride": variants.get(name, {}).get("query_stride", "-"),
               "seconds_median": statistics.median(times[name]), "time_ratio": statistics.median(times[name]) / t_off,
               "peak_mib": statistics.median(peaks[name]), "extra_mib": statistics.median(peaks[name]) - m_off,
               "memory_ratio": statistics.median(peaks[name]) / m_off}
        if name in entropy and full_peaks is not None:
            row["prompt_rank_corr"] = _spearman(entropy[name].mean(1), entropy["full"].mean(1))
            row["peak_overlap"] = float((chosen(entropy[name]) & full_peaks).sum() / full_peaks.sum())
        rows.append(row)
    fields = ["variant", "layers", "heads", "query_stride", "seconds_median", "time_ratio", "peak_mib", "extra_mib",
              "memory_ratio", "prompt_rank_corr", "peak_overlap"]
    with open(out / "overhead.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    chosen = next(r for r in rows if r["variant"] == select)
    summary = {"time_ratio": chosen["time_ratio"], "memory_ratio": chosen["memory_ratio"],
               "extra_mib": chosen["extra_mib"], "selected_variant": select, "selected": variants[select],
               "variants": rows, "machine": machine_description(), "date": time.strftime("%Y-%m-%d"),
               "settings": {"prompts": len(prompts), "repeats": repeats, "num_steps": s.num_steps,
                            "batch_size": batch_size, "checkpoint": params.model.checkpoint}}
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "overhead.md", overhead_markdown(rows, summary))
    return summary


def overhead_markdown(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = [f"{summary['machine']}; {summary['settings']['prompts']} prompts × {summary['settings']['num_steps']} "
             f"steps, median of {summary['settings']['repeats']} interleaved repeats", "",
             "| variant | layers | heads | query stride | rollout s | time ratio | extra MiB | memory ratio "
             "| prompt rank corr | peak overlap |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        corr = f"{r['prompt_rank_corr']:.3f}" if "prompt_rank_corr" in r else "-"
        ov = f"{r['peak_overlap']:.2f}" if "peak_overlap" in r else "-"
        lines.append(f"| {r['variant']} | {r['layers']} | {r['heads']} | {r['query_stride']} "
                     f"| {r['seconds_median']:.2f} "
                     f"| {r['time_ratio']:.3f} | {r['extra_mib']:.1f} | {r['memory_ratio']:.3f} | {corr} | {ov} |")
    return "\n".join(lines) + "\n"
