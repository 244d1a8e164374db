"""Text-embedding cache: each prompt is encoded once per model and settings.

Entries live in memory (CPU tensors) and, when a folder is given, on disk as one
safetensors file per prompt:

    <folder>/<namespace>/<sha256(prompt)[:2]>/<sha256(prompt)>.safetensors

`namespace` is a digest of everything that changes the embeddings (text-encoder
weights fingerprint, max_sequence_length, dtype), so different models or settings never
share entries. Each file stores the prompt text in its metadata and is checked on read;
files are written to a temporary name and renamed, so a crash never leaves a torn entry. A
damaged entry (a torn copy, a foreign file) is encoded again with a warning naming the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from aegpo.io_utils import CorruptFileError, read_safetensors, shorten

Tensors = dict[str, torch.Tensor]
log = logging.getLogger(__name__)


def namespace_for(**settings) -> str:
    """A short digest of JSON-serialisable settings (the cache namespace)."""
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


class TextEmbeddingCache:
    """Prompt → {name: tensor without batch dim} (e.g. states (T, D), pooled (P,)).

    Args:
        namespace: digest of the model and settings (see `namespace_for`).
        folder: on-disk cache root; None keeps entries in memory only.
    """

    def __init__(self, namespace: str, folder: str | Path | None = None) -> None:
        self.namespace = namespace
        self.folder = Path(folder) / namespace if folder else None
        self._memory: dict[str, Tensors] = {}
        self.hits = self.misses = 0

    def _file(self, prompt: str) -> Path:
        digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()
        return self.folder / digest[:2] / f"{digest}.safetensors"  # type: ignore[operator]

    def get(self, prompt: str) -> Tensors | None:
        entry = self._memory.get(prompt)
        if entry is None and self.folder is not None:
            entry = self._read(self._file(prompt), prompt)
            if entry is not None:
                self._memory[prompt] = entry
        return entry

    def put(self, prompt: str, tensors: Tensors) -> None:
        entry = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        self._memory[prompt] = entry
        if self.folder is not None:
            path = self._file(prompt)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            os.close(fd)
            try:
                save_file(entry, tmp, metadata={"prompt": prompt})
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)

    def get_many(self, prompts: Sequence[str], encode: Callable[[list[str]], list[Tensors]]) -> list[Tensors]:
        """Entries of `prompts` (in order); the missing unique prompts go to `encode` in one call."""
        found = {p: self.get(p) for p in dict.fromkeys(prompts)}
        missing = [p for p, e in found.items() if e is None]
        self.hits += len(found) - len(missing)
        self.misses += len(missing)
        if missing:
            for prompt, tensors in zip(missing, encode(missing), strict=True):
                self.put(prompt, tensors)
                found[prompt] = self._memory[prompt]
        return [found[p] for p in prompts]  # type: ignore[misc]

    @staticmethod
    def _read(path: Path, prompt: str) -> Tensors | None:
        """The entry stored in `path`, or None (a miss) when there is none or it is damaged.

        A damaged entry (empty, truncated, not safetensors, another prompt's) is a miss with a warning naming the
        file: it is encoded again and the file rewritten by `put`. A file that cannot be read at all (an OSError:
        disk error, permissions) is not a cache problem and is raised.
        """
        if not path.is_file():
            return None
        try:
            metadata, tensors = read_safetensors(path, REBUILT, _read_entry)
        except CorruptFileError as err:
            if err.reason == "unreadable":
                raise
            log.warning("text-embedding cache: %s", err)
            return None
        if metadata.get("prompt") != prompt:  # a foreign file (or, never seen, a sha256 collision)
            log.warning("text-embedding cache: %s holds the entry of another prompt (%r); %s", path,
                        shorten(metadata.get("prompt", "none"), 80), REBUILT)
            return None
        return tensors


REBUILT = "this cache entry is encoded again and the file rewritten (delete the cache folder to clear it all)"


def _read_entry(name: str) -> tuple[dict[str, str], Tensors]:
    """(metadata, tensors) of one cache file."""
    with safe_open(name, framework="pt") as f:
        return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
