"""Tests of aegpo.shapes.verify, largely against an independent renderer written here from the spec text.

The renderer below deliberately shares no code with aegpo.shapes.render: objects have float
sizes in [6, 10] and float positions, coverage is estimated with 8x8 stratified-jittered
supersampling from edge functions, and optional Gaussian pixel noise, slight blur, a
per-object colour drift and a grey haze are applied.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

# ------------------------------------------------------------------ the spec, verbatim
SPEC_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 200),
    "white": (235, 235, 235),
}
SPEC_SHAPES = ("circle", "square", "triangle")
SPEC_RELATIONS = ("left of", "right of", "above", "below")
SIDE = 32
SS = 8  # supersampling per axis


# ------------------------------------------------------------------ independent renderer
def ind_centroid(shape: str, x0: float, y0: float, s: float) -> tuple[float, float]:
    """Centroid of a shape whose bounding box has top-left (x0, y0) and side s (y down)."""
    return x0 + s / 2, y0 + (2 * s / 3 if shape == "triangle" else s / 2)


def ind_coverage(shape: str, x0: float, y0: float, s: float, rng: np.random.Generator) -> np.ndarray:
    """Per-pixel coverage in [0, 1] by jittered supersampling (SS x SS samples per pixel)."""
    jit = rng.random((SIDE * SS, SIDE * SS, 2))
    base = np.arange(SIDE * SS) / SS
    px = base[None, :] + jit[..., 0] / SS  # sample x, pixel units
    py = base[:, None] + jit[..., 1] / SS
    if shape == "circle":
        r = s / 2
        inside = np.hypot(px - (x0 + r), py - (y0 + r)) < r
    elif shape == "square":
        inside = (px > x0) & (px < x0 + s) & (py > y0) & (py < y0 + s)
    elif shape == "triangle":
        # apex (x0 + s/2, y0), base corners (x0, y0 + s) and (x0 + s, y0 + s); edge functions
        ax, ay, bx, by, cx, cy = x0 + s / 2, y0, x0 + s, y0 + s, x0, y0 + s
        e1 = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
        e2 = (cx - bx) * (py - by) - (cy - by) * (px - bx)
        e3 = (ax - cx) * (py - cy) - (ay - cy) * (px - cx)
        inside = (e1 > 0) & (e2 > 0) & (e3 > 0)
    else:
        raise ValueError(shape)
    return inside.reshape(SIDE, SS, SIDE, SS).mean(axis=(1, 3))


def ind_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    out = np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), 0, img)
    return np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), 1, out)


def ind_draw(objs, rng, noise=0.0, blur=0.0, drift=0.0, haze=0.0) -> np.ndarray:
    """objs: (colour, shape, x0, y0, size); optional noise sigma, blur sigma, colour drift, grey haze."""
    img = np.full((SIDE, SIDE, 3), float(haze))
    for colour, shape, x0, y0, s in objs:
        c = np.asarray(SPEC_COLOURS[colour], float)
        if drift:
            c = np.clip(c + rng.uniform(-drift, drift, 3), 0, 255)
        img += ind_coverage(shape, x0, y0, s, rng)[..., None] * c
    if blur:
        img = ind_blur(img, blur)
    if noise:
        img += rng.normal(0, noise, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ independent scenes
def _noun(shape: str, n: int) -> str:
    return shape + ("s" if n > 1 else "")


def random_request(rng: np.random.Generator) -> tuple[str, list[tuple[int, str, str]], str | None]:
    """(prompt, [(count, colour, shape), ...], relation) for a random prompt of any kind."""
    kinds = [(c, s) for c in SPEC_COLOURS for s in SPEC_SHAPES]
    kind = rng.choice(["single", "compound", "relation"])
    one = lambda: str(rng.choice(["a", "an", "one"]))  # noqa: E731
    word = {2: "two", 3: "three"}
    if kind == "single":
        c, s = kinds[rng.integers(len(kinds))]
        n = int(rng.integers(1, 4))
        return f"{one() if n == 1 else word[n]} {c} {_noun(s, n)}", [(n, c, s)], None
    i, j = rng.choice(len(kinds), 2, replace=False)
    (c1, s1), (c2, s2) = kinds[i], kinds[j]
    if kind == "relation":
        rel = str(rng.choice(SPEC_RELATIONS))
        return f"{one()} {c1} {s1} {rel} {one()} {c2} {s2}", [(1, c1, s1), (1, c2, s2)], rel
    n1 = int(rng.integers(1, 4))
    n2 = int(rng.integers(1, 5 - n1)) if n1 < 3 else 1
    p1 = f"{one() if n1 == 1 else word[n1]} {c1} {_noun(s1, n1)}"
    p2 = f"{one() if n2 == 1 else word[n2]} {c2} {_noun(s2, n2)}"
    return f"{p1} and {p2}", [(n1, c1, s1), (n2, c2, s2)], None


def rel_ok(rel: str, a: tuple[float, float], b: tuple[float, float], margin: float) -> bool:
    dx, dy = b[0] - a[0], b[1] - a[1]  # y grows downwards
    return {"left of": dx, "right of": -dx, "above": dy, "below": -dy}[rel] >= margin


def _apart(a, b, gap: float) -> bool:
    (_, _, ax, ay, asz), (_, _, bx, by, bsz) = a, b
    return ax + asz + gap <= bx or bx + bsz + gap <= ax or ay + asz + gap <= by or by + bsz + gap <= ay


def ind_place(kinds, rng, relation=None, gap=1.0, margin=0.5, tries=5000):
    """Float sizes in [6, 10] and float positions; bounding boxes at least `gap` apart."""
    for _ in range(tries):
        objs = []
        for colour, shape in kinds:
            s = rng.uniform(6, 10)
            x0, y0 = rng.uniform(0, SIDE - s, 2)
            cand = (colour, shape, x0, y0, s)
            if not all(_apart(cand, o, gap) for o in objs):
                break
            objs.append(cand)
        else:
            if relation is None or rel_ok(relation, ind_centroid(*objs[0][1:]), ind_centroid(*objs[1][1:]), margin):
                return objs
    raise RuntimeError("placement failed")


def kinds_of(phrases):
    return [(c, s) for n, c, s in phrases for _ in range(n)]


VARIANTS = {
    "clean": {},
    "noise6": dict(noise=6.0),
    "noise6+blur0.5": dict(noise=6.0, blur=0.5),
    "noise6+drift30": dict(noise=6.0, drift=30.0),
    "noise6+haze30": dict(noise=6.0, haze=30.0),
    "all: noise6+blur0.5+drift30+haze20": dict(noise=6.0, blur=0.5, drift=30.0, haze=20.0),
}


# ------------------------------------------------------------------ tests
from aegpo.shapes.verify import Detected, Verdict, detect, verify, verify_batch, verify_prompt  # noqa: E402


def test_independent_renders_pass_strict():
    rng = np.random.default_rng(1234)
    per_variant = 100  # 600 images in all
    total = passed = 0
    rates = {}
    fails = []
    for name, kw in VARIANTS.items():
        ok = 0
        for _ in range(per_variant):
            prompt, phrases, rel = random_request(rng)
            objs = ind_place(kinds_of(phrases), rng, rel)
            v = verify_prompt(ind_draw(objs, rng, **kw), prompt)
            ok += v.strict
            if not v.strict:
                fails.append((name, prompt, v.constraints, [(o.colour, o.shape) for o in v.objects]))
        rates[name] = ok / per_variant
        total += per_variant
        passed += ok
    rate = passed / total
    msg = f"strict rate {rate:.4f} on {total} independent renders; per variant {rates}; failures {fails[:5]}"
    print(msg)
    assert rate >= 0.98, msg
    assert min(rates.values()) >= 0.95, msg


def test_touching_boxes_still_pass():
    """Bounding boxes allowed to touch (gap 0) and relations with any positive margin."""
    rng = np.random.default_rng(77)
    n = 150
    ok = sum(
        verify_prompt(ind_draw(ind_place(kinds_of(ph), rng, rel, gap=0.0, margin=0.05), rng, noise=6.0), p).strict
        for p, ph, rel in (random_request(rng) for _ in range(n))
    )
    print(f"strict rate {ok / n:.4f} with touching boxes")
    assert ok / n >= 0.97, f"strict rate {ok / n:.4f} with touching boxes"


def test_own_renderer_passes_strict():
    from aegpo.shapes.prompts import all_scenes
    from aegpo.shapes.render import render

    rng = np.random.default_rng(5)
    scenes = all_scenes()
    picks = rng.choice(len(scenes), 500, replace=False)
    ok = sum(verify(render(scenes[i], rng), scenes[i]).strict for i in picks)
    assert ok / 500 >= 0.98, f"strict rate {ok / 500:.4f} on our own renderer"


def _perturb(phrases, rel, how, rng):
    """Objects of a render that breaks the request in the way `how` names (None if not applicable)."""
    kinds = kinds_of(phrases)
    other = [(c, s) for c in SPEC_COLOURS for s in SPEC_SHAPES]
    if how == "missing":
        kinds.pop(int(rng.integers(len(kinds))))
    elif how == "surplus":
        if len(kinds) >= 4:
            return None
        kinds.append(kinds[int(rng.integers(len(kinds)))])
    elif how == "unrequested":
        if len(kinds) >= 4:
            return None
        asked = {(c, s) for _, c, s in phrases}
        extra = [k for k in other if k not in asked]
        kinds.append(extra[int(rng.integers(len(extra)))])
    elif how in ("colour", "shape"):
        i = int(rng.integers(len(kinds)))
        c, s = kinds[i]
        if how == "colour":
            c = str(rng.choice([x for x in SPEC_COLOURS if x != c]))
        else:
            s = str(rng.choice([x for x in SPEC_SHAPES if x != s]))
        kinds[i] = (c, s)
    elif how == "relation":
        if rel is None:
            return None
        flip = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
        return ind_place(kinds, rng, flip[rel], margin=0.5)
    return ind_place(kinds, rng, rel if how in ("surplus", "unrequested") else None)


@pytest.mark.parametrize("how", ["missing", "surplus", "unrequested", "colour", "shape", "relation"])
def test_broken_renders_fail_strict(how):
    rng = np.random.default_rng(zlib.crc32(how.encode()))
    tried = wrong = 0
    bad = []
    while tried < 60:
        prompt, phrases, rel = random_request(rng)
        if how == "relation" and rel is None:
            continue
        objs = _perturb(phrases, rel, how, rng)
        if objs is None:
            continue
        v = verify_prompt(ind_draw(objs, rng, noise=6.0), prompt)
        tried += 1
        if v.strict:
            wrong += 1
            bad.append((prompt, objs))
    assert wrong == 0, f"{wrong}/{tried} broken renders got strict 1: {bad[:3]}"


def _img(*objs, noise=0.0, seed=0):
    return ind_draw(list(objs), np.random.default_rng(seed), noise=noise)


def test_dense_is_fraction_of_constraints_met():
    # compound: red circle present, only one of two blue squares
    img = _img(("red", "circle", 3, 3, 8), ("blue", "square", 18, 18, 8))
    v = verify_prompt(img, "a red circle and two blue squares")
    assert v.constraints == (("1 red circle", True), ("2 blue square", False))
    assert v.dense == pytest.approx(0.5) and not v.strict and v.extra == 0

    # relation broken: both objects right, wrong side
    v = verify_prompt(
        _img(("green", "triangle", 20, 10, 9), ("yellow", "circle", 3, 10, 9)),
        "a green triangle left of a yellow circle",
    )
    assert v.constraints == (
        ("1 green triangle", True),
        ("1 yellow circle", True),
        ("green triangle left of yellow circle", False),
    )
    assert v.dense == pytest.approx(2 / 3) and not v.strict

    # the same scene read the other way round passes
    v = verify_prompt(
        _img(("green", "triangle", 20, 10, 9), ("yellow", "circle", 3, 10, 9)),
        "a green triangle right of a yellow circle",
    )
    assert v.dense == 1.0 and v.strict

    # relation with a missing object: count and relation both fail
    v = verify_prompt(_img(("green", "triangle", 20, 10, 9)), "a green triangle above a yellow circle")
    assert v.dense == pytest.approx(1 / 3) and not v.strict

    # every constraint met but an unrequested object: dense 1, strict 0
    v = verify_prompt(_img(("red", "circle", 3, 3, 8), ("white", "square", 20, 20, 7)), "a red circle")
    assert v.dense == 1.0 and not v.strict and v.extra == 1

    # one too many: count fails, the surplus is extra
    v = verify_prompt(
        _img(("blue", "square", 2, 2, 7), ("blue", "square", 20, 2, 7), ("blue", "square", 10, 20, 7)),
        "two blue squares",
    )
    assert v.dense == 0.0 and not v.strict and v.extra == 1

    # wrong colour, wrong shape
    assert verify_prompt(_img(("green", "circle", 10, 10, 8)), "a red circle").dense == 0.0
    assert verify_prompt(_img(("red", "square", 10, 10, 8)), "a red circle").dense == 0.0

    # blank canvas
    v = verify_prompt(np.zeros((32, 32, 3), np.uint8), "three white triangles")
    assert v.dense == 0.0 and v.objects == () and not v.strict


def test_detect_single_objects():
    rng = np.random.default_rng(3)
    for shape in SPEC_SHAPES:
        for colour in SPEC_COLOURS:
            s = rng.uniform(6, 10)
            x0, y0 = rng.uniform(0, SIDE - s, 2)
            (d,) = detect(ind_draw([(colour, shape, x0, y0, s)], rng, noise=6.0))
            assert isinstance(d, Detected) and (d.colour, d.shape) == (colour, shape)
            cx, cy = ind_centroid(shape, x0, y0, s)
            assert abs(d.centroid[0] - cx) < 0.2 and abs(d.centroid[1] - cy) < 0.2, (d, cx, cy)
            true_area = {"circle": np.pi * s * s / 4, "square": s * s, "triangle": s * s / 2}[shape]
            assert d.area == pytest.approx(true_area, rel=0.12)


def _blob(mask_fn, x0=10.0, y0=10.0, s=9.0, colour="red"):
    c = (np.arange(SIDE * SS) + 0.5) / SS
    px, py = np.meshgrid(c, c)
    u, v = (px - x0) / s, (py - y0) / s
    cov = mask_fn(u, v).reshape(SIDE, SS, SIDE, SS).mean(axis=(1, 3))
    return np.clip(np.rint(cov[..., None] * np.asarray(SPEC_COLOURS[colour], float)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "name,mask_fn",
    [
        ("inverted triangle", lambda u, v: (v >= 0) & (v <= 1) & (np.abs(u - 0.5) <= (1 - v) / 2)),
        ("sideways triangle", lambda u, v: (u >= 0) & (u <= 1) & (np.abs(v - 0.5) <= u / 2)),
        ("diamond", lambda u, v: np.abs(u - 0.5) + np.abs(v - 0.5) <= 0.5),
        ("ring", lambda u, v: (np.hypot(u - 0.5, v - 0.5) <= 0.5) & (np.hypot(u - 0.5, v - 0.5) >= 0.3)),
        ("cross", lambda u, v: ((np.abs(u - 0.5) <= 0.17) & (np.abs(v - 0.5) <= 0.5))
         | ((np.abs(v - 0.5) <= 0.17) & (np.abs(u - 0.5) <= 0.5))),
        ("ellipse", lambda u, v: (u - 0.5) ** 2 / 0.25 + (v - 0.5) ** 2 / 0.125 <= 1),
        ("half disc", lambda u, v: ((u - 0.5) ** 2 / 0.25 + (v - 1) ** 2 <= 1) & (v <= 1)),
    ],
)
def test_non_shapes_are_not_valid_shapes(name, mask_fn):
    img = _blob(mask_fn)
    assert [d.shape for d in detect(img)] == ["unknown"], name
    for shape in SPEC_SHAPES:
        assert not verify_prompt(img, f"a red {shape}").strict


def test_touching_objects_of_one_colour_are_split():
    img = _img(("red", "circle", 5.0, 10.0, 8.0), ("red", "circle", 13.0, 10.3, 7.0), noise=4.0)
    assert verify_prompt(img, "two red circles").strict
    img = _img(("blue", "square", 5.0, 10.0, 8.0), ("blue", "square", 13.0, 11.0, 6.5), noise=4.0)
    assert verify_prompt(img, "two blue squares").strict


def test_bad_input_raises():
    good = np.zeros((32, 32, 3), np.uint8)
    for bad in (good.astype(np.float32), good.astype(np.float64) / 255, np.zeros((32, 32), np.uint8),
                np.zeros((64, 64, 3), np.uint8), np.zeros((32, 32, 4), np.uint8), good.tolist()):
        with pytest.raises(ValueError):
            detect(bad)
        with pytest.raises(ValueError):
            verify_prompt(bad, "a red circle")
    with pytest.raises(ValueError):
        verify_batch(np.zeros((2, 32, 32, 3), np.uint8), ["a red circle"])
    with pytest.raises(ValueError):
        verify_batch(np.zeros((2, 32, 32), np.uint8), ["a red circle", "a red circle"])


def test_verify_batch_matches_verify():
    rng = np.random.default_rng(9)
    reqs = [random_request(rng) for _ in range(8)]
    images = np.stack([ind_draw(ind_place(kinds_of(ph), rng, rel), rng, noise=6.0) for _, ph, rel in reqs])
    prompts = [p for p, _, _ in reqs]
    out = verify_batch(images, prompts)
    assert all(isinstance(v, Verdict) for v in out)
    assert out == [verify_prompt(im, p) for im, p in zip(images, prompts)]
