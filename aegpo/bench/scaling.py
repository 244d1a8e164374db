"""Data-parallel scaling: the same training run on 1 and on N ranks (torchrun, CPU gloo, one thread per rank).

    aegpo bench scaling --out benchmarks/results/scaling [--ranks 1,2] [--rounds 4] [-S key=value ...]

Each world size trains `--rounds` rounds of params.yaml (same seed, same global batch:
`train.prompts_per_round` × the strategy's group sizes) in its own run folder under `--out`,
without evaluation. Measured per world size, over the rounds after the first (warm-up):

- `images_per_s`: rollout images of the round / wall seconds of the sampling stage (`Trainer.sample`, the
  slowest rank's; the plan and AEGPO's entropy probe before it are not counted);
- `seconds_per_round`: wall seconds of a whole round (sample, score, update, record, save) on rank 0;
- `max_abs_diff`: max |w − w₁| of the final trainable weights against the 1-rank run.

`summary.json` holds `ranks`, `images_per_s`, `speedup` (images/s over 1 rank's), `seconds_per_round`,
`max_abs_diff`, the machine and the settings; `table.md` the same as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aegpo.config import Params, load_params

GOAL_SPEEDUP = 1.6  # 2 ranks on CPU
GOAL_DIFF = 1e-5


def run_scaling(params_path: str, overrides: list[str], out: str | Path, ranks: list[int], rounds: int,
                project_dir: str | Path = ".", timeout: float = 3600) -> dict[str, Any]:
    """Run each world size in `ranks` (the first is the reference, normally 1) and write summary.json/table.md."""
    from aegpo.bench.efficiency import machine_description
    from aegpo.io_utils import atomic_write_json, atomic_write_text

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    project = Path(project_dir).resolve()
    rows = []
    for n in ranks:
        folder = out / f"ranks-{n}"
        sets = [*overrides, f"train.rounds={rounds}", f"train.out_dir={folder / 'run'}", "train.eval_base=false",
                "train.eval_every=0", "model.threads=1", f"train.nproc={n}"]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
               "-m", "aegpo.bench.scaling", "--worker", "--timings", str(folder / "timings.json")]
        cmd += ["--params", str(params_path)]
        for s in sets:
            cmd += ["-S", s]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        print(f"scaling: {n} rank(s): {' '.join(cmd)}", flush=True)
        done = subprocess.run(cmd, cwd=project, env=env, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"scaling run on {n} rank(s) failed (exit {done.returncode}); see the output above")
        rows.append({"ranks": n, **json.loads((folder / "timings.json").read_text())})
    ref = _trainable(out / f"ranks-{ranks[0]}" / "run")
    for row in rows:
        row["max_abs_diff"] = _max_abs_diff(_trainable(out / f"ranks-{row['ranks']}" / "run"), ref)
        row["speedup"] = row["images_per_s"] / rows[0]["images_per_s"]
    params = load_params(params_path, overrides)
    summary = {
        "ranks": [r["ranks"] for r in rows],
        "images_per_s": [r["images_per_s"] for r in rows],
        "speedup": [r["speedup"] for r in rows],
        "seconds_per_round": [r["seconds_per_round"] for r in rows],
        "round_speedup": [rows[0]["seconds_per_round"] / r["seconds_per_round"] for r in rows],
        "max_abs_diff": [r["max_abs_diff"] for r in rows],
        "machine": machine_description(),
        "settings": {"rounds": rounds, "timed_rounds": rows[0]["timed_rounds"], "threads_per_rank": 1,
                     "backend": "gloo", "strategy": params.train.strategy,
                     "prompts_per_round": params.train.prompts_per_round, "group_size": params.train.group_size,
                     "images_per_round": rows[0]["images_per_round"], "num_steps": params.sampler.num_steps,
                     "model": params.model.kind, "checkpoint": params.model.checkpoint, "overrides": overrides},
        "goal": {"speedup_at_2": GOAL_SPEEDUP, "max_abs_diff": GOAL_DIFF},
        "date": time.strftime("%Y-%m-%d"),
        "runs": rows,
    }
    two = next((r for r in rows if r["ranks"] == 2), None)
    if two is not None:
        summary["goal_met"] = bool(two["speedup"] >= GOAL_SPEEDUP and two["max_abs_diff"] <= GOAL_DIFF)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "table.md", table_markdown(summary))
    return summary


def table_markdown(s: dict[str, Any]) -> str:
    st = s["settings"]
    lines = [(f"Data-parallel scaling on {s['machine']} ({s['date']}); {st['strategy']}, {st['prompts_per_round']} "
              f"prompts × group {st['group_size']} = {st['images_per_round']} images per round, {st['num_steps']} "
              f"steps, {st['timed_rounds']} timed rounds after a warm-up round, 1 thread per rank ({st['backend']})."),
             "", "| ranks | rollout images/s | speedup | s / round | round speedup | max abs diff vs 1 rank |",
             "|---:|---:|---:|---:|---:|---:|"]
    for i, n in enumerate(s["ranks"]):
        lines.append(f"| {n} | {s['images_per_s'][i]:.2f} | {s['speedup'][i]:.2f}× | {s['seconds_per_round'][i]:.2f} "
                     f"| {s['round_speedup'][i]:.2f}× | {s['max_abs_diff'][i]:.2g} |")
    if "goal_met" in s:
        lines += ["", (f"Goal (2 ranks ≥ {s['goal']['speedup_at_2']}× images/s, diff ≤ {s['goal']['max_abs_diff']:g}): "
                       f"{'met' if s['goal_met'] else 'not met'}.")]
    return "\n".join(lines) + "\n"


def _trainable(run: Path):
    from safetensors.torch import load_file

    return load_file(run / "state" / "trainable.safetensors")


def _max_abs_diff(a, b) -> float:
    if a.keys() != b.keys():
        raise RuntimeError("scaling runs trained different parameters")
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


# ----- one rank of a timed run (under torchrun) --------------------------------------------------------
def worker(params: Params, timings: Path) -> None:
    """Train, timing each round's stages; rank 0 writes the timings (slowest rank's sampling time)."""
    import torch

    from aegpo import distributed
    from aegpo.io_utils import atomic_write_json
    from aegpo.prompt_files import read_prompt_file
    from aegpo.trainer import Trainer

    trainer = Trainer(params, read_prompt_file(params.train.prompts), None, progress=False)
    sample_s, round_s, images = [], [], []
    try:
        while trainer.round < params.train.rounds:
            distributed.barrier()
            t0 = time.perf_counter()
            work = trainer.begin_round()  # the plan (and AEGPO's entropy probe) is not part of the rollout time
            distributed.barrier()
            t1 = time.perf_counter()
            trainer.sample(work)
            t_sample = torch.tensor([time.perf_counter() - t1], dtype=torch.float64)
            trainer.score(work)
            trainer.optimize(work)
            record = trainer.end_round(work)
            distributed.barrier()
            sample_s.append(float(distributed.all_reduce_(t_sample, "max")[0]))
            round_s.append(time.perf_counter() - t0)
            images.append(record.num_samples)
        if distributed.is_main():
            timed = slice(1, None) if len(round_s) > 1 else slice(None)  # round 0 warms up (allocations, caches)
            atomic_write_json(timings, {
                "images_per_s": sum(images[timed]) / sum(sample_s[timed]),
                "seconds_per_round": sum(round_s[timed]) / len(round_s[timed]),
                "sample_seconds": sample_s, "round_seconds": round_s, "images_per_round": images[0],
                "timed_rounds": len(round_s[timed]), "world_size": distributed.world_size()})
    finally:
        distributed.teardown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m aegpo.bench.scaling", description="one rank of `aegpo bench scaling`")
    p.add_argument("--worker", action="store_true", required=True)
    p.add_argument("--timings", required=True)
    p.add_argument("--params", default=None)
    p.add_argument("-S", "--set", action="append", default=[])
    args = p.parse_args(argv)
    worker(load_params(args.params, args.set), Path(args.timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
