"""Tiny random-weight real models to try the real-model path with no weights at hand.

`aegpo tiny --kind sd3|flux|pickscore --out DIR` writes, from configs (nothing is downloaded):

- `sd3`: a diffusers `StableDiffusion3Pipeline` folder (model.kind sd3),
- `flux`: a diffusers `FluxPipeline` folder (model.kind flux),
- `pickscore`: a transformers CLIPModel folder in PickScore_v1's layout with the tokenizer and
  preprocessor files (reward.name pickscore),

all with the real classes at toy sizes (32×32 pixels, 1–2 blocks of width 32; see
aegpo/tiny/pipelines.py and aegpo/tiny/rewards.py), and the `-S` overrides that use them.
Images from random weights are noise: these folders check plumbing, not quality.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

KINDS = ("sd3", "flux", "pickscore")


@dataclass(frozen=True)
class TinyFolder:
    """What `write_tiny` wrote: the folder, its kind, its files and the parameter overrides that use it."""

    kind: str
    path: Path
    files: tuple[str, ...]
    overrides: tuple[str, ...]


def _yaml_value(path: str | Path) -> str:
    """`path` as a YAML value of an override: plain when safe, else a (JSON = YAML) quoted string."""
    text = Path(path).as_posix()
    return text if re.fullmatch(r"[A-Za-z0-9_./-]+", text) else json.dumps(text)


def overrides(kind: str, path: str | Path) -> tuple[str, ...]:
    """The `-S` overrides that make a run use the tiny folder `path` of `kind`.

    They work alike with `aegpo train/pipeline -S` and `dvc exp run -S` (Hydra grammar: `++key=value`
    adds or sets a key params.yaml may lack; `reward.weights` is deleted with `~` and added again because
    DVC would merge a new mapping into the shapes weights). Model kinds: 32-pixel images in float32
    (CPU-friendly), 16 T5 tokens, entropy recorded on both blocks of the tiny transformer (the default
    layers 2-4 exist only in the built-in model).
    """
    path = _yaml_value(path)
    if kind in ("sd3", "flux"):
        from aegpo.tiny.pipelines import RESOLUTION

        return (f"++model.kind={kind}", f"++model.pretrained.path={path}",
                f"++model.pretrained.resolution={RESOLUTION}", "++model.pretrained.dtype=float32",
                "++model.pretrained.max_sequence_length=16", "++entropy.layers=[0, 1]")
    if kind == "pickscore":
        return ("++reward.name=pickscore", "~reward.weights", "+reward.weights={pickscore: 1.0}",
                f"++reward.models.pickscore.path={path}")
    raise ValueError(f"--kind: unknown tiny kind {kind!r} (expected one of {', '.join(KINDS)})")


def write_tiny(kind: str, out: str | Path, seed: int = 0, overwrite: bool = False) -> TinyFolder:
    """Write the tiny `kind` folder to `out` atomically (a reader never sees a half-written folder).

    An existing non-empty `out` is refused unless `overwrite` (then it is replaced as a whole).
    """
    from aegpo.io_utils import atomic_directory

    if kind not in KINDS:
        raise ValueError(f"--kind: unknown tiny kind {kind!r} (expected one of {', '.join(KINDS)})")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {out} is a file; a folder is expected")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"--out: {out} exists and is not empty (pass --overwrite to replace it)")
    with atomic_directory(out) as tmp:
        if kind == "sd3":
            from aegpo.tiny.pipelines import save_sd3

            save_sd3(tmp, seed=seed)
        elif kind == "flux":
            from aegpo.tiny.pipelines import save_flux

            save_flux(tmp, seed=seed)
        else:
            from aegpo.tiny.rewards import clip_folder

            clip_folder(tmp, seed=seed)
    files = tuple(sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()))
    return TinyFolder(kind=kind, path=out, files=files, overrides=overrides(kind, out))
