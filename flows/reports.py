"""Run reports for DVC: metrics JSON and plot CSVs built from a run folder's round records.

Files (all rewritten whole and atomically, from `<run>/rounds/round-NNNN.json` and
`<run>/eval_base.json`):

    rewards.csv        round, reward_mean, reward_std, reward_<part>..., loss, kl, clip_frac,
                       grad_norm, nfe                                   (one row per round)
    eval_curve.csv     rounds_done, <the reward's metrics>              (0 = the base policy; shapes:
                       strict, dense, reward)
    entropy_alloc.csv  round, prompt_id, delta_entropy, group_size, reward_mean
                       (one row per prompt and round that measured ΔEntropy; header only for
                       strategies without it, e.g. grpo)
    train_metrics.json rounds, nfe, strategy, reward_mean (last round), base_eval (the base policy before
                       round 0: strict, dense, reward)
    checkpoint.json    sha256 of the run's final checkpoint (its manifest and weight files): what the
                       DVC `evaluate` stage depends on, since the checkpoint itself is not in git

`dvc metrics show` lists each figure once: the trained policy's final accuracy is `reports/eval.json`
(the `evaluate` stage), the base policy's is `base_eval.*` here, the curve in between eval_curve.csv.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any

from aegpo.eval_metrics import eval_summary, metric_names
from aegpo.io_utils import atomic_write_json, atomic_write_text
from aegpo.record import RoundRecord

REWARD_COLUMNS = ("round", "reward_mean", "reward_std")
POLICY_COLUMNS = ("loss", "kl", "clip_frac", "grad_norm", "nfe")
ALLOC_COLUMNS = ("round", "prompt_id", "delta_entropy", "group_size", "reward_mean")


def load_records(run_dir: str | Path) -> list[RoundRecord]:
    """The run's round records, in round order."""
    return [RoundRecord.from_json(json.loads(p.read_text(encoding="utf-8")))
            for p in sorted(Path(run_dir).glob("rounds/round-*.json"))]


def load_base_eval(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "eval_base.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _csv(header: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in header})
    return buf.getvalue()


def _eval_point(rounds_done: int, ev: dict[str, Any]) -> dict[str, Any]:
    return {"rounds_done": rounds_done, **ev}


def allocation_rows(record: RoundRecord) -> list[dict[str, Any]]:
    """Per-prompt ΔEntropy and group size of one round (empty when the strategy measures no ΔEntropy)."""
    plan = record.plan
    delta = plan.get("delta_entropy")
    if delta is None:
        return []
    rows = []
    for i, pp in enumerate(record.per_prompt):
        rows.append({"round": record.round, "prompt_id": pp.prompt_id, "prompt": pp.prompt,
                     "delta_entropy": delta[i], "group_size": pp.group_size, "reward_mean": pp.reward_mean,
                     "base_entropy": (plan.get("base_entropy") or [None] * (i + 1))[i],
                     "current_entropy": (plan.get("current_entropy") or [None] * (i + 1))[i],
                     "chosen_steps": " ".join(map(str, (plan.get("chosen_steps") or [[]] * (i + 1))[i]))})
    return rows


def write_reports(run_dir: str | Path, reports_dir: str | Path, strategy: str = "") -> dict[str, Any]:
    """Write the report files into `reports_dir`; returns the metrics dict (train_metrics.json)."""
    records = load_records(run_dir)
    base_eval = load_base_eval(run_dir)
    out = Path(reports_dir)
    parts = sorted({f"reward_{k}" for r in records for k in r.reward_parts})
    reward_header = [*REWARD_COLUMNS, *parts, *POLICY_COLUMNS]
    atomic_write_text(out / "rewards.csv", _csv(reward_header, [r.to_json() for r in records]))
    curve = [_eval_point(0, base_eval)] if base_eval else []
    curve += [_eval_point(r.round + 1, r.eval) for r in records if r.eval]
    names = metric_names(next((r.eval for r in reversed(records) if r.eval), None) or base_eval or {})
    atomic_write_text(out / "eval_curve.csv", _csv(["rounds_done", *names], curve))
    alloc = [row for r in records for row in allocation_rows(r)]
    atomic_write_text(out / "entropy_alloc.csv", _csv(list(ALLOC_COLUMNS), alloc))
    metrics = {
        "strategy": strategy, "rounds": len(records), "nfe": records[-1].nfe if records else 0,
        "reward_mean": records[-1].reward_mean if records else None, "base_eval": _summary(base_eval),
        **_first_round(records),
    }
    atomic_write_json(out / "train_metrics.json", metrics)
    checkpoint = Path(run_dir) / "checkpoint"
    if checkpoint.is_dir():
        atomic_write_json(out / "checkpoint.json", checkpoint_digest(checkpoint))
    return metrics


def _first_round(records: list) -> dict[str, Any]:
    """Time to the first round and AEGPO's explored-step direction (with the `auto` calibration's evidence)."""
    first = next((r for r in records if r.round == 0), None)
    if first is None:
        return {}
    out: dict[str, Any] = {}
    if first.seconds_to_first_round is not None:
        out["seconds_to_first_round"] = first.seconds_to_first_round
    plan = first.plan or {}
    if plan.get("peak_direction"):
        out["peak_direction"] = plan["peak_direction"]
    cal = plan.get("peak_calibration")
    if cal:
        out["peak_calibration"] = {k: cal.get(k) for k in ("rho", "ci_low", "ci_high", "prompts", "group", "nfe",
                                                           "reason")}
    return out


def checkpoint_digest(folder: str | Path) -> dict[str, Any]:
    """{'sha256': of the whole folder, 'files': {name: sha256}} over every file in `folder` (sorted by name)."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    whole = hashlib.sha256("".join(f"{name}\0{digest}\n" for name, digest in files.items()).encode()).hexdigest()
    return {"sha256": whole, "files": files}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _summary(ev: dict[str, Any] | None) -> dict[str, Any] | None:
    return eval_summary(ev)  # no nfe: the base evaluation's cost is eval.json's eval_nfe, one name per figure
