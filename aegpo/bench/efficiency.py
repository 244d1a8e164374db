"""`aegpo bench efficiency`: strategies × seeds on the shapes world at an equal NFE budget.

Every run trains from the same base with the same parameters except `train.strategy` and
`seed`, and stops once its cumulative NFE (rollout + probe + trained-transition denoiser
evaluations) reaches the budget. Each run is evaluated (fixed-seed ODE samples of the eval
split) whenever its NFE crosses a multiple of `--eval-every-nfe`, and at the end.

Outputs in `--out DIR`:
- `curves.csv`: strategy, seed, round, nfe, strict, dense, train_reward, wall_seconds (nfe 0 = base);
- `curves.png`: eval strict accuracy against NFE, mean over seeds with a min–max band;
- `table.md`: NFE to the target (default: halfway from the base's accuracy to the best final
  mean accuracy seen; none when no final mean is above the base), final accuracy mean ± std
  over seeds, wall time;
- `summary.json`: per row `nfe_to_target` (mean) and `nfe_to_target_per_seed`, `final_strict_mean`,
  `final_strict_std`, `time_to_first_round_s_per_seed` (model loading, calibration and round 0), `seeds`, …
- `runs/<row>-s<seed>/`: each run's round logs and curve. An interrupted benchmark continues: finished runs are
  reused, and an unfinished one resumes from its last round (its state is saved every round, its evals as they
  happen, and both are removed once the run has finished).

Rows (`--strategies`, comma-separated) are strategies (`aegpo`) or named variants
`name=strategy+key=value+key=value` with parameter overrides in the `-S` grammar, e.g.
`aegpo_auto=aegpo+aegpo.peak_direction=auto` beside `aegpo`; a variant's name labels its curves.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aegpo.bench.machine import machine_description
from aegpo.config import Params, apply_overrides, params_from_dict
from aegpo.io_utils import atomic_write_json, atomic_write_text
from aegpo.prompt_files import read_prompt_file

log = logging.getLogger(__name__)
CSV_FIELDS = ("strategy", "seed", "round", "nfe", "strict", "dense", "train_reward", "wall_seconds",
              "first_round_seconds")
ROW_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def parse_rows(text: str) -> tuple[list[str], dict[str, tuple[str, list[str]]]]:
    """`grpo,aegpo,aegpo_auto=aegpo+aegpo.peak_direction=auto` → (row names, {name: (strategy, overrides)})."""
    from aegpo.strategies.registry import STRATEGIES

    names: list[str] = []
    variants: dict[str, tuple[str, list[str]]] = {}
    for item in (x.strip() for x in text.split(",")):
        if not item:
            raise ValueError(f"--strategies: empty row in {text!r}")
        head, *overrides = item.split("+")
        name, strategy = head.split("=", 1) if "=" in head else (head, head)
        if strategy not in STRATEGIES:
            raise ValueError(f"--strategies: row {item!r}: unknown strategy {strategy!r} (expected one of "
                             f"{sorted(STRATEGIES)})")
        if not ROW_NAME.match(name):
            raise ValueError(f"--strategies: row name {name!r} may hold letters, digits, '_', '.', '-' only")
        if name in names:
            raise ValueError(f"--strategies: row {name!r} appears twice")
        bad = [o for o in overrides if "=" not in o or o.startswith(("train.strategy=", "seed="))]
        if bad:
            raise ValueError(f"--strategies: row {item!r}: overrides must be key=value (not train.strategy or "
                             f"seed), got {bad}")
        names.append(name)
        variants[name] = (strategy, overrides)
    return names, variants


@dataclass
class BenchSpec:
    strategies: list[str]
    seeds: list[int]
    nfe_budget: int
    eval_every_nfe: int
    target: float | None = None  # absolute strict accuracy; None = halfway base → best final
    jobs: int = 1  # runs in parallel (processes); each gets cpus // jobs torch threads
    variants: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # row name → (strategy, overrides)

    def row(self, name: str) -> tuple[str, list[str]]:
        """(strategy, parameter overrides) of row `name` (a plain strategy has none)."""
        return self.variants.get(name, (name, []))


def run_one(params: Params, spec: BenchSpec, out: Path, strategy: str, seed: int, base_eval: dict[str, Any],
            train_prompts: list[str], eval_prompts: list[str]) -> list[dict[str, Any]]:
    """Train one (strategy, seed) to the NFE budget; returns its curve rows (cached on disk).

    An interrupted run resumes where its saved state left off (the trainer replays exactly) and keeps the evals it
    had already recorded (`curve.partial.json`, written after each one), so its curve equals an uninterrupted run's.
    """
    from aegpo.trainer import Trainer

    name = strategy  # the row's name; its strategy and overrides come from the spec
    run_dir = out / "runs" / f"{name}-s{seed}"
    done, partial = run_dir / "curve.json", run_dir / "curve.partial.json"
    if done.is_file():
        return json.loads(done.read_text())
    p = row_params(params, spec, name, seed, run_dir)
    t0 = time.perf_counter()  # time to first round: from here (model loading, calibration) to the end of round 0
    trainer = Trainer(p, train_prompts, eval_prompts, progress=False)
    rows, first_round = _resume_curve(partial, trainer.round, name, seed, base_eval)
    if first_round is None and trainer.history:  # resumed before its first eval: the trainer's own measure
        first_round = trainer.history[0].seconds_to_first_round
    record = None  # the last round this process ran (a resumed run's earlier ones are in trainer.history)
    start = time.perf_counter() - rows[-1]["wall_seconds"]  # wall time counts this run's work, not the pause
    next_eval = spec.eval_every_nfe * (int(rows[-1]["nfe"] // spec.eval_every_nfe) + 1)
    while True:
        # an eval is due after a round that crossed the next multiple (or the budget) and is not recorded yet;
        # this also catches the eval a kill interrupted, since the state is saved before it
        finished = trainer.nfe >= spec.nfe_budget
        if trainer.round > rows[-1]["round"] and (trainer.nfe >= next_eval or finished):
            ev = trainer.evaluate()
            last = record if record is not None else (trainer.history[-1] if trainer.history else None)
            rows.append({"strategy": name, "seed": seed, "round": trainer.round, "nfe": trainer.nfe,
                         "strict": ev["strict"], "dense": ev["dense"],
                         "train_reward": last.reward_mean if last is not None else float("nan"),
                         "wall_seconds": round(time.perf_counter() - start, 2)})
            log.info("%s seed %d: round %d nfe %d strict %.3f", name, seed, trainer.round, trainer.nfe, ev["strict"])
            while next_eval <= trainer.nfe:
                next_eval += spec.eval_every_nfe
            atomic_write_json(partial, {"first_round_seconds": first_round, "rows": rows})
        if finished:
            break
        record = trainer.run_round()
        if first_round is None and trainer.round == 1:  # this process ran round 0
            first_round = round(time.perf_counter() - t0, 2)
    trainer.close()
    for r in rows:
        r["first_round_seconds"] = first_round
    atomic_write_json(done, rows)
    partial.unlink(missing_ok=True)
    for folder in ("state", "checkpoint"):  # kept only to resume; a finished run is its curve
        shutil.rmtree(run_dir / folder, ignore_errors=True)
    return rows


def _resume_curve(partial: Path, round_: int, name: str, seed: int,
                  base_eval: dict[str, Any]) -> tuple[list[dict[str, Any]], float | None]:
    """The evals a run recorded before its interruption, up to the round its trainer resumed at (a state saved less
    often than every round resumes earlier; the later evals are then redone, identically); a fresh run has only the
    base row. Returns (rows, time to first round or None)."""
    rows = [{"strategy": name, "seed": seed, "round": 0, "nfe": 0, "strict": base_eval["strict"],
             "dense": base_eval["dense"], "train_reward": float("nan"), "wall_seconds": 0.0}]
    if round_ == 0 or not partial.is_file():
        return rows, None
    try:
        saved = json.loads(partial.read_text())
        kept = [r for r in saved["rows"] if r["round"] <= round_]
        first = saved["first_round_seconds"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{partial}: not a curve this benchmark wrote ({e}); delete the run folder "
                         f"{partial.parent} to start that run over") from e
    if not kept or kept[0]["nfe"] != 0:
        raise ValueError(f"{partial}: does not start at the base (round 0, NFE 0); delete the run folder "
                         f"{partial.parent} to start that run over")
    return kept, first


def row_params(params: Params, spec: BenchSpec, name: str, seed: int, run_dir: Path) -> Params:
    """The parameters of one run of row `name`: the row's overrides, then the benchmark's own settings."""
    strategy, overrides = spec.row(name)
    return params_from_dict(apply_overrides(params.model_dump(mode="json"), [
        *overrides, f"seed={seed}", f"train.strategy={strategy}", f"train.out_dir={run_dir}", "train.rounds=1000000",
        "train.eval_every=0", "train.eval_base=false", "train.save_every=1"]), f"bench row {name}")


def nfe_to_reach(curve: list[dict[str, Any]], target: float) -> float:
    """First NFE at which the curve reaches `target` (linear interpolation between evals); inf if never."""
    prev = None
    for row in curve:
        if row["strict"] >= target:
            if prev is None or row["strict"] == prev["strict"]:
                return float(row["nfe"])
            frac = (target - prev["strict"]) / (row["strict"] - prev["strict"])
            return float(prev["nfe"] + frac * (row["nfe"] - prev["nfe"]))
        prev = row
    return float("inf")


def summarize(rows: list[dict[str, Any]], spec: BenchSpec, base_strict: float) -> dict[str, Any]:
    by_run: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        by_run.setdefault((r["strategy"], r["seed"]), []).append(r)
    finals = {k: v[-1] for k, v in by_run.items()}
    final_means = {s: float(np.mean([finals[(s, seed)]["strict"] for seed in spec.seeds])) for s in spec.strategies}
    best = max(final_means.values())
    if spec.target is not None:
        target = spec.target
    elif best > base_strict:
        target = base_strict + 0.5 * (best - base_strict)
    else:
        target = None  # nothing improved on the base: a target below it would be "reached" at NFE 0
    out: dict[str, Any] = {"target_strict": target, "base_strict": base_strict, "best_final_mean": best,
                           "strategies": {}}
    for s in spec.strategies:
        reach = [nfe_to_reach(by_run[(s, seed)], target) if target is not None else float("inf") for seed in spec.seeds]
        finite = [x for x in reach if np.isfinite(x)]
        final = [finals[(s, seed)]["strict"] for seed in spec.seeds]
        first = [finals[(s, seed)].get("first_round_seconds") for seed in spec.seeds]
        strategy, overrides = spec.row(s)
        out["strategies"][s] = {
            "strategy": strategy, "overrides": overrides,
            "time_to_first_round_s_per_seed": first,
            "time_to_first_round_s_mean": float(np.mean(first)) if all(x is not None for x in first) else None,
            "nfe_to_target": float(np.mean(finite)) if len(finite) == len(reach) else None,
            "nfe_to_target_per_seed": [x if np.isfinite(x) else None for x in reach],
            "reached_target": f"{len(finite)}/{len(reach)}",
            "final_strict_mean": float(np.mean(final)), "final_strict_std": float(np.std(final)),
            "final_dense_mean": float(np.mean([finals[(s, seed)]["dense"] for seed in spec.seeds])),
            "final_nfe_mean": float(np.mean([finals[(s, seed)]["nfe"] for seed in spec.seeds])),
            "wall_seconds_mean": float(np.mean([finals[(s, seed)]["wall_seconds"] for seed in spec.seeds])),
            "seeds": list(spec.seeds),
        }
    return out


def table_markdown(summary: dict[str, Any]) -> str:
    target = summary["target_strict"]
    head = (f"Target: eval strict accuracy {target:.3f}" if target is not None
            else "No target: no strategy's final mean is above the base")
    lines = [f"{head} (base {summary['base_strict']:.3f}, best final mean {summary['best_final_mean']:.3f})", "",
             ("| row | NFE to target (mean) | per seed | reached | final strict (mean ± std) | final dense "
              "| time to first round | wall time / run |"),
             "|---|---|---|---|---|---|---|---|"]
    for s, v in summary["strategies"].items():
        nfe = f"{v['nfe_to_target']:,.0f}" if v["nfe_to_target"] is not None else "not reached by all seeds"
        per_seed = " / ".join(f"{x:,.0f}" if x is not None else "—" for x in v["nfe_to_target_per_seed"])
        first = v.get("time_to_first_round_s_mean")
        first = f"{first:.1f} s" if first is not None else "—"
        label = s if not v.get("overrides") else f"{s} (`{v['strategy']}` + {' '.join(v['overrides'])})"
        lines.append(f"| {label} | {nfe} | {per_seed} | {v['reached_target']} | {v['final_strict_mean']:.3f} ± "
                     f"{v['final_strict_std']:.3f} | {v['final_dense_mean']:.3f} | {first} | "
                     f"{v['wall_seconds_mean'] / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], spec: BenchSpec, summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    grid = np.linspace(0, spec.nfe_budget, 60)
    for s in spec.strategies:
        curves = []
        for seed in spec.seeds:
            pts = [r for r in rows if r["strategy"] == s and r["seed"] == seed]
            x, y = [r["nfe"] for r in pts], [r["strict"] for r in pts]
            curves.append(np.interp(grid, x, y, right=np.nan))
        c = np.array(curves)
        mean = np.nanmean(c, 0)
        (line,) = ax.plot(grid, mean, label=s)
        ax.fill_between(grid, np.nanmin(c, 0), np.nanmax(c, 0), color=line.get_color(), alpha=0.15)
    if summary["target_strict"] is not None:
        ax.axhline(summary["target_strict"], color="grey", ls="--", lw=1, label="target")
    ax.set_xlabel("cumulative NFE (denoiser evaluations)")
    ax.set_ylabel("eval strict accuracy")
    ax.set_title(f"shapes world, {len(spec.seeds)} seeds (band: min–max)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_efficiency(params: Params, spec: BenchSpec, out: str | Path) -> dict[str, Any]:
    from aegpo.checkpoint import load_policy
    from aegpo.evaluate import evaluate
    from aegpo.rewards.registry import reward_from_params

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_prompts = read_prompt_file(params.train.prompts)
    eval_prompts = read_prompt_file(params.eval.prompts)
    base_path = out / "base_eval.json"
    if base_path.is_file():
        base_eval = json.loads(base_path.read_text())
    else:
        e = params.eval
        policy = load_policy(params.model.checkpoint, guidance_scale=params.model.guidance_scale).eval()
        base_eval = evaluate(policy, eval_prompts, reward_from_params(params),
                             num_steps=e.num_steps, samples_per_prompt=e.samples_per_prompt, seed=e.seed,
                             shift=params.sampler.shift, batch_size=e.batch_size)
        base_eval.pop("images")
        atomic_write_json(base_path, base_eval)
    for name in spec.strategies:  # a bad override fails here, before any run
        row_params(params, spec, name, spec.seeds[0], out / "runs" / f"{name}-s{spec.seeds[0]}")
    # seed-major order: an interrupted benchmark has already covered every strategy on the first seeds
    pairs = [(strategy, seed) for seed in spec.seeds for strategy in spec.strategies]
    args = (params, spec, out)
    rows: list[dict[str, Any]] = []
    if spec.jobs <= 1:
        for strategy, seed in pairs:
            rows += run_one(*args, strategy, seed, base_eval, train_prompts, eval_prompts)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        threads = max(1, torch.get_num_threads() // spec.jobs)
        with ProcessPoolExecutor(spec.jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                 initargs=(threads,)) as pool:
            futures = [pool.submit(run_one, *args, strategy, seed, base_eval, train_prompts, eval_prompts)
                       for strategy, seed in pairs]
            for future in futures:
                rows += future.result()
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "curves.csv", buf.getvalue())
    summary = summarize(rows, spec, base_eval["strict"])
    summary["settings"] = {"nfe_budget": spec.nfe_budget, "eval_every_nfe": spec.eval_every_nfe,
                           "machine": machine_description(), "jobs": spec.jobs, "date": time.strftime("%Y-%m-%d"),
                           "params": {k: v for k, v in params.model_dump().items()
                                      if k in ("sampler", "train", "aegpo", "reward")}}
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "table.md", table_markdown(summary))
    plot(rows, spec, summary, out / "curves.png")
    return summary


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
