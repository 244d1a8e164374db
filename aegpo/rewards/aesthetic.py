"""LAION aesthetic predictor: a linear/MLP head on unit-norm CLIP ViT-L/14 image embeddings (prompt-free).

Scores are on the LAION 1–10 scale (≈ 4–7 for generated images). Two published heads:
the improved predictor `sac+logos+ava1-l14-linearMSE.pth` (christophschuhmann/
improved-aesthetic-predictor; an MLP 768→1024→128→64→16→1 without activations, the one DDPO
and Flow-GRPO use) and LAION-Aesthetics v1 `sa_0_4_vit_l_14_linear.pth` (one linear layer).
Both are PyTorch pickles: they are read with `torch.load(weights_only=True)`, or convert them
once with `python -m aegpo.rewards.weights HEAD.pth HEAD.safetensors`.

Options (`reward.models.aesthetic`): `path` = the openai/clip-vit-large-patch14 folder,
`head` = the head weights file.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from aegpo.rewards.clip_common import LinearChain, load_clip_encoder
from aegpo.rewards.model_base import ModelReward, ModelRewardOptions, RewardModelError


class AestheticOptions(ModelRewardOptions):
    head: str = Field(
        ..., description="Aesthetic head weights (.safetensors, or the published .pth read with weights_only=True), "
        "e.g. sac+logos+ava1-l14-linearMSE.safetensors.")


class AestheticReward(ModelReward):
    name = "aesthetic"
    Options = AestheticOptions
    source_hint = "hub: openai/clip-vit-large-patch14 + improved-aesthetic-predictor sac+logos+ava1-l14-linearMSE.pth"

    def load(self) -> None:
        folder = self.resolve(self.options.path, "path", "dir")
        self.clip = load_clip_encoder(folder, folder, self.device, self.dtype, f"reward.models.{self.name}")
        head_file = self.resolve(self.options.head, "head", "file")
        state = self.load_weights(head_file, "head")
        try:
            self.head = LinearChain(state).to(self.device, self.dtype).eval()
        except ValueError as err:
            raise RewardModelError(f"reward.models.{self.name}.head: {err}") from None
        embed_dim = self.clip.model.config.projection_dim
        if self.head.in_features != embed_dim:
            raise RewardModelError(f"reward.models.{self.name}.head: takes {self.head.in_features}-d embeddings "
                                   "but the "
                                   f"CLIP model gives {embed_dim}-d (ViT-L/14 heads need ViT-L/14)")

    def validate_prompt(self, prompt: str) -> None:
        """Any prompt: the aesthetic score ignores it."""

    def score_batch(self, images: np.ndarray, prompts: list[str]) -> torch.Tensor:
        emb = self.clip.image_embeds(images)
        return self.head(emb.to(self.dtype)).float().squeeze(-1)
