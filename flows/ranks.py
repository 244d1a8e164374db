"""One rank of a multi-process training flow: `torchrun ... -m flows.ranks --spec SPEC.json`.

The training flow (flows/train.py) starts this under torchrun on its worker when the run has
more than one process (`nproc`, or `train.nproc`). Every rank trains its share of each round
(aegpo.distributed); what the single-process flow does in its tasks happens here:

- each rank stores its rollout-table shard `rounds/round-NNNN/rollouts-rank-RR.parquet` and its
  images `images-rank-RR.png` (the table's `sample` column holds global sample indices);
- rank 0 alone holds the run lock, writes state/checkpoint/records (the Trainer does) and stores
  evaluations, and logs rounds and evaluations to the MLflow run of the flow.

The flow publishes the Prefect artifacts once the ranks are done (from the stored round records).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from aegpo import distributed
from aegpo.record import RoundRecord
from aegpo.tables import to_parquet_bytes
from flows.round_io import RunStore, image_grid, png_bytes, rollout_table
from flows.spec import RunSpec, read_prompts
from flows.storage import open_storage

log = logging.getLogger("aegpo.flows.ranks")


def shard_name(rank: int, kind: str) -> str:
    return f"rollouts-rank-{rank:02d}.parquet" if kind == "rollouts" else f"images-rank-{rank:02d}.png"


def run_ranks(spec: RunSpec) -> dict[str, Any]:
    """Train `spec`'s run to its last round on this rank; returns where it stands (rank 0's view)."""
    import pyarrow as pa

    from aegpo.trainer import Trainer
    from flows.session import RunLock, _profile_path, _pull_remote_progress

    params = spec.params()
    device = distributed.init(params.model.device, params.train.dist_timeout)
    log.info("rank %d of %d on %s", distributed.rank(), distributed.world_size(), device)
    store = RunStore(open_storage(spec.storage_uri, spec.project), spec.run_key)
    lock = None
    try:
        if distributed.is_main():
            lock = RunLock(spec.run_path)  # one run folder, one run: other flows wait (rank 0 holds it)
            _pull_remote_progress(store, spec.run_path)
        profile_path = distributed.broadcast_object(
            str(_profile_path(spec, store, spec.run_path)) if distributed.is_main() and spec.base_profile_key else None)
        trainer = Trainer(params, read_prompts(params, spec.project, "train"),
                          read_prompts(params, spec.project, "eval"),
                          project_dir=spec.project, progress=False, base_profile_path=profile_path)
        tracker = _tracker(spec) if distributed.is_main() else None
        if trainer.base_eval_due():
            result, images = trainer.evaluate_base()
            if tracker is not None:
                _store_eval(spec, store, tracker, "base", 0, result, images)
        publish = None if tracker is None else (lambda record: _publish_round(spec, store, tracker, trainer, record))
        while trainer.round < params.train.rounds:
            work = trainer.begin_round()
            trainer.sample(work)
            trainer.score(work)
            r, rank = work.ctx.round, distributed.rank()
            table = rollout_table(r, work.ctx.prompt_ids, work.rollout, work.scored, work.advantages,
                                  shard_name(rank, "images"))
            table = table.set_column(table.schema.get_field_index("sample"), "sample",
                                     pa.array(work.shard[0].tolist() if work.shard is not None
                                              else list(range(work.rollout.num_samples)), pa.int64()))
            store.storage.put_bytes(store.round_key(r, shard_name(rank, "images")),
                                    png_bytes(image_grid(work.rollout.images)))
            store.storage.put_bytes(store.round_key(r, shard_name(rank, "rollouts")), to_parquet_bytes(table))
            trainer.optimize(work)
            trainer.end_round(work, publish=publish)
        return {"round": trainer.round, "nfe": trainer.nfe, "ranks": distributed.world_size()}
    finally:
        if lock is not None:
            lock.close()
        distributed.teardown()


def _tracker(spec: RunSpec):
    from flows.tracking import Tracker

    return Tracker(spec.tracking_uri, spec.experiment) if spec.mlflow_run_id else None


def _store_eval(spec: RunSpec, store: RunStore, tracker, label: str, rounds_done: int, result: dict[str, Any],
                images) -> None:
    store.save_eval(label, result, images)
    tracker.log_evaluation(spec.mlflow_run_id, label, rounds_done, result, images, {"aegpo.run_dir": spec.run_dir})


def _publish_round(spec: RunSpec, store: RunStore, tracker, trainer, record: RoundRecord) -> None:
    """Rank 0's round callback: the evaluation (when the round had one) and the round's MLflow metrics."""
    r = record.round
    if record.eval:
        _store_eval(spec, store, tracker, f"round-{r + 1:04d}", r + 1, record.eval, trainer.last_eval_images)
    media = spec.media_every > 0 and (r + 1) % spec.media_every == 0
    tracker.log_round(spec.mlflow_run_id, record, None, media)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.ranks", description=__doc__.splitlines()[0])
    p.add_argument("--spec", required=True, help="the RunSpec as JSON (written by the training flow)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"rank {distributed.rank_env()} %(levelname)s %(name)s: %(message)s")
    spec = RunSpec.model_validate_json(Path(args.spec).read_text(encoding="utf-8"))
    run_ranks(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
