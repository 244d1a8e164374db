"""A training run's stored artifacts: what each pipeline stage writes and the next one reads.

Layout in an flows.storage store (`<run>` is the run folder relative to the project, e.g.
`runs/train/aegpo-1a2b3c4d`):

    <run>/rounds/round-NNNN/transitions.safetensors   the rollout (sampling task → update task):
                                                      plan masks, seeds, trained transitions
                                                      (x_t, x_next, old log-probs), final latents,
                                                      Entropy(t); metadata: prompts, plan info
    <run>/rounds/round-NNNN/images.png                the round's images, a grid of GRID_COLUMNS
                                                      tiles (sample i = tile i, row-major)
    <run>/rounds/round-NNNN/rewards.parquet           round rewards + advantages (scoring task → update)
    <run>/rounds/round-NNNN/rollouts.parquet          the rollouts table (aegpo.tables)
    <run>/rounds/round-NNNN.json                      the round record (written by the Trainer)
    <run>/evals/<label>/{eval.json,rows.parquet,images.png}
    <run>/state/, <run>/checkpoint/                   resumable state and trained weights
                                                      (safetensors; trees with a manifest in S3)

Everything is written atomically (flows.storage), and a stage only reads what an earlier stage
finished writing, so a killed run never leaves a half-written table or checkpoint behind.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from aegpo.config import Params, flatten
from aegpo.rewards.base import RewardResult
from aegpo.rollout import Rollout, StepPlan
from aegpo.strategies.base import RoundPlan
from aegpo.tables import (
    EVAL_ROWS_SCHEMA,
    ROLLOUT_SCHEMA,
    ROUND_REWARD_SCHEMA,
    from_parquet_bytes,
    to_parquet_bytes,
    with_metadata,
    with_parts,
)
from flows.storage import Storage, StoredObject

GRID_COLUMNS = 16
RESUMABLE_PREFIXES = ("train.rounds", "train.eval_every", "train.save_every", "eval.", "train.nproc",
                      "train.dist_timeout", "train.data_parallel")  # = Trainer.RESUME_MAY_CHANGE


# ----- run identity -------------------------------------------------------------------------------
def run_fingerprint(params: Params) -> str:
    """SHA-256 of every parameter a resumed run must share (the Trainer refuses to resume otherwise).

    Keys a run may change when resumed (more rounds, other eval cadence) are left out, so a
    run extended from 30 to 50 rounds keeps its folder, its state and its MLflow run.
    """
    flat = json.loads(json.dumps(flatten(params), default=list))
    kept = {k: v for k, v in sorted(flat.items()) if not k.startswith(RESUMABLE_PREFIXES) and k != "train.out_dir"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def run_name(params: Params) -> str:
    """`<strategy>-<fingerprint[:8]>`: same parameters, same name (and folder)."""
    return f"{params.train.strategy}-{run_fingerprint(params)[:8]}"


# ----- images -------------------------------------------------------------------------------------
def image_grid(images: np.ndarray, columns: int = GRID_COLUMNS) -> np.ndarray:
    """(N, H, W, 3) uint8 → one (rows·H, cols·W, 3) grid, tile i at row i // cols, column i % cols."""
    n, h, w, c = images.shape
    cols = max(1, min(columns, n))
    rows = max(1, -(-n // cols))
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = images[i]
    return grid


def grid_tiles(grid: np.ndarray, n: int, tile_hw: tuple[int, int], columns: int = GRID_COLUMNS) -> np.ndarray:
    """The inverse of `image_grid`: the first n tiles, (n, H, W, 3)."""
    h, w = tile_hw
    cols = max(1, min(columns, n))
    out = np.empty((n, h, w, grid.shape[2]), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        out[i] = grid[r * h:(r + 1) * h, q * w:(q + 1) * w]
    return out


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def png_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# ----- rollouts ↔ safetensors ---------------------------------------------------------------------
_ROLLOUT_TENSORS = ("prompt_index", "seeds", "sigmas", "final", "trans_sample", "trans_step", "x_t", "x_next",
                    "log_prob")


def rollout_to_bytes(rollout: Rollout, plan: RoundPlan, round_idx: int) -> bytes:
    """A rollout and its plan as one safetensors file (images are stored separately as PNG)."""
    tensors = {name: getattr(rollout, name).contiguous() for name in _ROLLOUT_TENSORS}
    tensors["plan_sde"] = rollout.plan.sde.contiguous()
    tensors["plan_train"] = rollout.plan.train.contiguous()
    if rollout.entropy_layers is not None:
        tensors["entropy_layers"] = rollout.entropy_layers.contiguous()
    meta = {"round": str(round_idx), "prompts": json.dumps(rollout.prompts), "nfe": str(rollout.nfe),
            "group_sizes": json.dumps(list(plan.group_sizes)), "probe_nfe": str(plan.probe_nfe),
            "plan_info": json.dumps(plan.info, default=_jsonable),
            "image_hw": json.dumps(list(rollout.images.shape[1:3]))}
    return st_save(tensors, metadata=meta)


def rollout_from_bytes(data: bytes, grid: np.ndarray) -> tuple[Rollout, RoundPlan, int]:
    """(rollout, plan, round) from `rollout_to_bytes` output and the round's image grid."""
    tensors = st_load(data)
    meta = safetensors_metadata(data)
    h, w = json.loads(meta["image_hw"])
    images = grid_tiles(grid, int(tensors["prompt_index"].shape[0]), (h, w))
    step_plan = StepPlan(tensors["plan_sde"], tensors["plan_train"])
    rollout = Rollout(prompts=json.loads(meta["prompts"]), plan=step_plan, images=images, nfe=int(meta["nfe"]),
                      entropy_layers=tensors.get("entropy_layers"),
                      **{name: tensors[name] for name in _ROLLOUT_TENSORS})
    plan = RoundPlan(json.loads(meta["group_sizes"]), step_plan, info=json.loads(meta["plan_info"]),
                     probe_nfe=int(meta["probe_nfe"]))
    return rollout, plan, int(meta["round"])


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors file (its header is 8 bytes of length, then JSON)."""
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + length]).get("__metadata__", {}) or {}


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ----- tables ---------------------------------------------------------------------------------------
def round_reward_table(round_idx: int, rollout: Rollout, scored: RewardResult, advantages: torch.Tensor,
                       image_ref: str) -> pa.Table:
    """ROUND_REWARD_SCHEMA + one column per reward part: the scoring task's output."""
    n = rollout.num_samples
    parts = list(scored.parts)
    cols: dict[str, Any] = {
        "round": [round_idx] * n, "sample": list(range(n)), "group": rollout.prompt_index.tolist(),
        "image": [f"{image_ref}#{i}" for i in range(n)],
        "prompt": [rollout.prompts[int(i)] for i in rollout.prompt_index],
        "score": scored.score.astype(np.float64).tolist(), "advantage": advantages.float().tolist(),
        **{p: np.asarray(scored.parts[p], dtype=np.float64).tolist() for p in parts},
    }
    table = pa.Table.from_pydict(cols, schema=with_parts(ROUND_REWARD_SCHEMA, parts))
    return with_metadata(table, {"schema": "round_rewards", "reward_parts": parts})


def scores_from_table(table: pa.Table) -> tuple[RewardResult, torch.Tensor]:
    """(RewardResult, advantages (N,)) back from a round-rewards table, in sample order."""
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    parts = json.loads(meta.get("aegpo.reward_parts", "[]"))
    table = table.sort_by("sample")
    scored = RewardResult(np.asarray(table["score"].to_pylist(), dtype=np.float64),
                          {p: np.asarray(table[p].to_pylist(), dtype=np.float64) for p in parts})
    return scored, torch.tensor(table["advantage"].to_pylist(), dtype=torch.float32)


def rollout_table(round_idx: int, prompt_ids: list[int], rollout: Rollout, scored: RewardResult,
                  advantages: torch.Tensor, image_ref: str) -> pa.Table:
    """The rollouts table (aegpo.tables.ROLLOUT_SCHEMA + `reward_<part>`): one row per sample."""
    n = rollout.num_samples
    group = rollout.prompt_index.tolist()
    sizes = np.bincount(np.asarray(group), minlength=len(rollout.prompts))
    log_probs: list[list[float]] = [[] for _ in range(n)]
    by_sample: list[list[int]] = [[] for _ in range(n)]
    for s, t, lp in zip(rollout.trans_sample.tolist(), rollout.trans_step.tolist(), rollout.log_prob.tolist()):
        by_sample[s].append(t)
        log_probs[s].append(lp)
    ent = rollout.entropy
    parts = list(scored.parts)
    cols: dict[str, Any] = {
        "round": [round_idx] * n, "sample": list(range(n)), "prompt_id": [prompt_ids[g] for g in group],
        "prompt": [rollout.prompts[g] for g in group], "group": group, "group_size": [int(sizes[g]) for g in group],
        "seed": rollout.seeds.tolist(), "image": [f"{image_ref}#{i}" for i in range(n)],
        "reward": scored.score.astype(np.float64).tolist(), "advantage": advantages.float().tolist(),
        "sde_steps": [np.flatnonzero(row).tolist() for row in rollout.plan.sde.numpy()],
        "train_steps": by_sample, "log_probs": log_probs,
        "entropy_t": [[] for _ in range(n)] if ent is None else ent.float().tolist(),
        **{f"reward_{p}": np.asarray(scored.parts[p], dtype=np.float64).tolist() for p in parts},
    }
    table = pa.Table.from_pydict(cols, schema=with_parts(ROLLOUT_SCHEMA, parts, "reward_"))
    return with_metadata(table, {"schema": "rollouts", "reward_parts": parts})


def eval_rows_table(label: str, result: dict[str, Any], samples_per_prompt: int, image_ref: str) -> pa.Table:
    """EVAL_ROWS_SCHEMA + parts: one row per eval prompt (image = its first sample's tile)."""
    rows = result["rows"]
    # sorted: rows read back from a stored JSON (sort_keys) must give the same table as fresh ones
    parts = sorted(k for k in rows[0] if k not in ("prompt", "reward")) if rows else []
    cols: dict[str, Any] = {
        "label": [label] * len(rows), "prompt_id": list(range(len(rows))), "prompt": [r["prompt"] for r in rows],
        "image": [f"{image_ref}#{i * samples_per_prompt}" for i in range(len(rows))],
        "reward": [float(r["reward"]) for r in rows], **{p: [float(r[p]) for r in rows] for p in parts},
    }
    table = pa.Table.from_pydict(cols, schema=with_parts(EVAL_ROWS_SCHEMA, parts))
    return with_metadata(table, {"schema": "eval_rows", "reward_parts": parts})


# ----- the store ------------------------------------------------------------------------------------
@dataclass
class RunStore:
    """The stored artifacts of one run: `storage` holds them under `run_key`."""

    storage: Storage
    run_key: str

    def round_key(self, round_idx: int, name: str = "") -> str:
        base = f"{self.run_key}/rounds/round-{round_idx:04d}"
        return f"{base}/{name}" if name else base

    def eval_key(self, label: str, name: str = "") -> str:
        return f"{self.run_key}/evals/{label}" + (f"/{name}" if name else "")

    # sampling task
    def save_rollout(self, round_idx: int, rollout: Rollout, plan: RoundPlan) -> dict[str, StoredObject]:
        """Images first, then the transitions (the update task keys on the transitions file)."""
        images = self.storage.put_bytes(self.round_key(round_idx, "images.png"), png_bytes(image_grid(rollout.images)))
        trans = self.storage.put_bytes(self.round_key(round_idx, "transitions.safetensors"),
                                       rollout_to_bytes(rollout, plan, round_idx))
        return {"images": images, "transitions": trans}

    def load_rollout(self, round_idx: int) -> tuple[Rollout, RoundPlan]:
        data = self.storage.get_bytes(self.round_key(round_idx, "transitions.safetensors"))
        grid = png_array(self.storage.get_bytes(self.round_key(round_idx, "images.png")))
        rollout, plan, stored_round = rollout_from_bytes(data, grid)
        if stored_round != round_idx:
            raise ValueError(f"{self.storage.uri(self.round_key(round_idx))}: holds round {stored_round}")
        return rollout, plan

    def drop_transitions(self, round_idx: int) -> None:
        """The transitions are only needed until the round's update is saved; they are the bulk of a round."""
        self.storage.delete([self.round_key(round_idx, "transitions.safetensors")])

    # scoring task
    def save_scores(self, round_idx: int, prompt_ids: list[int], rollout: Rollout, scored: RewardResult,
                    advantages: torch.Tensor) -> dict[str, StoredObject]:
        ref = "images.png"
        rewards = self.storage.put_bytes(self.round_key(round_idx, "rewards.parquet"), to_parquet_bytes(
            round_reward_table(round_idx, rollout, scored, advantages, ref)))
        rollouts = self.storage.put_bytes(self.round_key(round_idx, "rollouts.parquet"), to_parquet_bytes(
            rollout_table(round_idx, prompt_ids, rollout, scored, advantages, ref)))
        return {"rewards": rewards, "rollouts": rollouts}

    def load_scores(self, round_idx: int) -> tuple[RewardResult, torch.Tensor]:
        key = self.round_key(round_idx, "rewards.parquet")
        table = from_parquet_bytes(self.storage.get_bytes(key), ROUND_REWARD_SCHEMA, self.storage.uri(key))
        return scores_from_table(table)

    # evaluation task
    def save_eval(self, label: str, result: dict[str, Any], images: np.ndarray | None) -> dict[str, StoredObject]:
        out: dict[str, StoredObject] = {}
        if images is not None and len(images):
            out["images"] = self.storage.put_bytes(self.eval_key(label, "images.png"), png_bytes(image_grid(images)))
        if result.get("rows"):
            table = eval_rows_table(label, result, int(result.get("samples_per_prompt", 1)), "images.png")
            out["rows"] = self.storage.put_bytes(self.eval_key(label, "rows.parquet"), to_parquet_bytes(table))
        out["eval"] = self.storage.put_json(self.eval_key(label, "eval.json"), result)
        return out

    # state and checkpoint (remote stores only: locally they already are where the Trainer wrote them)
    def push_tree(self, local_dir: Path, name: str) -> dict[str, Any] | None:
        key = f"{self.run_key}/{name}"
        if _same_place(self.storage, key, local_dir):
            return None
        return self.storage.put_tree(key, local_dir)

    def pull_tree(self, name: str, local_dir: Path) -> bool:
        """Fetch `<run>/<name>` into `local_dir` if a complete stored copy exists; False if none."""
        key = f"{self.run_key}/{name}"
        if _same_place(self.storage, key, local_dir) or self.storage.tree_manifest(key) is None:
            return False
        self.storage.get_tree(key, local_dir)
        return True

    def push_file(self, local: Path, rel: str) -> None:
        key = f"{self.run_key}/{rel}"
        if not _same_place(self.storage, key, local):
            self.storage.put_file(key, local)


def _same_place(storage: Storage, key: str, local: Path) -> bool:
    path = storage.local_path(key)
    return path is not None and path.resolve() == Path(local).resolve()
