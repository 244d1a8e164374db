"""Prompt grammar of the shapes world: parse, enumerate, and the fixed train/eval split.

Grammar (lower case, single spaces)::

    prompt   := phrase | phrase " and " phrase | single REL single
    phrase   := COUNT " " COLOUR " " SHAPE["s" if count > 1]
    single   := ("a" | "an" | "one") " " COLOUR " " SHAPE
    REL      := "left of" | "right of" | "above" | "below"

The split is a pure function of the grammar (a SHA-256 ranking), so the files
under data/prompts/ can be regenerated bit for bit with `python -m aegpo.shapes.prompts`.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

from aegpo.shapes.spec import COLOURS, COUNT_WORDS, MAX_OBJECTS, RELATIONS, SHAPES, Phrase, Scene

# How many prompts of each kind the eval split holds (the rest is train).
EVAL_COUNTS = {"single": 16, "compound": 92, "relation": 92}


class PromptError(ValueError):
    """A prompt that the shapes grammar cannot parse."""


def _parse_phrase(words: list[str], prompt: str) -> Phrase:
    if len(words) != 3:
        raise PromptError(f"prompt {prompt!r}: expected '<count> <colour> <shape>', got {' '.join(words)!r}")
    count_word, colour, noun = words
    if count_word not in COUNT_WORDS:
        raise PromptError(f"prompt {prompt!r}: unknown count {count_word!r} (expected one of {sorted(COUNT_WORDS)})")
    count = COUNT_WORDS[count_word]
    if colour not in COLOURS:
        raise PromptError(f"prompt {prompt!r}: unknown colour {colour!r} (expected one of {sorted(COLOURS)})")
    shape = noun[:-1] if count > 1 and noun.endswith("s") else noun
    if shape not in SHAPES or (count > 1) != (noun != shape):
        raise PromptError(f"prompt {prompt!r}: {noun!r} is not a {'plural' if count > 1 else 'singular'} shape noun")
    return Phrase(count, colour, shape)


def parse_prompt(prompt: str) -> Scene:
    """Parse a prompt into the Scene it asks for; raises PromptError naming the problem."""
    text = " ".join(prompt.strip().lower().split())
    for rel in RELATIONS:
        left, sep, right = text.partition(f" {rel} ")
        if sep:
            a, b = _parse_phrase(left.split(), prompt), _parse_phrase(right.split(), prompt)
            if a.count != 1 or b.count != 1:
                raise PromptError(f"prompt {prompt!r}: a relation needs two single objects")
            if (a.colour, a.shape) == (b.colour, b.shape):
                raise PromptError(f"prompt {prompt!r}: a relation needs two different objects")
            return Scene((a, b), rel)
    parts = text.split(" and ")
    if len(parts) > 2:
        raise PromptError(f"prompt {prompt!r}: at most two phrases joined by 'and'")
    phrases = tuple(_parse_phrase(p.split(), prompt) for p in parts)
    if len({(p.colour, p.shape) for p in phrases}) != len(phrases):
        raise PromptError(f"prompt {prompt!r}: the two phrases name the same kind of object")
    scene = Scene(phrases)
    if scene.num_objects > MAX_OBJECTS:
        raise PromptError(f"prompt {prompt!r}: asks for {scene.num_objects} objects, at most {MAX_OBJECTS}")
    return scene


def all_scenes() -> list[Scene]:
    """Every canonical prompt of the grammar (singular count written 'a')."""
    kinds = [(c, s) for c in COLOURS for s in SHAPES]
    scenes = [Scene((Phrase(n, c, s),)) for c, s in kinds for n in (1, 2, 3)]
    for (c1, s1), (c2, s2) in itertools.permutations(kinds, 2):
        for n1, n2 in itertools.product((1, 2, 3), repeat=2):
            if n1 + n2 <= MAX_OBJECTS:
                scenes.append(Scene((Phrase(n1, c1, s1), Phrase(n2, c2, s2))))
        for rel in RELATIONS:
            scenes.append(Scene((Phrase(1, c1, s1), Phrase(1, c2, s2)), rel))
    return scenes


def _rank(text: str) -> str:
    return hashlib.sha256(f"aegpo-shapes-split:{text}".encode()).hexdigest()


def split_prompts() -> dict[str, list[str]]:
    """The fixed split: {'train': [...], 'eval': [...]}, each sorted by hash rank."""
    by_kind: dict[str, list[str]] = {}
    for scene in all_scenes():
        by_kind.setdefault(scene.kind, []).append(scene.text())
    out: dict[str, list[str]] = {"train": [], "eval": []}
    for kind, texts in by_kind.items():
        ranked = sorted(texts, key=_rank)
        out["eval"] += ranked[: EVAL_COUNTS[kind]]
        out["train"] += ranked[EVAL_COUNTS[kind] :]
    return {name: sorted(texts, key=_rank) for name, texts in out.items()}


def write_split(directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, texts in split_prompts().items():
        (directory / f"{name}.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write_split(Path(__file__).resolve().parents[2] / "data" / "prompts")
