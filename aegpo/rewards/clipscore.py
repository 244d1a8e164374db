"""CLIP score: cosine similarity of CLIP image and text embeddings (text-image alignment).

Part `clipscore` = cos ∈ [−1, 1] (≈ 0.2–0.35 for matching pairs with ViT-L/14). Flow-GRPO
reports logits/30 = 100·cos/30 and Hessel et al.'s CLIPScore is 2.5·max(cos, 0); both are a
weight away (`reward.weights: {clipscore: 3.33}`).

Weights: `openai/clip-vit-large-patch14` (transformers CLIPModel with tokenizer and
preprocessor files in the same folder). Option `path` = that folder.
"""

from __future__ import annotations

import numpy as np
import torch

from aegpo.rewards.clip_common import load_clip_encoder
from aegpo.rewards.model_base import ModelReward


class ClipScoreReward(ModelReward):
    name = "clipscore"
    source_hint = "hub: openai/clip-vit-large-patch14"

    def load(self) -> None:
        folder = self.resolve(self.options.path, "path", "dir")
        self.clip = load_clip_encoder(folder, folder, self.device, self.dtype, f"reward.models.{self.name}")

    def score_batch(self, images: np.ndarray, prompts: list[str]) -> torch.Tensor:
        return (self.clip.image_embeds(images) * self.clip.text_embeds(prompts)).sum(-1)
