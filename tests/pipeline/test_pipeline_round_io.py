"""flows.round_io: the stored forms of a round (tables, image grid) hold what the issue asks for."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import torch

from aegpo.tables import ROLLOUT_SCHEMA, ROUND_REWARD_SCHEMA, check_schema
from aegpo.trainer import Trainer
from flows.round_io import RunStore, grid_tiles, image_grid, run_fingerprint, run_name
from flows.storage import LocalStorage

from aegpo_testing import shipped_params
from pipeline_helpers import EVAL_PROMPTS, TRAIN_PROMPTS


def test_image_grid_round_trip():
    images = np.random.default_rng(0).integers(0, 255, (19, 4, 5, 3), dtype=np.uint8)
    grid = image_grid(images, columns=8)
    assert grid.shape == (3 * 4, 8 * 5, 3)
    assert np.array_equal(grid_tiles(grid, 19, (4, 5), columns=8), images)


def test_stored_round_tables(tiny_base, tmp_path):
    params = shipped_params([f"model.checkpoint={tiny_base}", "train.out_dir=run", "train.prompts_per_round=2",
                             "train.group_size=3", "sampler.num_steps=4", "model.lora.rank=4", "entropy.layers=[0]",
                             "train.strategy=grpo"])
    t = Trainer(params, TRAIN_PROMPTS, EVAL_PROMPTS, project_dir=tmp_path, progress=False)
    work = t.begin_round()
    t.sample(work)
    store = RunStore(LocalStorage(tmp_path), "run")
    store.save_rollout(0, work.rollout, work.plan)
    rollout, plan = store.load_rollout(0)
    assert np.array_equal(rollout.images, work.rollout.images) and rollout.prompts == work.ctx.prompts
    assert torch.equal(rollout.x_t, work.rollout.x_t) and torch.equal(rollout.plan.train, work.rollout.plan.train)
    assert plan.group_sizes == work.plan.group_sizes
    t.score(work)
    store.save_scores(0, work.ctx.prompt_ids, rollout, work.scored, work.advantages)
    table = pq.read_table(tmp_path / "run/rounds/round-0000/rollouts.parquet")
    check_schema(table, ROLLOUT_SCHEMA)
    check_schema(pq.read_table(tmp_path / "run/rounds/round-0000/rewards.parquet"), ROUND_REWARD_SCHEMA)
    rows = table.to_pylist()
    assert len(rows) == 6 and {"reward_dense", "reward_strict"} <= set(table.schema.names)
    for i, row in enumerate(rows):
        steps = work.rollout.trans_step[work.rollout.trans_sample == i].tolist()
        assert row["train_steps"] == steps and len(row["log_probs"]) == len(steps) and steps
        assert row["image"] == f"images.png#{i}" and len(row["entropy_t"]) == 4
        assert row["prompt"] == work.ctx.prompts[row["group"]]
    scored, adv = store.load_scores(0)
    assert np.array_equal(scored.score, work.scored.score) and torch.equal(adv, work.advantages.float())


def test_run_names_follow_the_resume_rule():
    base = shipped_params([])
    assert run_name(base).startswith("aegpo-")  # the shipped strategy
    same = shipped_params(["train.rounds=99", "eval.num_steps=5", "train.out_dir=elsewhere"])
    assert run_fingerprint(same) == run_fingerprint(base)
    assert run_fingerprint(shipped_params(["train.optim.lr=0.1"])) != run_fingerprint(base)
