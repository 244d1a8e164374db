"""Programmatic verifier of the shapes world: image + prompt → dense and strict scores.

Algorithm (pure numpy + scipy.ndimage; about 0.3 ms per image on one CPU core):

0. Haze. The per-channel median of the image (the background: objects cover < 40% of the canvas),
   capped at 60 (BG_MAX), is subtracted first; for a spec render it is 0 and nothing changes.
1. Pixel colour. Every pixel p (RGB) is compared with each palette colour C by hue, i.e. the
   angle between p and C as vectors, so an anti-aliased edge pixel a*C (the colour blended with
   black) has the hue of C at any coverage a. Its coverage along C is the projection
   a_C = p.C / |C|^2. A pixel is *core* when its nearest-hue colour is within 22 degrees
   (COS_MIN) and a_C >= 0.55 (T_CORE). The closest palette pair (white/yellow, blue/purple) is
   28 degrees apart; every palette colour shifted by up to +-30 per channel (all 27 corner
   shifts checked) stays nearest to itself and within 22 degrees. T_CORE > 0.5 keeps two objects
   whose edges are >= 1 px apart in separate components (of two such pixels side by side, at
   most one is more than half covered).
   Haze and noise (a_C ~ 0.1) never reach it.
2. Components. 4-connected components of core pixels, per colour. 4- rather than 8-connectivity:
   core pixels of a convex legal shape are 4-connected, and it stops diagonal contacts merging
   neighbours. Each component's *territory* adds the one-pixel ring around it (pixels next to no
   other component and not brightly of another hue), so that anti-aliased edges count.
3. Soft coverage. Weight w = a_C over the territory, divided by the component's interior level
   (mean a_C of core pixels whose four neighbours are core) so that a darker or brighter colour
   (drift, haze) does not change the shape measures; clipped to [0, 1], and w < 0.1 (T_SOFT) set to 0.
   Area = sum(w); centroid = w-weighted mean of pixel centres (pixel i spans [i, i+1): centre
   i + 0.5, the convention of render.Placed.centroid).
4. Shape measures, all invariant to scale and brightness:
     ext_x, ext_y  sum over columns (rows) of the largest w in it: the object's width (height);
     fill          area / (ext_x * ext_y): square ~0.97, circle ~0.79, triangle ~0.6;
     skew_y        vertical skewness of w: triangle (apex up, mass low) -0.47..-0.66 clean,
                   circle and square |.| < 0.07; skew_x, the same across, ~0 for every legal shape;
     var_ratio     var_x / var_y: triangle 0.68..0.83 (0.75 in theory), circle/square ~1;
     r4            fourth cumulant along the diagonals / along the axes: square ~0.5, circle ~1,
                   diamond or cross >= 1.5. Cumulants of order > 2 are unchanged by a Gaussian
                   blur, so r4 separates squares from circles however soft the edges are.
   Rules (classify): extents in [4, 12.5], aspect <= 1.3 and |skew_x| <= 0.25, else unknown; then
     triangle  skew_y < -0.28, fill in [0.45, 0.88], var_ratio in [0.60, 0.97];
     square    |skew_y| <= 0.12, var_ratio in [0.85, 1.18], r4 < 0.70, fill in [0.86, 1.10];
     circle    |skew_y| <= 0.12, var_ratio in [0.85, 1.18], r4 in [0.70, 1.35], fill in [0.72, 0.93];
     anything else is 'unknown' (a blob that is no legal shape).
   Where the thresholds come from: features measured on renders by an independent renderer
   (tests/shapes/test_verify.py: 8x8 jittered supersampling) of every shape at sizes 6..10 in
   steps of 0.5 and 16 sub-pixel offsets each, clean, with Gaussian noise sigma 6, with Gaussian
   blur sigma 0.5 / 0.7 / 1.0 and with colour drift +-30; observed ranges (noise 6, blur <= 0.7):
     circle    fill 0.77-0.86  skew_y +-0.07  var_ratio 0.91-1.09  r4 0.84-1.12
     square    fill 0.92-0.99  skew_y +-0.07  var_ratio 0.90-1.08  r4 0.46-0.61
     triangle  fill 0.55-0.84  skew_y -0.66..-0.27  var_ratio 0.68-0.94
   and each threshold sits between these and the ranges of non-shapes measured the same way
   (half disc, inverted / sideways triangle, diamond, ring, cross, 2:1 ellipse, trapezoid,
   house-shaped pentagon; all of them are 'unknown' at blur <= 0.5, except an octagon, which
   reads as a circle). Tolerance: every legal shape is recognised with noise sigma 6, colour
   drift +-30 and blur sigma <= 0.5; at blur 0.7 about 10% of the smallest (6-7 px) triangles
   become unknown (a blurred 6 px triangle is close to a half disc).
5. Specks and seams. Components with area < 8 (MIN_AREA; the smallest legal object covers ~18)
   or thinner than 2.5 px (MIN_EXTENT; e.g. the mixed-colour seam between touching objects of
   two colours) are ignored: they are not objects.
6. Touching objects of one colour merge into one component. If such a component is not a legal
   shape, has area in [30, 220] (SPLIT_MIN_AREA, SPLIT_MAX_AREA: two objects) and is at most 25 px
   long, it is split in two: straight cuts across x, y and (if it is > 10 degrees off both) the
   principal axis, every pixel (CUT_STEP); a cut is valid when both sides are legal shapes of
   area >= 15; the middle valid cut of the direction with most valid cuts is used. A blob that
   cannot be split this way (including three or more merged objects) stays one 'unknown' object,
   so it counts as extra and strict fails. Objects of different colours never merge.

Graded fit (shape_fit): besides its class, every detected object carries its closeness to each legal
shape, exp(-distance outside that shape's windows above), 1 exactly where the class is that shape;
aegpo/shapes/soft.py turns it into the `soft` reward part (partial credit for almost-legal shapes).

Scoring (verify): one constraint per noun phrase, "<count> <colour> <shape>", met when exactly
that many objects of that colour and shape were detected; for a relation prompt one more,
"<colour> <shape> <relation> <colour> <shape>", met when each of the two kinds was detected
exactly once and the first centroid lies on that side of the second (render.relation_holds,
margin 0). dense = fraction of constraints met. extra = detected objects beyond those asked for
(objects of kinds not in the prompt, unknown blobs, and the surplus of an asked kind).
strict = every constraint met and extra == 0.

Measured (independent renderer of tests/shapes/test_verify.py: random prompts of every kind, float
sizes in [6, 10], bounding boxes >= 1 px apart, relation margin >= 0.5 px; 1000 images per variant):
strict = 1 on 100% of clean, noise-6, noise-6 + blur-0.5, colour-drift-30 and grey-haze-40 renders,
99.9% with all of noise 6 + blur 0.5 + drift 30 + haze 20, 98.3% at blur 0.7. With boxes allowed
to touch (gap 0) and relation margin 0: 99.3-100% (blur <= 0.5), 97.9% at blur 0.7. Our own
renderer (aegpo.shapes.render): 100%. Time: ~0.3 ms per image for such renders; ~2-3 ms for
pathological images (~20 irregular blobs, each tried for a split).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from aegpo.shapes.prompts import parse_prompt
from aegpo.shapes.render import relation_holds
from aegpo.shapes.spec import CANVAS, COLOURS, Scene

# ---------------------------------------------------------------- thresholds
COS_MIN = float(np.cos(np.deg2rad(22.0)))  # max hue angle to the nearest palette colour for a core pixel
BG_MAX = 60.0  # at most this much background haze (per channel) is subtracted
T_CORE = 0.55  # coverage (projection onto the palette colour) for a core pixel
T_SOFT = 0.10  # soft coverage below this counts as 0 (noise, haze)
T_DIM = 0.30  # ring pixels brighter than this must also have the component's hue
MIN_AREA = 8.0  # components with smaller soft area are specks and are ignored
MIN_EXTENT = 2.5  # components thinner than this (pixels) are seams / lines and are ignored
SPLIT_MIN_AREA = 30.0  # an unknown blob at least this big may be two touching objects of one colour
SPLIT_MAX_AREA = 220.0  # ... and at most this big (two squares of side 10, with 10% slack)
CUT_STEP = 1.0  # pixels between the trial cuts of a split
EXT_MIN, EXT_MAX = 4.0, 12.5  # legal extent (pixels across), with slack for blur
ASPECT_MAX = 1.3  # max(ext_x, ext_y) / min(...)
SKEW_X_MAX = 0.25  # |horizontal skewness|; all legal shapes are left-right symmetric
SKEW_TRI = -0.28  # vertical skewness below this: apex-up triangle candidate
SKEW_SYM = 0.12  # |vertical skewness| at most this: circle/square candidate
FILL_TRI = (0.45, 0.88)  # fill ratio of a triangle
VAR_RATIO_TRI = (0.60, 0.97)  # var_x / var_y of a triangle
VAR_RATIO_SYM = (0.85, 1.18)  # var_x / var_y of a circle or square
R4_SPLIT = 0.70  # diagonal / axis fourth cumulant: square below, circle above
R4_CIRCLE_MAX = 1.35  # a diamond or a cross has a larger ratio
FILL_CIRCLE = (0.72, 0.93)  # fill ratio of a circle
FILL_SQUARE = (0.86, 1.10)  # fill ratio of a square

_NAMES = tuple(COLOURS)
_PAL = np.asarray([COLOURS[c] for c in _NAMES], np.float32)  # (K, 3)
_PAL_NORM = np.linalg.norm(_PAL, axis=1)  # (K,)
_PAL_PROJ = (_PAL / (_PAL_NORM**2)[:, None]).T  # (3, K): p @ _PAL_PROJ = coverage along each colour
_PAL_UNIT = (_PAL / _PAL_NORM[:, None]).T  # (3, K)
_CROSS = ndimage.generate_binary_structure(2, 1)  # 4-connectivity
_YY, _XX = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float64) + 0.5  # pixel centres


@dataclass(frozen=True)
class Detected:
    """One object found in an image. shape is 'unknown' for a blob that is no legal shape."""

    colour: str
    shape: str
    centroid: tuple[float, float]  # (cx, cy), pixel units, y down; pixel i spans [i, i+1)
    area: float  # soft (coverage-weighted) area in pixels
    fit: tuple[float, float, float] = (0.0, 0.0, 0.0)  # closeness to (circle, square, triangle), see `shape_fit`


@dataclass(frozen=True)
class Verdict:
    """The score of one image against one prompt."""

    dense: float  # fraction of constraints met
    strict: bool  # every constraint met and no object beyond those asked for
    constraints: tuple[tuple[str, bool], ...]
    objects: tuple[Detected, ...]
    extra: int  # detected objects not asked for (surplus of an asked kind, other kinds, unknown blobs)


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got dtype {image.dtype}")
    if image.shape != (CANVAS, CANVAS, 3):
        raise ValueError(f"image must have shape ({CANVAS}, {CANVAS}, 3), got {image.shape}")
    return image


def _pixel_classes(image: np.ndarray):
    """Per pixel: coverage along every palette colour (N, K), nearest hue, and whether it is core."""
    img = _check_image(image).reshape(-1, 3).astype(np.float32)
    # Faint haze: subtract the background level, the per-channel median (objects cover < 40% of
    # the canvas), capped at BG_MAX.
    bg = np.minimum(np.median(img, axis=0), BG_MAX)
    if bg.any():
        img = img - bg
    cover = img @ _PAL_PROJ  # coverage if the pixel were that colour blended with black
    norm = np.sqrt((img * img).sum(1)) + 1e-6
    cos = (img @ _PAL_UNIT) / norm[:, None]
    best = cos.argmax(1)
    idx = np.arange(img.shape[0])
    best_cov = cover[idx, best]
    core = (best_cov >= T_CORE) & (cos[idx, best] >= COS_MIN)
    return cover, best, best_cov, core


def _measure(t: np.ndarray, x: np.ndarray, y: np.ndarray, w: np.ndarray, m: int) -> dict[str, np.ndarray]:
    """Shape measurements of the weighted pixel sets t == 1 .. m-1 (index 0 unused)."""
    area = np.bincount(t, weights=w, minlength=m)
    safe = np.maximum(area, 1e-9)

    def mean(v):
        return np.bincount(t, weights=w * v, minlength=m) / safe

    cx, cy = mean(x), mean(y)
    dx, dy = x - cx[t], y - cy[t]
    dx2, dy2 = dx * dx, dy * dy
    vx, vy = mean(dx2), mean(dy2)
    sx = mean(dx2 * dx) / np.maximum(vx, 1e-9) ** 1.5
    sy = mean(dy2 * dy) / np.maximum(vy, 1e-9) ** 1.5
    du2, dv2 = 0.5 * (dx + dy) ** 2, 0.5 * (dx - dy) ** 2  # squared offsets along the diagonals
    vu, vv = mean(du2), mean(dv2)
    k4_axis = mean(dx2 * dx2) - 3 * vx * vx + mean(dy2 * dy2) - 3 * vy * vy
    k4_diag = mean(du2 * du2) - 3 * vu * vu + mean(dv2 * dv2) - 3 * vv * vv
    col = (x - 0.5).astype(np.intp)
    row = (y - 0.5).astype(np.intp)
    colmax = np.zeros((m, CANVAS))
    rowmax = np.zeros((m, CANVAS))
    np.maximum.at(colmax, (t, col), w)
    np.maximum.at(rowmax, (t, row), w)
    ext_x, ext_y = colmax.sum(1), rowmax.sum(1)
    return dict(
        area=area,
        cx=cx,
        cy=cy,
        ext_x=ext_x,
        ext_y=ext_y,
        fill=area / np.maximum(ext_x * ext_y, 1e-9),
        skew_x=sx,
        skew_y=sy,
        var_ratio=vx / np.maximum(vy, 1e-9),
        r4=k4_diag / np.minimum(k4_axis, -1e-9),
    )


def _components(image: np.ndarray):
    """Label colour components; returns (colour index per component, pixel index, label, weight) or None."""
    cover, best, best_cov, core = _pixel_classes(image)

    # Connected components of core pixels, separately per colour, with globally unique ids (1..).
    labels = np.zeros(CANVAS * CANVAS, np.int32)
    comp_colour: list[int] = []
    for k in np.unique(best[core]):
        lab, n = ndimage.label((core & (best == k)).reshape(CANVAS, CANVAS), structure=_CROSS)
        lab = lab.ravel()
        on = lab > 0
        labels[on] = lab[on] + len(comp_colour)
        comp_colour += [int(k)] * n
    if not comp_colour:
        return None
    ncomp = len(comp_colour)
    colour_of = np.asarray([0] + comp_colour)

    # Territory: the core plus the one-pixel ring (8-neighbourhood) that touches exactly one component,
    # less ring pixels that are bright but of another hue (they belong to something else).
    lab2 = labels.reshape(CANVAS, CANVAS)
    big = np.int32(1 << 30)
    hi = ndimage.maximum_filter(lab2, size=3, mode="constant", cval=0).ravel()
    lo = ndimage.minimum_filter(np.where(lab2 > 0, lab2, big), size=3, mode="constant", cval=big).ravel()
    ring = (labels == 0) & (hi > 0) & (hi == lo)
    terr = labels.copy()
    terr[ring] = hi[ring]
    in_terr = (terr > 0) & ~(ring & (best_cov >= T_DIM) & (best != colour_of[terr]))
    pix = np.nonzero(in_terr)[0]
    t = terr[pix]
    w = np.maximum(cover[pix, colour_of[t]], 0.0).astype(np.float64)

    # Normalise by each component's interior level (mean coverage of core pixels whose four
    # neighbours are core too; the maximum when there are none): robust to brightness drift.
    interior = (ndimage.minimum_filter(lab2, footprint=_CROSS, mode="constant", cval=0).ravel() == labels) & (
        labels > 0
    )
    ip = np.nonzero(interior)[0]
    isum = np.bincount(labels[ip], weights=cover[ip, colour_of[labels[ip]]], minlength=ncomp + 1)
    icnt = np.bincount(labels[ip], minlength=ncomp + 1)
    cmax = np.zeros(ncomp + 1)
    np.maximum.at(cmax, t, w)
    level = np.where(icnt > 0, isum / np.maximum(icnt, 1), cmax)
    w = np.clip(w / np.maximum(level[t], 1e-9), 0.0, 1.0)
    w[w < T_SOFT] = 0.0
    return colour_of, pix, t, w


def _rows(meas: dict[str, np.ndarray], m: int) -> list[dict]:
    return [{k: float(v[i]) for k, v in meas.items()} for i in range(1, m)]


def features(image: np.ndarray) -> list[dict]:
    """Measurements of every colour component, unsplit (the raw material of `detect`; used to tune thresholds)."""
    comps = _components(image)
    if comps is None:
        return []
    colour_of, pix, t, w = comps
    m = len(colour_of)
    rows = _rows(_measure(t, _XX.ravel()[pix], _YY.ravel()[pix], w, m), m)
    for i, r in enumerate(rows, start=1):
        r["colour"] = _NAMES[colour_of[i]]
    return rows


_SHAPE_CODES = ("unknown", "circle", "square", "triangle")


def _classify(f: dict[str, np.ndarray]) -> np.ndarray:
    """Vectorised `classify`: index into _SHAPE_CODES per entry of the measurement arrays."""
    ex, ey, fill, sy, vr, r4 = (np.asarray(f[k]) for k in ("ext_x", "ext_y", "fill", "skew_y", "var_ratio", "r4"))
    lo, hi = np.minimum(ex, ey), np.maximum(ex, ey)
    skew_x = np.abs(np.asarray(f["skew_x"]))
    legal = (lo >= EXT_MIN) & (hi <= EXT_MAX) & (hi <= ASPECT_MAX * lo) & (skew_x <= SKEW_X_MAX)
    tri = (
        (sy < SKEW_TRI)
        & (fill >= FILL_TRI[0]) & (fill <= FILL_TRI[1])
        & (vr >= VAR_RATIO_TRI[0]) & (vr <= VAR_RATIO_TRI[1])
    )  # fmt: skip
    sym = (np.abs(sy) <= SKEW_SYM) & (vr >= VAR_RATIO_SYM[0]) & (vr <= VAR_RATIO_SYM[1])
    square = sym & (r4 < R4_SPLIT) & (fill >= FILL_SQUARE[0]) & (fill <= FILL_SQUARE[1])
    circle = sym & (r4 >= R4_SPLIT) & (r4 <= R4_CIRCLE_MAX) & (fill >= FILL_CIRCLE[0]) & (fill <= FILL_CIRCLE[1])
    return np.where(legal, np.select([tri, square, circle], [3, 2, 1], 0), 0)


def classify(f: dict) -> str:
    """Shape of one component's measurements: 'circle', 'square', 'triangle' or 'unknown'."""
    return _SHAPE_CODES[int(_classify(f))]


# Distance units of `shape_fit`: how far outside its window a measure must be to cost a factor e.
FIT_SCALE = dict(ext=1.0, aspect=0.1, skew=0.1, fill=0.05, var_ratio=0.1, r4=0.1)


def _gap(v: np.ndarray, lo: float, hi: float, scale: float) -> np.ndarray:
    return np.maximum(np.maximum(lo - v, v - hi), 0.0) / scale


def shape_fit(f: dict[str, np.ndarray]) -> np.ndarray:
    """Closeness of each measured component to each legal shape: (m, 3) in (0, 1], columns circle, square, triangle.

    exp(-d), where d sums, over the windows `_classify` checks for that shape, how far the measure lies
    outside its window in units of FIT_SCALE. It is 1 exactly where `_classify` returns that shape
    (the windows are the same), and falls off smoothly for a slightly oval circle or a notched square:
    graded credit for a blob that is almost a legal shape (the `soft` reward part).
    """
    ex, ey, fill, sy, vr, r4 = (np.asarray(f[k], np.float64)
                                for k in ("ext_x", "ext_y", "fill", "skew_y", "var_ratio", "r4"))
    lo, hi = np.minimum(ex, ey), np.maximum(ex, ey)
    inf, sc = np.inf, FIT_SCALE
    common = (
        _gap(lo, EXT_MIN, inf, sc["ext"]) + _gap(hi, -inf, EXT_MAX, sc["ext"])
        + _gap(hi / np.maximum(lo, 1e-9), -inf, ASPECT_MAX, sc["aspect"])
        + _gap(np.abs(np.asarray(f["skew_x"])), -inf, SKEW_X_MAX, sc["skew"])
    )  # fmt: skip
    tri = (_gap(sy, -inf, SKEW_TRI, sc["skew"]) + _gap(fill, *FILL_TRI, sc["fill"])
           + _gap(vr, *VAR_RATIO_TRI, sc["var_ratio"]))
    sym = _gap(np.abs(sy), -inf, SKEW_SYM, sc["skew"]) + _gap(vr, *VAR_RATIO_SYM, sc["var_ratio"])
    square = sym + _gap(r4, -inf, R4_SPLIT, sc["r4"]) + _gap(fill, *FILL_SQUARE, sc["fill"])
    circle = sym + _gap(r4, R4_SPLIT, R4_CIRCLE_MAX, sc["r4"]) + _gap(fill, *FILL_CIRCLE, sc["fill"])
    return np.exp(-(common[:, None] + np.stack([circle, square, tri], 1)))


def detect(image: np.ndarray) -> list[Detected]:
    """Objects in a uint8 (32, 32, 3) image (see the module docstring for the rules)."""
    comps = _components(image)
    if comps is None:
        return []
    colour_of, pix, t, w = comps
    x, y = _XX.ravel()[pix], _YY.ravel()[pix]
    m = len(colour_of)
    meas = _measure(t, x, y, w, m)
    codes = _classify(meas)
    fits = shape_fit(meas)
    area, cx, cy = meas["area"], meas["cx"], meas["cy"]
    thin = np.minimum(meas["ext_x"], meas["ext_y"]) < MIN_EXTENT
    long = np.maximum(meas["ext_x"], meas["ext_y"])
    out: list[Detected] = []
    for i in range(1, m):
        if area[i] < MIN_AREA or thin[i]:
            continue  # a speck of noise or a seam between touching objects
        colour = _NAMES[colour_of[i]]
        if codes[i] == 0 and SPLIT_MIN_AREA <= area[i] <= SPLIT_MAX_AREA and long[i] <= 2 * EXT_MAX:
            sel = t == i
            parts = _split(x[sel], y[sel], w[sel])
            if parts:
                out += [Detected(colour, *part) for part in parts]
                continue
        fit = tuple(float(v) for v in fits[i])
        out.append(Detected(colour, _SHAPE_CODES[codes[i]], (float(cx[i]), float(cy[i])), float(area[i]), fit))
    return out


def _parts(meas: dict[str, np.ndarray], codes: np.ndarray, idx) -> list[tuple]:
    fits = shape_fit({k: v[list(idx)] for k, v in meas.items()})
    return [
        (_SHAPE_CODES[codes[j]], (float(meas["cx"][j]), float(meas["cy"][j])), float(meas["area"][j]),
         tuple(map(float, fit)))
        for j, fit in zip(idx, fits)
    ]


def _split(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> list[tuple] | None:
    """Split a blob into two legal shapes (two touching objects of one colour), or None.

    Straight cuts across the x axis, the y axis and the blob's principal axis, every CUT_STEP
    pixels (all measured at once); a cut that leaves two legal shapes of area >= SPLIT_MIN_AREA / 2 is
    valid, and the middle valid cut of the direction with the most valid cuts wins.
    """
    keep = w > 0
    x, y, w = x[keep], y[keep], w[keep]
    if len(w) < 4:
        return None
    cx, cy = np.average(x, weights=w), np.average(y, weights=w)
    axis = np.linalg.eigh(np.cov(np.stack([x - cx, y - cy]), aweights=w))[1][:, -1]
    best = None
    dirs = [(1.0, 0.0), (0.0, 1.0)]
    if min(abs(axis[0]), abs(axis[1])) > 0.17:  # principal axis more than ~10 degrees off both
        dirs.append((axis[0], axis[1]))
    for u in dirs:
        proj = (x - cx) * u[0] + (y - cy) * u[1]
        cuts = np.arange(proj.min() + 3.0, proj.max() - 3.0 + 1e-9, CUT_STEP)
        if len(cuts) == 0:
            continue
        n = len(cuts)
        t = (2 * np.arange(n)[:, None] + (proj[None, :] >= cuts[:, None]) + 1).ravel()
        meas = _measure(t, np.tile(x, n), np.tile(y, n), np.tile(w, n), 2 * n + 1)
        codes = _classify(meas)
        ok = ((codes[1:] > 0) & (meas["area"][1:] >= SPLIT_MIN_AREA / 2)).reshape(n, 2).all(1)
        valid = np.nonzero(ok)[0]
        if len(valid) and (best is None or len(valid) > best[0]):
            j = valid[len(valid) // 2]
            best = (len(valid), _parts(meas, codes, (2 * j + 1, 2 * j + 2)))
    return None if best is None else best[1]


def verify(image: np.ndarray, scene: Scene) -> Verdict:
    """Score `image` against `scene` (see the module docstring for the rules)."""
    objects = detect(image)
    by_kind: dict[tuple[str, str], list[Detected]] = {}
    for o in objects:
        by_kind.setdefault((o.colour, o.shape), []).append(o)
    constraints: list[tuple[str, bool]] = []
    matched = 0
    for p in scene.phrases:
        n = len(by_kind.get((p.colour, p.shape), ()))
        constraints.append((f"{p.count} {p.colour} {p.shape}", n == p.count))
        matched += min(n, p.count)
    if scene.relation is not None:
        a, b = scene.phrases[:2]
        oa, ob = by_kind.get((a.colour, a.shape), []), by_kind.get((b.colour, b.shape), [])
        ok = len(oa) == 1 and len(ob) == 1 and relation_holds(scene.relation, oa[0].centroid, ob[0].centroid)
        constraints.append((f"{a.colour} {a.shape} {scene.relation} {b.colour} {b.shape}", ok))
    met = sum(ok for _, ok in constraints)
    extra = len(objects) - matched
    return Verdict(
        dense=met / len(constraints),
        strict=met == len(constraints) and extra == 0,
        constraints=tuple(constraints),
        objects=tuple(objects),
        extra=extra,
    )


def verify_prompt(image: np.ndarray, prompt: str) -> Verdict:
    """`verify` against a prompt text (raises prompts.PromptError on a prompt outside the grammar)."""
    return verify(image, parse_prompt(prompt))


def verify_batch(images: np.ndarray, prompts: list[str]) -> list[Verdict]:
    """Score N images (uint8 (N, 32, 32, 3)) against N prompts."""
    if not isinstance(images, np.ndarray) or images.ndim != 4:
        raise ValueError(f"images must be a uint8 array of shape (N, {CANVAS}, {CANVAS}, 3)")
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
    cache: dict[str, Scene] = {}
    out = []
    for image, prompt in zip(images, prompts):
        scene = cache.get(prompt)
        if scene is None:
            scene = cache[prompt] = parse_prompt(prompt)
        out.append(verify(image, scene))
    return out
