"""Prompt files: one prompt per line, UTF-8; blank lines and lines starting with '#' are skipped."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


class PromptFileError(ValueError):
    """A prompt file that is missing, empty or holds an invalid prompt."""


def read_prompt_file(path: str | Path, validate: Callable[[str], object] | None = None) -> list[str]:
    """Read prompts from `path`; `validate(prompt)` may raise ValueError for a bad prompt."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} does not exist (expected a text file, one prompt per line)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise PromptFileError(f"prompt file {path} is not UTF-8 text ({err})") from None
    prompts = []
    for lineno, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if validate is not None:
            try:
                validate(text)
            except ValueError as err:
                raise PromptFileError(f"{path}, line {lineno}: {err}") from None
        prompts.append(text)
    if not prompts:
        raise PromptFileError(f"prompt file {path} holds no prompts (expected one prompt per line)")
    return prompts
