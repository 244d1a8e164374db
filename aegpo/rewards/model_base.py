"""Shared machinery of rewards backed by a neural model (PickScore, HPS, ImageReward, CLIP, aesthetic).

Each model reward has one part named after itself, reads its options from
`reward.models.<name>` (validated by an `Options` section: unknown keys and missing
paths are errors **when the reward is built**, i.e. at start-up), runs in batches under
no-grad on its device/dtype, and returns float64 scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, ValidationError

from aegpo.config_base import Section
from aegpo.io_utils import CorruptFileError
from aegpo.rewards.base import Reward
from aegpo.rewards.weights import load_state_dict

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class RewardModelError(ValueError):
    """A reward model's options or files are wrong (raised when the reward is built)."""


class ModelRewardOptions(Section):
    """`reward.models.<name>`: where the weights are and how to run them."""

    path: str = Field(
        ..., description="Folder (or file) of the reward model's weights; relative paths are relative to the project "
        "folder. See docs/rewards.md for each reward's layout and source.")
    device: str = Field(
        "auto", description="torch device of the reward model: auto (cuda if available), cpu, cuda, cuda:1, ...")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights/activations dtype; scores are returned as float64.")
    batch_size: int = Field(32, ge=1, description="Images per forward pass.")


class ModelReward(Reward):
    """A single-part reward computed by a model; subclasses load it in `load` and score in `score_batch`."""

    name: ClassVar[str]
    Options: ClassVar[type[ModelRewardOptions]] = ModelRewardOptions
    #: where the published weights come from (used in error messages; details in docs/rewards.md)
    source_hint: ClassVar[str] = ""

    def __init__(self, weights: dict[str, float] | None = None, options: dict[str, Any] | None = None,
                 project_dir: str | Path = ".") -> None:
        self.parts = (self.name,)
        super().__init__(weights if weights is not None else {self.name: 1.0})
        self.options = self.parse_options(options)
        self.project_dir = Path(project_dir)
        device = self.options.device
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        self.dtype = TORCH_DTYPES[self.options.dtype]
        self.load()

    @classmethod
    def from_options(cls, name: str, weights: dict[str, float] | None, models: dict[str, dict[str, Any]],
                     project_dir: str | Path = ".") -> ModelReward:
        return cls(weights, models.get(name), project_dir)  # its own options, validated by parse_options

    @classmethod
    def parse_options(cls, options: dict[str, Any] | None) -> ModelRewardOptions:
        where = f"reward.models.{cls.name}"
        if not options:
            raise RewardModelError(f"{where}.path is required: the {cls.name} reward needs its model weights "
                                   f"({cls.source_hint}; see docs/rewards.md)")
        try:
            return cls.Options.model_validate(options)
        except ValidationError as err:
            lines = []
            for e in err.errors():
                key = ".".join(str(p) for p in e["loc"])
                what = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
                lines.append(f"{where}.{key}: {what}")
            raise RewardModelError("\n".join(lines)) from None

    def resolve(self, value: str, field: str = "path", kind: Literal["dir", "file", "any"] = "any") -> Path:
        """An option's path (relative to the project), which must exist; else a clear error now, not at round 40."""
        path = Path(value) if Path(value).is_absolute() else self.project_dir / value
        ok = path.is_dir() if kind == "dir" else path.is_file() if kind == "file" else path.exists()
        if not ok:
            what = {"dir": "folder", "file": "file", "any": "path"}[kind]
            raise RewardModelError(f"reward.models.{self.name}.{field}: {what} {path} does not exist "
                                   f"({self.source_hint}; see docs/rewards.md)")
        return path

    def load_weights(self, path: Path, field: str = "path") -> dict[str, torch.Tensor]:
        """Tensors of a weights file given by option `field`; a damaged file is a RewardModelError naming the file,
        what is wrong, and the option to point at a good copy."""
        where = f"reward.models.{self.name}.{field}"
        try:
            return load_state_dict(path, remedy=f"download it again ({self.source_hint}; see docs/rewards.md) "
                                                f"and point {where} at the good copy")
        except CorruptFileError as err:
            raise RewardModelError(f"{where}: {err}") from None

    # ----- subclasses ---------------------------------------------------------------------------
    def load(self) -> None:
        """Load the model(s) onto self.device in self.dtype (called once, at construction)."""
        raise NotImplementedError

    def score_batch(self, images: np.ndarray, prompts: list[str]) -> torch.Tensor:
        """uint8 (b, H, W, 3) images and b prompts → (b,) scores."""
        raise NotImplementedError

    # ----- the Reward interface -----------------------------------------------------------------
    @torch.no_grad()
    def score_parts(self, images: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
        bs = self.options.batch_size
        out = [self.score_batch(images[i : i + bs], prompts[i : i + bs]).float().cpu()
               for i in range(0, len(prompts), bs)]
        scores = torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)
        return {self.name: scores}
