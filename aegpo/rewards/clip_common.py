"""CLIP towers shared by PickScore, HPS-v2.1, CLIP score and the aesthetic predictor.

`ClipEncoder` wraps a transformers `CLIPModel` with its tokenizer and image settings and
returns L2-normalised embeddings; `LinearChain` is the bias-affine stack of linears used
by the LAION aesthetic head and ImageReward's head (their MLPs have no activations).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoTokenizer, CLIPModel

from aegpo.io_utils import CorruptFileError, check_safetensors
from aegpo.rewards.images import CLIP_MEAN, CLIP_STD, pixel_values
from aegpo.rewards.model_base import RewardModelError

MIN_VOCAB = 100  # an offline `from_pretrained` without tokenizer files can yield a 2-token tokenizer


def load_tokenizer(folder: Path, where: str):
    """A transformers tokenizer from `folder`, refusing an empty/degenerate one."""
    try:
        tok = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"{where}: no tokenizer in {folder} ({err})") from None
    if len(tok) < MIN_VOCAB:
        raise ValueError(f"{where}: the tokenizer in {folder} has only {len(tok)} tokens (tokenizer files missing?)")
    return tok


def image_settings(folder: Path | None, config) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(crop size, mean, std) from `folder/preprocessor_config.json` if present, else CLIP's defaults."""
    size, mean, std = int(config.vision_config.image_size), CLIP_MEAN, CLIP_STD
    path = folder / "preprocessor_config.json" if folder is not None else None
    if path is not None and path.is_file():
        pre = json.loads(path.read_text(encoding="utf-8"))
        crop = pre.get("crop_size", size)
        size = int(crop.get("height", size) if isinstance(crop, dict) else crop)
        mean, std = tuple(pre.get("image_mean", mean)), tuple(pre.get("image_std", std))
    return size, mean, std


class ClipEncoder:
    """Normalised image and text embeddings of a transformers CLIPModel.

    Args:
        model: the CLIPModel (already on its device/dtype, eval mode).
        tokenizer: its tokenizer (prompts are truncated to the model's text positions).
        size, mean, std: image crop size and normalisation.
    """

    def __init__(self, model: CLIPModel, tokenizer, size: int, mean=CLIP_MEAN, std=CLIP_STD) -> None:
        self.model, self.tokenizer = model.eval().requires_grad_(False), tokenizer
        self.size, self.mean, self.std = size, mean, std
        self.max_tokens = int(model.config.text_config.max_position_embeddings)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def image_embeds(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (b, H, W, 3) → float32 (b, E), unit norm."""
        x = pixel_values(images, self.size, self.mean, self.std, self.device, self.dtype)
        emb = self.model.visual_projection(self.model.vision_model(pixel_values=x).pooler_output).float()
        return emb / emb.norm(dim=-1, keepdim=True)

    def text_embeds(self, prompts: list[str]) -> torch.Tensor:
        """b prompts → float32 (b, E), unit norm."""
        enc = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_tokens,
                             return_tensors="pt").to(self.device)
        out = self.model.text_model(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
        emb = self.model.text_projection(out.pooler_output).float()
        return emb / emb.norm(dim=-1, keepdim=True)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())


def load_clip_encoder(model_dir: Path, processor_dir: Path, device, dtype, where: str) -> ClipEncoder:
    """A ClipEncoder from a transformers CLIP folder (weights) and a folder with its tokenizer/preprocessor."""
    for weights in sorted(Path(model_dir).glob("*.safetensors")):  # a torn file: named, not a loader traceback
        try:
            check_safetensors(weights, f"download the model folder again and point {where}.path at it "
                                       "(see docs/rewards.md)")
        except CorruptFileError as err:
            raise RewardModelError(f"{where}.path: {err}") from None
    try:
        model = CLIPModel.from_pretrained(str(model_dir), dtype=dtype)
    except (OSError, ValueError) as err:
        raise ValueError(f"{where}: cannot load a transformers CLIPModel from {model_dir}: {err}") from None
    size, mean, std = image_settings(processor_dir, model.config)
    return ClipEncoder(model.to(device), load_tokenizer(processor_dir, where), size, mean, std)


class LinearChain(nn.Module):
    """Linears applied in sequence (dropouts are inactive at inference and there are no activations).

    Built from a state dict with keys `<prefix><index>.weight/bias` (e.g. LAION's `layers.0`, `layers.2`, ...,
    `layers.7`) or a single `weight`/`bias` (the LAION linear head).
    """

    def __init__(self, state: dict[str, torch.Tensor], prefix: str = "layers.") -> None:
        super().__init__()
        if "weight" in state and not any(k.startswith(prefix) for k in state):
            indices, key = [0], lambda i, n: n  # noqa: E731
        else:
            pattern = re.compile(re.escape(prefix) + r"(\d+)\.weight$")
            indices = sorted(int(m.group(1)) for k in state if (m := pattern.match(k)))
            key = lambda i, n: f"{prefix}{i}.{n}"  # noqa: E731
        if not indices:
            raise ValueError(f"no linear layers '{prefix}<i>.weight' in the head weights (keys: {sorted(state)[:6]})")
        layers = []
        for i in indices:
            w = state[key(i, "weight")]
            lin = nn.Linear(w.shape[1], w.shape[0], bias=key(i, "bias") in state)
            with torch.no_grad():
                lin.weight.copy_(w)
                if lin.bias is not None:
                    lin.bias.copy_(state[key(i, "bias")])
            if layers and layers[-1].out_features != lin.in_features:
                raise ValueError(f"head layer {i}: input {lin.in_features} does not match the previous output "
                                 f"{layers[-1].out_features}")
            layers.append(lin)
        self.layers = nn.ModuleList(layers)

    @property
    def in_features(self) -> int:
        return self.layers[0].in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x
