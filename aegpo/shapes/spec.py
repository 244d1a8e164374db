"""The fixed specification of the built-in shapes world.

Everything here is part of the public spec (see the README): anyone can render
test images from these constants without our code.
"""

from __future__ import annotations

from dataclasses import dataclass

CANVAS = 32  # pixels per side; background is black
BACKGROUND = (0, 0, 0)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 200),
    "white": (235, 235, 235),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
MIN_SIZE, MAX_SIZE = 6, 10  # object extent across, in pixels
COUNT_WORDS: dict[str, int] = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3}
NUMBER_WORDS: dict[int, str] = {1: "a", 2: "two", 3: "three"}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
MAX_OBJECTS = 4  # the prompt grammar never asks for more objects than this


@dataclass(frozen=True)
class Phrase:
    """A noun phrase: an exact count of objects of one colour and shape."""

    count: int
    colour: str
    shape: str

    def text(self, count_word: str | None = None) -> str:
        word = count_word or NUMBER_WORDS[self.count]
        noun = self.shape + ("s" if self.count > 1 else "")
        return f"{word} {self.colour} {noun}"


@dataclass(frozen=True)
class Scene:
    """What a prompt asks for: phrases plus an optional relation between the first two.

    `relation` is one of RELATIONS and applies to the centroid of phrase 0's
    object versus phrase 1's object (both phrases then have count 1).
    """

    phrases: tuple[Phrase, ...]
    relation: str | None = None

    @property
    def num_objects(self) -> int:
        return sum(p.count for p in self.phrases)

    @property
    def kind(self) -> str:
        if self.relation is not None:
            return "relation"
        return "single" if len(self.phrases) == 1 else "compound"

    def text(self, singular: str = "a") -> str:
        """The prompt; `singular` is the count word for count 1 ("a", "an" or "one")."""
        parts = [p.text(singular if p.count == 1 else None) for p in self.phrases]
        if self.relation is not None:
            return f"{parts[0]} {self.relation} {parts[1]}"
        return " and ".join(parts)
