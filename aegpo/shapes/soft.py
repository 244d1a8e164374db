"""Graded (soft) score of an image against a scene: partial credit for almost-legal shapes.

The verifier's `dense` and `strict` scores count an object only when its outline passes every
shape window, so a slightly oval circle or a notched square earns nothing, and a group of rollouts
from a base that rarely draws clean outlines gets (almost) the same reward for every sample. The
soft score replaces that 0 with each object's closeness to the asked shape (`verify.shape_fit`,
1 for a legal shape, decaying smoothly with the distance outside the windows), so the reward ranks
"nearly right" above "wrong". Rules, per constraint of the scene:

- phrase "<count> <colour> <shape>": the `count` best fits among detected objects of that colour,
  summed and divided by max(count, objects of that colour not claimed by the scene's other phrases
  of that colour): missing objects earn 0, surplus ones dilute the credit;
- relation: min of the two phrases' best fits when the best-fitting objects lie on the asked side,
  else 0;

averaged over constraints and multiplied by 1 / (1 + objects of colours the prompt does not name).
soft = 1 whenever strict = 1 (every fit is 1, counts exact, no extra objects). It is a training
signal, not an accuracy: the accuracies we quote are `strict` and `dense`.
"""

from __future__ import annotations

from collections import Counter

from aegpo.shapes.render import relation_holds
from aegpo.shapes.spec import Scene
from aegpo.shapes.verify import Detected

_COLUMN = {"circle": 0, "square": 1, "triangle": 2}


def soft_score(objects: tuple[Detected, ...] | list[Detected], scene: Scene) -> float:
    """Soft score in [0, 1] of detected objects (`verify.detect`) against a scene."""
    by_colour: dict[str, list[Detected]] = {}
    for o in objects:
        by_colour.setdefault(o.colour, []).append(o)
    asked = Counter()
    for p in scene.phrases:
        asked[p.colour] += p.count
    credits, best = [], []
    for p in scene.phrases:
        col = _COLUMN[p.shape]
        pool = sorted(by_colour.get(p.colour, ()), key=lambda o: o.fit[col], reverse=True)
        available = len(pool) - (asked[p.colour] - p.count)
        credits.append(sum(o.fit[col] for o in pool[: p.count]) / max(p.count, available))
        best.append(pool[0] if pool else None)
    if scene.relation is not None:
        (a, b), (pa, pb) = best[:2], scene.phrases[:2]
        ok = a is not None and b is not None and a is not b and relation_holds(scene.relation, a.centroid, b.centroid)
        credits.append(min(a.fit[_COLUMN[pa.shape]], b.fit[_COLUMN[pb.shape]]) if ok else 0.0)
    others = sum(len(v) for c, v in by_colour.items() if c not in asked)
    return float(sum(credits) / len(credits) / (1 + others))
