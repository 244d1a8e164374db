"""Tiny random CLIP reward models in the published transformers folder layout (no download).

`clip_folder` writes what `reward.models.pickscore.path` (yuvalkirstain/PickScore_v1 with the
tokenizer and preprocessor of laion/CLIP-ViT-H-14-laion2B-s32B-b79K) and
`reward.models.clipscore.path` (openai/clip-vit-large-patch14) point at: config.json,
model.safetensors, the CLIP tokenizer files and preprocessor_config.json, at 32×32 pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel

from aegpo.tiny.tokenizers import clip_tokenizer

IMAGE = 32  # pixels
PATCH = 8
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def tiny_clip(seed: int = 0, vision_width: int = 128, text_width: int = 64,
              eos_token_id: int | None = None) -> CLIPModel:
    """A 2-layer CLIPModel (32-pixel images, 8-pixel patches, 32-dim projection) with random weights."""
    torch.manual_seed(seed)
    tok = clip_tokenizer()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=text_width, intermediate_size=2 * text_width,
                         num_hidden_layers=2, num_attention_heads=max(1, text_width // 64),
                         max_position_embeddings=77, hidden_act="gelu",
                         eos_token_id=eos_token_id if eos_token_id is not None else tok.eos_token_id,
                         bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=vision_width, intermediate_size=2 * vision_width, num_hidden_layers=2,
                           num_attention_heads=max(1, vision_width // 64), image_size=IMAGE, patch_size=PATCH,
                           hidden_act="gelu"),
        projection_dim=32,
    )
    model = CLIPModel(config).eval()
    with torch.no_grad():  # larger random weights: embeddings must differ clearly between inputs
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.1)
    return model


def clip_folder(path: Path, seed: int = 0) -> CLIPModel:
    """A transformers CLIP folder: config + model.safetensors + tokenizer + preprocessor_config.json."""
    path = Path(path)
    model = tiny_clip(seed)
    model.save_pretrained(str(path))
    clip_tokenizer().save_pretrained(str(path))
    (path / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": IMAGE, "width": IMAGE}, "size": {"shortest_edge": IMAGE},
        "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "image_processor_type": "CLIPImageProcessor"}))
    return model
