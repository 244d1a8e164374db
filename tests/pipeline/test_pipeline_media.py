"""flows.media and the MLflow side of it: readable sample grids, the allocation table, the training view."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from aegpo.record import RoundRecord
from flows import media
from flows.tracking import ALLOCATION_TABLE, EXPERIMENT_KIND_TAG, TRAINING_KIND, Tracker

RECORD = RoundRecord.from_json({
    "round": 3, "nfe": 1200, "reward_mean": 0.5, "reward_std": 0.1, "entropy_t": [4.0, 4.1, 4.2],
    "per_prompt": [{"prompt": "a red circle", "prompt_id": 5, "group_size": 4, "reward_mean": 0.5, "reward_std": 0.1},
                   {"prompt": "two blue squares", "prompt_id": 9, "group_size": 2, "reward_mean": 0.5,
                    "reward_std": 0.0}],
    "plan": {"delta_entropy": [0.3, 0.1], "base_entropy": [4.0, 4.1], "current_entropy": [4.3, 4.2],
             "group_sizes": [4, 2], "chosen_steps": [[0, 1], [1, 2]]},
})


def _tiles(n: int, side: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, size=(n, side, side, 3), dtype=np.uint8)


def test_upscale_is_nearest_neighbour():
    img = _tiles(1, 4)
    big = media.upscale(img, 3)
    assert big.shape == (1, 12, 12, 3)
    assert np.array_equal(big[0, ::3, ::3], img[0]) and np.array_equal(big[0, 2::3, 1::3], img[0])
    with pytest.raises(ValueError, match="factor"):
        media.upscale(img, 0)


def test_eval_grid_is_one_captioned_row_per_prompt_of_upscaled_tiles():
    images = _tiles(6)
    rows = [{"prompt": f"prompt number {i}", "reward": 0.5, "strict": 0.25} for i in range(3)]
    grid = media.eval_grid(images, rows, samples_per_prompt=2, title="Evaluation")
    f = media.scale_for(32)
    assert f == 3
    assert grid.shape[1] == media.CAPTION_WIDTH + 2 * (32 * f + 4) + 4  # two samples per row
    assert grid.shape[0] >= 3 * 32 * f
    # The second prompt's first sample is there, upscaled pixel for pixel.
    big = media.upscale(images[2:3], f)[0]
    found = [(y, x) for y in range(grid.shape[0] - big.shape[0]) for x in (media.CAPTION_WIDTH,)
             if np.array_equal(grid[y:y + big.shape[0], x:x + big.shape[1]], big)]
    assert len(found) == 1
    caption = grid[:, : media.CAPTION_WIDTH - 10]
    assert (caption < 128).any()  # text was drawn beside the tiles
    with pytest.raises(ValueError, match="5 images for 3 prompts × 2 samples"):
        media.eval_grid(images[:5], rows, samples_per_prompt=2)


def test_eval_grid_shows_at_most_max_rows_prompts():
    rows = [{"prompt": f"p{i}", "reward": 0.1} for i in range(40)]
    small = media.eval_grid(_tiles(40), rows, samples_per_prompt=1, max_rows=4)
    big = media.eval_grid(_tiles(40), rows, samples_per_prompt=1, max_rows=8)
    assert big.shape[0] > small.shape[0] and big.shape[1] == small.shape[1]


def test_rollout_grid_follows_the_groups():
    grid = media.rollout_grid(_tiles(6), RECORD)
    assert grid.shape[1] == media.CAPTION_WIDTH + 4 * (96 + 4) + 4  # the widest group has 4 rollouts
    with pytest.raises(ValueError, match="5 images but the groups of round 3 hold 6"):
        media.rollout_grid(_tiles(5), RECORD)


def test_tiles_of_inverts_the_stored_grid():
    from flows.round_io import image_grid

    tiles = _tiles(20, 8)
    assert np.array_equal(media.tiles_of(image_grid(tiles), 20), tiles)
    with pytest.raises(ValueError, match="does not hold 33 tiles"):
        media.tiles_of(image_grid(tiles), 33)


def test_experiment_is_marked_as_model_training(mlflow_db, tmp_path):
    client = MlflowClient(mlflow_db)
    exp_id = Tracker(mlflow_db, "fresh", (tmp_path / "a").as_uri()).experiment_id
    assert client.get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    old = client.create_experiment("old", (tmp_path / "b").as_uri())  # made before the tag existed
    assert Tracker(mlflow_db, "old").experiment_id == old
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    chosen = client.create_experiment("chosen", (tmp_path / "c").as_uri(),
                                      tags={EXPERIMENT_KIND_TAG: "genai_development"})
    Tracker(mlflow_db, "chosen").experiment_id
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"  # a user's choice stays


def test_allocation_table_grows_by_round_and_a_relogged_round_replaces_its_rows(mlflow_db, tmp_path):
    tracker = Tracker(mlflow_db, "exp", (tmp_path / "mlruns").as_uri())
    run = tracker.start_training_run("x", {"aegpo.run_dir": "r", "aegpo.fingerprint": "f", "aegpo.kind": "training"},
                                     {}, {})
    tracker.log_allocation(run, RECORD)
    tracker.log_allocation(run, replace(RECORD, round=4))
    changed = replace(RECORD, per_prompt=[replace(p, group_size=p.group_size + 1) for p in RECORD.per_prompt])
    tracker.log_allocation(run, changed)  # round 3 again (a resumed run redoes it)
    client = MlflowClient(mlflow_db)
    table = pd.read_json(client.download_artifacts(run, ALLOCATION_TABLE, str(tmp_path)), orient="split")
    assert list(table["round"]) == [3, 3, 4, 4]
    assert list(table["budget"]) == [5, 3, 4, 2]
    assert list(table.columns[:4]) == ["key", "delta_entropy", "budget", "explored_steps"]
    assert table["key"][0] == "r3 a red circle" and {"round", "prompt"} <= set(table.columns)
    assert table["explored_steps"][0] == "0 1"
    logged = json.loads(client.get_run(run).data.tags["mlflow.loggedArtifacts"])
    assert {"path": ALLOCATION_TABLE, "type": "table"} in logged  # what the UI's table view lists


def test_final_media_is_logged_once(mlflow_db, tmp_path):
    from flows.round_io import image_grid

    tracker = Tracker(mlflow_db, "exp", (tmp_path / "mlruns").as_uri())
    run = tracker.start_training_run("x", {"aegpo.run_dir": "r", "aegpo.fingerprint": "f", "aegpo.kind": "training"},
                                     {}, {})
    grid = image_grid(_tiles(6))
    tracker.log_final_media(run, RECORD, grid)
    tracker.log_final_media(run, RECORD, grid)
    client = MlflowClient(mlflow_db)
    assert [a.path for a in client.list_artifacts(run, "plots/entropy_t")] == ["plots/entropy_t/round-0003.png"]
    pngs = [a.path for a in client.list_artifacts(run, "images") if a.path.endswith(".png")]
    assert len(pngs) == 1 and pngs[0].startswith("images/rollout-samples+step+3+")
