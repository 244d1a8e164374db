"""Prompt files: one prompt per line, UTF-8; blank lines and lines starting with '#' are skipped."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from aegpo.io_utils import shorten

log = logging.getLogger(__name__)


class PromptFileError(ValueError):
    """A prompt file that is missing, empty or holds an invalid prompt."""


def read_prompt_file(path: str | Path, validate: Callable[[str], object] | None = None) -> list[str]:
    """Read prompts from `path`; `validate(prompt)` may raise ValueError for a bad prompt.

    Duplicates are kept (a prompt listed twice counts twice, in training and in evaluation) and
    reported with a warning naming their lines, so that a pasted block is not counted silently.
    """
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} does not exist (expected a text file, one prompt per line)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise PromptFileError(f"prompt file {path} is not UTF-8 text ({err})") from None
    prompts: list[str] = []
    first_line: dict[str, int] = {}
    duplicates: list[tuple[int, int]] = []
    for lineno, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if validate is not None:
            try:
                validate(text)
            except ValueError as err:
                raise PromptFileError(f"{path}, line {lineno}: {shorten(str(err), 300)}") from None
        prompts.append(text)
        first_line.setdefault(text, lineno)
        if first_line[text] != lineno:
            duplicates.append((lineno, first_line[text]))
    if not prompts:
        raise PromptFileError(f"prompt file {path} holds no prompts (expected one prompt per line)")
    if duplicates:
        shown = ", ".join(f"line {a} repeats line {b}" for a, b in duplicates[:5])
        more = ", ..." if len(duplicates) > 5 else ""
        log.warning("prompt file %s: %d duplicate prompt(s), each counted as often as listed (%s%s); remove "
                    "them to weigh every prompt once", path, len(duplicates), shown, more)
    return prompts
