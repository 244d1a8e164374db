"""PickScore (Kirstain et al. 2023): a CLIP ViT-H/14 fine-tuned on Pick-a-Pic preferences.

score = exp(logit_scale) · cos(image embedding, text embedding), ≈ 18–24 for typical images
(Flow-GRPO divides by 26: use `reward.weights: {pickscore: 0.0385}` to match its scale).

Weights: `yuvalkirstain/PickScore_v1` (transformers CLIPModel); tokenizer and preprocessing:
`laion/CLIP-ViT-H-14-laion2B-s32B-b79K`. Options (`reward.models.pickscore`): `path` = the
PickScore_v1 folder, `processor` = the folder with the tokenizer/preprocessor files (default:
`path`, if it has them).
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from aegpo.rewards.clip_common import load_clip_encoder
from aegpo.rewards.model_base import ModelReward, ModelRewardOptions


class PickScoreOptions(ModelRewardOptions):
    processor: str | None = Field(
        None, description="Folder with the CLIP tokenizer and preprocessor_config.json "
        "(laion/CLIP-ViT-H-14-laion2B-s32B-b79K); null = path.")


class PickScoreReward(ModelReward):
    name = "pickscore"
    Options = PickScoreOptions
    source_hint = "hub: yuvalkirstain/PickScore_v1 + laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

    def load(self) -> None:
        model_dir = self.resolve(self.options.path, "path", "dir")
        processor_dir = (self.resolve(self.options.processor, "processor", "dir") if self.options.processor
                         else model_dir)
        self.clip = load_clip_encoder(model_dir, processor_dir, self.device, self.dtype, f"reward.models.{self.name}")

    def score_batch(self, images: np.ndarray, prompts: list[str]) -> torch.Tensor:
        cos = (self.clip.image_embeds(images) * self.clip.text_embeds(prompts)).sum(-1)
        return self.clip.logit_scale * cos
