"""Renderer of the shapes world: a Scene → a 32×32 RGB uint8 image with anti-aliased edges.

Objects are placed by rejection sampling: integer extent in [MIN_SIZE, MAX_SIZE],
inside the canvas, bounding boxes at least `gap` pixels apart (so objects never
touch), and, for a relation, centroids at least `margin` pixels apart along the
relation's axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aegpo.shapes.spec import CANVAS, COLOURS, MAX_SIZE, MIN_SIZE, Scene

SUPERSAMPLE = 4  # sub-pixel samples per axis for anti-aliasing


@dataclass(frozen=True)
class Placed:
    """One object on the canvas; (x, y) is the top-left corner of its bounding box."""

    colour: str
    shape: str
    x: int
    y: int
    size: int

    @property
    def centroid(self) -> tuple[float, float]:
        """(cx, cy) of the filled area, in pixel units (y grows downwards)."""
        cy = self.y + (2 * self.size / 3 if self.shape == "triangle" else self.size / 2)
        return self.x + self.size / 2, cy


def coverage(obj: Placed) -> np.ndarray:
    """Fraction of each canvas pixel covered by `obj`: float32 (CANVAS, CANVAS) in [0, 1]."""
    n = CANVAS * SUPERSAMPLE
    c = (np.arange(n, dtype=np.float32) + 0.5) / SUPERSAMPLE  # sub-pixel centres, pixel units
    px, py = np.meshgrid(c, c)  # (n, n): x varies along columns
    u, v = px - obj.x, py - obj.y  # object-local coordinates
    s = float(obj.size)
    if obj.shape == "circle":
        inside = (u - s / 2) ** 2 + (v - s / 2) ** 2 <= (s / 2) ** 2
    elif obj.shape == "square":
        inside = (u >= 0) & (u <= s) & (v >= 0) & (v <= s)
    elif obj.shape == "triangle":  # apex (s/2, 0), base from (0, s) to (s, s)
        half_width = v / 2
        inside = (v >= 0) & (v <= s) & (np.abs(u - s / 2) <= half_width)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")
    return inside.reshape(CANVAS, SUPERSAMPLE, CANVAS, SUPERSAMPLE).mean(axis=(1, 3), dtype=np.float32)


def draw(objects: list[Placed]) -> np.ndarray:
    """Composite objects on the black canvas → uint8 (CANVAS, CANVAS, 3)."""
    img = np.zeros((CANVAS, CANVAS, 3), np.float32)
    for obj in objects:
        a = coverage(obj)[..., None]
        img = img * (1 - a) + a * np.asarray(COLOURS[obj.colour], np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _boxes_apart(a: Placed, b: Placed, gap: int) -> bool:
    return (
        a.x + a.size + gap <= b.x
        or b.x + b.size + gap <= a.x
        or a.y + a.size + gap <= b.y
        or b.y + b.size + gap <= a.y
    )


def relation_holds(relation: str, a: tuple[float, float], b: tuple[float, float], margin: float = 0.0) -> bool:
    """Whether centroid `a` lies `relation` of centroid `b` (image y grows downwards)."""
    if relation == "left of":
        return a[0] + margin < b[0]
    if relation == "right of":
        return a[0] > b[0] + margin
    if relation == "above":
        return a[1] + margin < b[1]
    if relation == "below":
        return a[1] > b[1] + margin
    raise ValueError(f"unknown relation {relation!r}")


def place(scene: Scene, rng: np.random.Generator, gap: int = 1, margin: float = 2.0, tries: int = 2000,
          grid: int = 1, size: int = 0) -> list[Placed]:
    """Sample a layout that satisfies `scene`; raises RuntimeError if none is found in `tries`.

    `grid`: bounding-box corners on multiples of this many pixels (1: anywhere). `size`: every
    object this many pixels across (0: uniform over MIN_SIZE..MAX_SIZE). Both only narrow the
    spec's layouts, so every result is still a correct render of `scene`.
    """
    if grid < 1:
        raise ValueError(f"grid must be >= 1 pixel, got {grid}")
    if size and not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be 0 (random) or in {MIN_SIZE}..{MAX_SIZE}, got {size}")
    kinds = [(p.colour, p.shape) for p in scene.phrases for _ in range(p.count)]
    for _ in range(tries):
        objs: list[Placed] = []
        for colour, shape in kinds:
            side = size or int(rng.integers(MIN_SIZE, MAX_SIZE + 1))
            x, y = (grid * int(v) for v in rng.integers(0, (CANVAS - side) // grid + 1, size=2))
            cand = Placed(colour, shape, x, y, side)
            if not all(_boxes_apart(cand, o, gap) for o in objs):
                break
            objs.append(cand)
        else:
            if scene.relation is None or relation_holds(scene.relation, objs[0].centroid, objs[1].centroid, margin):
                return objs
    raise RuntimeError(f"could not place {scene.text()!r} in {tries} tries")


def render(scene: Scene, rng: np.random.Generator, grid: int = 1, size: int = 0) -> np.ndarray:
    """A random correct image of `scene`: uint8 (CANVAS, CANVAS, 3); `grid`, `size` as in `place`."""
    return draw(place(scene, rng, grid=grid, size=size))
