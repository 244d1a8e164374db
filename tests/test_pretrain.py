"""`aegpo pretrain` on a tiny architecture: data mix, LR schedule, stop_at, init_from, determinism."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from aegpo.checkpoint import load_policy
from aegpo.config import ParamsError, load_params
from aegpo.pretrain import ShapesStream, lr_at, pretrain
from aegpo.shapes.prompts import parse_prompt

TINY = ["pretrain.arch.num_layers=1", "pretrain.arch.num_heads=2", "pretrain.arch.head_dim=8",
        "pretrain.arch.text_dim=16", "pretrain.arch.text_layers=1", "pretrain.batch_size=4", "pretrain.warmup=2",
        "pretrain.save_every=2", "pretrain.init_from=''"]


def _params(tmp_path, *extra: str):
    return load_params("params.yaml", [*TINY, f"pretrain.out={tmp_path / 'out'}", *extra])


def test_balanced_mix_draws_prompt_kinds_evenly():
    uniform, balanced = ShapesStream(0, 0.0, "uniform"), ShapesStream(0, 0.0, "balanced")
    kinds_u = Counter(uniform.scenes[i].kind for i in uniform._pick(3000))
    kinds_b = Counter(balanced.scenes[i].kind for i in balanced._pick(3000))
    assert kinds_u["single"] < 100  # 38 of 2,914 train prompts are single objects
    assert all(900 < kinds_b[k] < 1100 for k in ("single", "compound", "relation")), kinds_b
    images, caps = balanced.batch(6)
    assert images.shape == (6, 32, 32, 3) and all(parse_prompt(c) for c in caps if c)


def test_lr_schedule_warmup_constant_and_cosine(tmp_path):
    cfg = _params(tmp_path, "pretrain.steps=102", "pretrain.lr=0.001", "pretrain.stop_at=0",
                  "pretrain.lr_schedule=cosine").pretrain
    assert lr_at(0, cfg) == pytest.approx(0.0005) and lr_at(1, cfg) == pytest.approx(0.001)
    assert lr_at(2, cfg) == pytest.approx(0.001) and lr_at(101, cfg) < 0.0002  # cosine decays to 10%
    const = cfg.model_copy(update={"lr_schedule": "constant"})
    assert lr_at(101, const) == pytest.approx(0.001)


def test_stop_at_writes_out_early_and_runs_are_deterministic(tmp_path):
    params = _params(tmp_path, "pretrain.steps=10", "pretrain.stop_at=3")
    out = pretrain(params, tmp_path / "work")
    meta = json.loads((out / "aegpo_checkpoint.json").read_text())["meta"]
    assert meta["step"] == 3 and meta["pretrain"]["stop_at"] == 3
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == [".aegpo-run.lock", "step-000002"]
    assert (tmp_path / "work" / ".aegpo-run.lock").read_text() == ""  # released: no holder named
    first = load_policy(out).state_dict()

    again = pretrain(_params(tmp_path, "pretrain.steps=10", "pretrain.stop_at=3",
                             f"pretrain.out={tmp_path / 'again'}"), tmp_path / "work2")
    assert all(torch.equal(v, load_policy(again).state_dict()[k]) for k, v in first.items())

    # stage 2 starts from stage 1's weights: a different result than from scratch with the same seed
    two = ("pretrain.steps=2", "pretrain.stop_at=0")
    staged = pretrain(_params(tmp_path, *two, f"pretrain.out={tmp_path / 'staged'}", f"pretrain.init_from={out}"),
                      tmp_path / "work3")
    scratch = pretrain(_params(tmp_path, *two, f"pretrain.out={tmp_path / 'scratch'}"), tmp_path / "work4")
    key = next(k for k in first if k.endswith("weight"))
    assert not torch.equal(load_policy(staged).state_dict()[key], load_policy(scratch).state_dict()[key])


def test_stop_at_beyond_steps_is_rejected(tmp_path):
    with pytest.raises(ParamsError, match="pretrain.stop_at"):
        _params(tmp_path, "pretrain.steps=10", "pretrain.stop_at=11")


def test_grid_layouts_are_aligned_fixed_size_and_still_correct_renders():
    from aegpo.shapes.render import place
    from aegpo.shapes.verify import verify

    stream = ShapesStream(0, 0.0, "balanced", grid=4, size=8)
    for i in stream._pick(200):
        scene = stream.scenes[i]
        objs = place(scene, stream.rng, grid=4, size=8)
        assert all(o.x % 4 == 0 and o.y % 4 == 0 and o.size == 8 for o in objs)
    stream.caption_dropout = 0.0
    images, caps = stream.batch(64)
    scenes = [parse_prompt(c) for c in caps]
    assert all(verify(img, sc).strict == 1 for img, sc in zip(images, scenes))
    # the default (grid 1, random size) keeps the spec's full range of sizes and positions
    free = [o for i in stream._pick(200) for o in place(stream.scenes[i], stream.rng)]
    assert {o.size for o in free} == set(range(6, 11)) and any(o.x % 4 for o in free)


def test_grid_and_object_size_are_validated(tmp_path):
    with pytest.raises(ParamsError, match="pretrain.object_size"):
        _params(tmp_path, "pretrain.object_size=5")
    with pytest.raises(ParamsError, match="pretrain.grid"):
        _params(tmp_path, "pretrain.grid=0")
