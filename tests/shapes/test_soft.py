"""Tests of the graded shape fit (verify.shape_fit) and the soft score (aegpo.shapes.soft)."""

from __future__ import annotations

import numpy as np
import pytest

from aegpo.rewards.shapes import ShapesReward
from aegpo.shapes.prompts import all_scenes, parse_prompt
from aegpo.shapes.render import Placed, draw, render
from aegpo.shapes.soft import soft_score
from aegpo.shapes.spec import CANVAS, COLOURS
from aegpo.shapes.verify import classify, detect, features, shape_fit, verify

COLUMNS = ("circle", "square", "triangle")


def ellipse(colour: str, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """An axis-aligned ellipse, anti-aliased by 4x4 supersampling (a circle stretched by rx/ry)."""
    c = (np.arange(CANVAS * 4) + 0.5) / 4
    px, py = np.meshgrid(c, c)
    inside = ((px - cx) / rx) ** 2 + ((py - cy) / ry) ** 2 <= 1
    a = inside.reshape(CANVAS, 4, CANVAS, 4).mean(axis=(1, 3))[..., None]
    return np.clip(np.rint(a * np.asarray(COLOURS[colour], np.float64)), 0, 255).astype(np.uint8)


def test_fit_is_one_exactly_where_the_classifier_names_the_shape():
    rng = np.random.default_rng(0)
    scenes = all_scenes()
    seen = set()
    for _ in range(300):
        image = render(scenes[rng.integers(len(scenes))], rng)
        feats = features(image)
        fits = shape_fit({k: np.asarray([f[k] for f in feats]) for k in feats[0] if k != "colour"})
        for f, fit in zip(feats, fits):
            shape = classify(f)
            for col, name in enumerate(COLUMNS):
                assert (fit[col] == 1.0) == (shape == name), (f, fit)
            seen.add(shape)
    assert seen == {"circle", "square", "triangle"}


def test_spec_renders_score_one():
    rng = np.random.default_rng(1)
    scenes = all_scenes()
    for _ in range(300):
        scene = scenes[rng.integers(len(scenes))]
        verdict = verify(render(scene, rng), scene)
        assert verdict.strict
        assert soft_score(verdict.objects, scene) == pytest.approx(1.0)


def test_credit_falls_with_distortion():
    """A circle stretched ever more is ever less of a circle; from a 1.3:1 stretch on the verifier calls it unknown."""
    scene = parse_prompt("a red circle")
    scores, shapes = [], []
    for ratio in (1.0, 1.15, 1.3, 1.6, 2.2):
        objs = detect(ellipse("red", 16, 16, 4.0 * ratio, 4.0))
        (obj,) = objs
        shapes.append(obj.shape)
        scores.append(soft_score(objs, scene))
    assert shapes[0] == "circle" and scores[0] == 1.0
    assert all(s == "unknown" for s in shapes[2:])
    assert all(a > b for a, b in zip(scores, scores[1:])), scores
    assert 0.0 < scores[-1] < 0.2


def test_counts_extras_and_relations():
    red = Placed("red", "circle", 3, 3, 8)
    scene = parse_prompt("a red circle")
    assert soft_score(detect(draw([red])), scene) == 1.0
    assert soft_score(detect(draw([])), scene) == 0.0
    # a surplus object of the asked colour dilutes the credit; one of another colour halves it
    assert soft_score(detect(draw([red, Placed("red", "circle", 20, 20, 8)])), scene) == pytest.approx(0.5)
    assert soft_score(detect(draw([red, Placed("blue", "square", 20, 20, 8)])), scene) == pytest.approx(0.5)
    # the wrong shape of the right colour: graded, not zero, and below a right one
    wrong = soft_score(detect(draw([Placed("red", "square", 3, 3, 8)])), scene)
    assert 0.0 < wrong < 1.0
    # relation on the wrong side: two phrase credits of 1, relation credit 0
    rel = parse_prompt("a red circle left of a blue square")
    left, right = Placed("red", "circle", 3, 10, 8), Placed("blue", "square", 20, 10, 8)
    assert soft_score(detect(draw([left, right])), rel) == 1.0
    swapped = [Placed("red", "circle", 20, 10, 8), Placed("blue", "square", 3, 10, 8)]
    assert soft_score(detect(draw(swapped)), rel) == pytest.approx(2 / 3)


def test_reward_part():
    rng = np.random.default_rng(2)
    prompts = ["a red circle", "two blue squares and a green triangle"]
    images = np.stack([render(parse_prompt(p), rng) for p in prompts] + [draw([])])
    result = ShapesReward({"soft": 1.0})(images, prompts + ["a red circle"])
    assert result.parts["soft"].tolist() == [1.0, 1.0, 0.0]
    assert result.score.tolist() == [1.0, 1.0, 0.0]
