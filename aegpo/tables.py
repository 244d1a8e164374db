"""Parquet tables of aegpo: every schema in one place, written atomically.

Tables (one row per ...):

- **entropy profile** (prompt × step × layer): `prompt_id` int32 (position in the prompt set),
  `prompt` string, `prompt_hash` string (SHA-256 hex, first 16), `seed` int64 (probe noise seed),
  `step` int16 (t, 0 = pure noise), `sigma` float32 (σ_t), `layer` int16 (recorded-layer slot),
  `layer_name` string (module name), `entropy` float32 (mean over recorded heads and image queries,
  nats, or ÷ log #keys when normalised). Schema metadata: `aegpo.cache_key`, `aegpo.spec` (JSON:
  base checkpoint digest, prompt-set hash, profiling parameters).
- **rollouts** (sample): `round` int32, `sample` int32, `prompt_id` int32, `prompt` string,
  `group` int32 (prompt position in the round), `group_size` int16, `seed` int64, `image` string
  (reference: file name or URI, may be empty), `reward` float64, `reward_<part>` float64 per
  reward part, `advantage` float32, `sde_steps` list<int16>, `train_steps` list<int16>,
  `log_probs` list<float32> (old log-probs of the trained steps, same order as `train_steps`),
  `entropy_t` list<float32> (Entropy(t) per step; empty when not recorded).
  Written by the pipeline's scoring task: `<run>/rounds/round-NNNN/rollouts.parquet`
  (flows.round_io; `image` is `images.png#i`, tile i of the round's image grid).
- **rewards** (image scored by `aegpo score` or a scoring task): `image` string, `prompt` string,
  `score` float64, one float64 column per reward part.
- **round rewards** (sample of a training round; the scoring task's output, read back by the
  policy-update task): `round` int32, `sample` int32, `group` int32, then the rewards columns,
  then `advantage` float32. `<run>/rounds/round-NNNN/rewards.parquet`.
- **evaluation rows** (eval prompt): `label` string (`base`, `round-0010`, `final`, ...),
  `prompt_id` int32, `prompt` string, `image` string (`images.png#i`), `reward` float64, one
  float64 column per reward part (mean over the prompt's samples). `<run>/evals/<label>/rows.parquet`.

Every table carries schema metadata `aegpo.schema` (its name) and, for per-part tables,
`aegpo.reward_parts` (JSON list). Writes go to a temporary file in the same folder, then an
atomic rename (`write_table`), or to bytes for flows.storage (`to_parquet_bytes`, one atomic
PUT): a reader sees the old table or the new one, never half of one.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

PROFILE_SCHEMA = pa.schema([
    ("prompt_id", pa.int32()), ("prompt", pa.string()), ("prompt_hash", pa.string()), ("seed", pa.int64()),
    ("step", pa.int16()), ("sigma", pa.float32()), ("layer", pa.int16()), ("layer_name", pa.string()),
    ("entropy", pa.float32()),
])

ROLLOUT_SCHEMA = pa.schema([
    ("round", pa.int32()), ("sample", pa.int32()), ("prompt_id", pa.int32()), ("prompt", pa.string()),
    ("group", pa.int32()), ("group_size", pa.int16()), ("seed", pa.int64()), ("image", pa.string()),
    ("reward", pa.float64()), ("advantage", pa.float32()), ("sde_steps", pa.list_(pa.int16())),
    ("train_steps", pa.list_(pa.int16())), ("log_probs", pa.list_(pa.float32())),
    ("entropy_t", pa.list_(pa.float32())),
])  # plus one `reward_<part>` float64 column per reward part, appended at write time

REWARD_SCHEMA = pa.schema([("image", pa.string()), ("prompt", pa.string()), ("score", pa.float64())])
# plus one float64 column per reward part

ROUND_REWARD_SCHEMA = pa.schema([
    ("round", pa.int32()), ("sample", pa.int32()), ("group", pa.int32()), *REWARD_SCHEMA,
    ("advantage", pa.float32()),
])  # plus one float64 column per reward part (named after the part)

EVAL_ROWS_SCHEMA = pa.schema([
    ("label", pa.string()), ("prompt_id", pa.int32()), ("prompt", pa.string()), ("image", pa.string()),
    ("reward", pa.float64()),
])  # plus one float64 column per reward part

SCHEMAS = {"profile": PROFILE_SCHEMA, "rollouts": ROLLOUT_SCHEMA, "rewards": REWARD_SCHEMA,
           "round_rewards": ROUND_REWARD_SCHEMA, "eval_rows": EVAL_ROWS_SCHEMA}


def with_parts(schema: pa.Schema, parts: list[str], prefix: str = "") -> pa.Schema:
    """`schema` plus one float64 column `<prefix><part>` per reward part."""
    for part in parts:
        schema = schema.append(pa.field(f"{prefix}{part}", pa.float64()))
    return schema


class TableError(ValueError):
    """A table file that cannot be read (truncated, not Parquet) or lacks a column."""


def to_parquet_bytes(table: pa.Table) -> bytes:
    """The Parquet file of `table` as bytes (for flows.storage: one atomic PUT)."""
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def from_parquet_bytes(data: bytes, schema: pa.Schema | None = None, source: str = "table") -> pa.Table:
    """Read a table from bytes; with `schema`, check that its columns and types are there."""
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as err:
        raise TableError(f"table {source} is not a readable Parquet file ({str(err)[:200]}); "
                         "it is damaged: write it again") from None
    if schema is not None:
        check_schema(table, schema, source)
    return table


def with_metadata(table: pa.Table, meta: dict[str, Any]) -> pa.Table:
    existing = table.schema.metadata or {}
    extra = {f"aegpo.{k}".encode(): (v if isinstance(v, str) else json.dumps(v, sort_keys=True)).encode()
             for k, v in meta.items()}
    return table.replace_schema_metadata({**existing, **extra})


def read_metadata(path: str | Path) -> dict[str, str]:
    try:
        meta = pq.read_schema(str(path)).metadata or {}
    except (pa.ArrowException, OSError) as err:
        raise TableError(f"table {path} is not a readable Parquet file ({str(err)[:200]}); "
                         "it is damaged: delete it or write it again") from None
    return {k.decode()[len("aegpo."):]: v.decode() for k, v in meta.items() if k.startswith(b"aegpo.")}


def write_table(table: pa.Table, path: str | Path) -> Path:
    """Write `table` to `path` (local) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_table(path: str | Path, schema: pa.Schema | None = None) -> pa.Table:
    """Read a table; with `schema`, check that its columns and types are there."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"table {path} does not exist")
    try:
        table = pq.read_table(str(path))
    except (pa.ArrowException, OSError) as err:
        raise TableError(f"table {path} is not a readable Parquet file ({str(err)[:200]}); "
                         "it is damaged (truncated or not Parquet): delete it or write it again") from None
    if schema is not None:
        check_schema(table, schema, str(path))
    return table


def check_schema(table: pa.Table, schema: pa.Schema, source: str = "table") -> None:
    """Raise ValueError naming the column when `table` lacks a column of `schema` or has another type."""
    for field in schema:
        if field.name not in table.schema.names:
            raise TableError(f"table {source}: column {field.name!r} is missing")
        if not table.schema.field(field.name).type.equals(field.type):
            raise TableError(f"table {source}: column {field.name!r} is {table.schema.field(field.name).type}, "
                             f"expected {field.type}")
