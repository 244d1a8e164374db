"""ImageReward (Xu et al. 2023): BLIP image-grounded text encoder + an MLP head, trained on human rankings.

score = (MLP(text-encoder [CLS] state, cross-attending to the image) − 0.16717) / 1.03334, as
`ImageReward.score` (≈ −2 … 2). Architecture (ImageReward's `BLIP_Pretrain(image_size=224,
vit="large")`): a ViT-L/16 at 224 px (BLIP's timm-style ViT, LayerNorm eps 1e-6) and a
BERT-base text encoder with cross-attention (BLIP's med.py), tokenised with bert-base-uncased
plus BLIP's added `[DEC]`/`[ENC]` tokens (vocabulary 30524), 35 tokens, padded.

The published `ImageReward.pt` (hub `THUDM/ImageReward`) is a pickled state dict with keys
`blip.visual_encoder.*`, `blip.text_encoder.*`, `mlp.layers.*`; it is read with
`torch.load(weights_only=True)` (or convert it once: `python -m aegpo.rewards.weights
ImageReward.pt ImageReward.safetensors`) and mapped onto transformers' `BlipVisionModel` and
`BlipTextModel`:

    blip.visual_encoder.cls_token / pos_embed / patch_embed.proj
                                                                 → embeddings.class_embedding / position_embedding /
                                                                   patch_embedding
    blip.visual_encoder.blocks.i.norm1 / norm2 / attn.qkv / attn.proj / mlp.fc1 / mlp.fc2
                                                                 → encoder.layers.i.layer_norm1 / layer_norm2 /
                                                                   self_attn.qkv / self_attn.projection / mlp.fc1 /
                                                                   mlp.fc2
    blip.visual_encoder.norm                                     → post_layernorm
    blip.text_encoder.<name>                                     → <name> (same names as BLIP's med.py)

Sizes come from the tensors (heads = width / 64, as ViT-L/16 and BERT-base); the
med_config.json file is not needed. Options (`reward.models.imagereward`): `path` = the
checkpoint file (or a folder holding it), `tokenizer` = a bert-base-uncased folder.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from torch import nn
from transformers import BertTokenizer, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

from aegpo.rewards.clip_common import MIN_VOCAB, LinearChain
from aegpo.rewards.images import CLIP_MEAN, CLIP_STD, pixel_values
from aegpo.rewards.model_base import ModelReward, ModelRewardOptions, RewardModelError
from aegpo.rewards.weights import PICKLE_SUFFIXES

MEAN, STD = 0.16717362830052426, 1.0333394966054072  # ImageReward's score normalisation
MAX_TOKENS = 35
VISION_KEYS = [
    (r"cls_token$", "embeddings.class_embedding"),
    (r"pos_embed$", "embeddings.position_embedding"),
    (r"patch_embed\.proj\.(weight|bias)$", r"embeddings.patch_embedding.\1"),
    (r"blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"blocks\.(\d+)\.mlp\.fc(\d)\.", r"encoder.layers.\1.mlp.fc\2."),
    (r"norm\.(weight|bias)$", r"post_layernorm.\1"),
]


def _vision_state(state: dict[str, torch.Tensor], prefix: str = "blip.visual_encoder.") -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        for pattern, repl in VISION_KEYS:
            if re.match(pattern, name):
                out[re.sub(pattern, repl, name, count=1)] = value
                break
        else:
            raise ValueError(f"unknown visual-encoder key {key}")
    return out


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.match(k))})


def blip_modules(state: dict[str, torch.Tensor]) -> tuple[BlipVisionModel, BlipTextModel, LinearChain]:
    """(vision, text, head) carrying the weights of an ImageReward state dict (published key names)."""
    vision_state = _vision_state(state)
    width, _, patch, _ = vision_state["embeddings.patch_embedding.weight"].shape
    grid = int(round((vision_state["embeddings.position_embedding"].shape[1] - 1) ** 0.5))
    vision = BlipVisionModel(BlipVisionConfig(
        hidden_size=width, intermediate_size=vision_state["encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=_count(vision_state, r"encoder\.layers\.(\d+)\."), num_attention_heads=max(1, width // 64),
        image_size=grid * patch, patch_size=patch, hidden_act="gelu", layer_norm_eps=1e-6,
    ))
    _load(vision, vision_state, "blip.visual_encoder")

    prefix = "blip.text_encoder."
    text_state = {k[len(prefix):]: v for k, v in state.items()
                  if k.startswith(prefix) and not k.endswith("position_ids")}
    vocab, hidden = text_state["embeddings.word_embeddings.weight"].shape
    text = BlipTextModel(BlipTextConfig(
        vocab_size=vocab, hidden_size=hidden, encoder_hidden_size=width,
        intermediate_size=text_state["encoder.layer.0.intermediate.dense.weight"].shape[0],
        num_hidden_layers=_count(text_state, r"encoder\.layer\.(\d+)\."), num_attention_heads=max(1, hidden // 64),
        max_position_embeddings=text_state["embeddings.position_embeddings.weight"].shape[0],
        hidden_act="gelu", layer_norm_eps=1e-12, is_decoder=True,  # is_decoder builds the cross-attention layers
        pad_token_id=0, bos_token_id=None, eos_token_id=None, sep_token_id=None,
    ), add_pooling_layer=False)
    _load(text, text_state, "blip.text_encoder")

    head = LinearChain({k.removeprefix("mlp."): v for k, v in state.items() if k.startswith("mlp.")})
    if head.in_features != hidden:
        raise ValueError(f"mlp takes {head.in_features}-d inputs but the text encoder is {hidden}-d")
    return vision, text, head


def _load(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{what}: missing {missing[:4]}, unexpected {unexpected[:4]}")


def blip_tokenizer(folder: Path) -> BertTokenizer:
    """bert-base-uncased plus BLIP's `[DEC]` (bos) and `[ENC]` tokens, as ImageReward's `init_tokenizer`."""
    tok = BertTokenizer.from_pretrained(str(folder))
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


class ImageRewardOptions(ModelRewardOptions):
    tokenizer: str = Field(
        ..., description="Folder with the bert-base-uncased tokenizer (vocab.txt or tokenizer.json); BLIP's "
        "[DEC]/[ENC] tokens are added here.")


class ImageRewardReward(ModelReward):
    name = "imagereward"
    Options = ImageRewardOptions
    source_hint = "hub: THUDM/ImageReward file ImageReward.pt + google-bert/bert-base-uncased tokenizer"

    def load(self) -> None:
        where = f"reward.models.{self.name}"
        path = self.resolve(self.options.path, "path")
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (*PICKLE_SUFFIXES, ".safetensors"))
            if len(files) != 1:
                raise RewardModelError(f"{where}.path: {path} must hold exactly one checkpoint file "
                                       f"(found {len(files)})")
            path = files[0]
        state = self.load_weights(path)
        try:
            self.vision, self.text, self.head = blip_modules(state)
        except (KeyError, ValueError) as err:
            raise RewardModelError(f"{where}.path: {path} is not an ImageReward checkpoint ({err})") from None
        for m in (self.vision, self.text, self.head):
            m.to(self.device, self.dtype).eval().requires_grad_(False)
        self.tokenizer = blip_tokenizer(self.resolve(self.options.tokenizer, "tokenizer", "dir"))
        if len(self.tokenizer) < MIN_VOCAB or len(self.tokenizer) != self.text.config.vocab_size:
            raise RewardModelError(f"{where}.tokenizer: {len(self.tokenizer)} tokens after adding [DEC]/[ENC], but the "
                                   f"text encoder has {self.text.config.vocab_size} (expected bert-base-uncased)")
        self.image_size = self.vision.config.image_size

    def score_batch(self, images: np.ndarray, prompts: list[str]) -> torch.Tensor:
        x = pixel_values(images, self.image_size, CLIP_MEAN, CLIP_STD, self.device, self.dtype)
        image_embeds = self.vision(pixel_values=x).last_hidden_state
        enc = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=MAX_TOKENS,
                             return_tensors="pt").to(self.device)
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        states = self.text(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                           encoder_hidden_states=image_embeds, encoder_attention_mask=image_mask).last_hidden_state
        reward = self.head(states[:, 0].to(self.dtype)).float().squeeze(-1)
        return (reward - MEAN) / STD
