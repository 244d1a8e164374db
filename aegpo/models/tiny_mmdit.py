"""The built-in policy: a small SD3-style MMDiT over 32×32 RGB pixels with a small CLIP text encoder.

Denoiser: diffusers' `SD3Transformer2DModel` (joint attention, image tokens first),
patch 4 → 64 image tokens. Text: transformers' `CLIPTextModelWithProjection`
(per-token states → `encoder_hidden_states`, projected EOS state → `pooled_projections`)
over a word-level tokenizer. The latent is the image itself scaled to [−1, 1]; there
is no VAE, so `decode` is a rescale.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from diffusers import SD3Transformer2DModel
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, PreTrainedTokenizerFast

from aegpo.models.base import Conditioning, FlowPolicy
from aegpo.models.tokenizer import build_word_tokenizer

SIGMA_FLOOR = 0.05  # x-prediction: v = (x_σ − x̂0) / max(σ, SIGMA_FLOOR)


@dataclass(frozen=True)
class TinyMMDiTConfig:
    """Architecture of the built-in policy (stored in each checkpoint's aegpo_checkpoint.json)."""

    image_size: int = 32  # pixels per side
    patch_size: int = 4  # pixels per token side → (32/4)² = 64 image tokens
    num_layers: int = 6  # joint transformer blocks
    num_heads: int = 4
    head_dim: int = 32
    text_dim: int = 64  # text encoder width = joint_attention_dim = pooled dim
    text_layers: int = 2
    text_heads: int = 2
    max_tokens: int = 16  # prompts are padded/truncated to this many tokens
    prediction: str = "x"  # the denoiser predicts the clean image x0 ("x") or the velocity ("v")

    def transformer(self) -> SD3Transformer2DModel:
        return SD3Transformer2DModel(
            sample_size=self.image_size,
            patch_size=self.patch_size,
            in_channels=3,
            out_channels=3,
            num_layers=self.num_layers,
            attention_head_dim=self.head_dim,
            num_attention_heads=self.num_heads,
            joint_attention_dim=self.text_dim,
            caption_projection_dim=self.num_heads * self.head_dim,
            pooled_projection_dim=self.text_dim,
            pos_embed_max_size=self.image_size // self.patch_size,
        )

    def text_encoder(self, tokenizer: PreTrainedTokenizerFast) -> CLIPTextModelWithProjection:
        return CLIPTextModelWithProjection(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=self.text_dim,
                intermediate_size=2 * self.text_dim,
                num_hidden_layers=self.text_layers,
                num_attention_heads=self.text_heads,
                max_position_embeddings=self.max_tokens,
                projection_dim=self.text_dim,
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        )


def shapes_vocabulary() -> list[str]:
    from aegpo.shapes.spec import COLOURS, COUNT_WORDS, SHAPES

    words = list(COUNT_WORDS) + list(COLOURS) + list(SHAPES) + [s + "s" for s in SHAPES]
    return words + ["and", "left", "right", "of", "above", "below"]


class TinyMMDiTPolicy(FlowPolicy):
    """Built-in policy; see the module docstring."""

    def __init__(
        self,
        config: TinyMMDiTConfig,
        tokenizer: PreTrainedTokenizerFast | None = None,
        guidance_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer or build_word_tokenizer(shapes_vocabulary(), config.max_tokens)
        self.transformer = config.transformer()
        self.text_encoder = config.text_encoder(self.tokenizer)
        self.latent_shape = (3, config.image_size, config.image_size)
        self.guidance_scale = guidance_scale

    def describe(self) -> dict:
        return {"kind": "tiny_mmdit", "config": asdict(self.config)}

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Token ids (B, max_tokens)."""
        enc = self.tokenizer(
            [p.lower() for p in prompts],
            padding="max_length",
            truncation=True,
            max_length=self.config.max_tokens,
            return_tensors="pt",
        )
        return enc.input_ids.to(self.device)

    def text_states(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-token states (B, T, text_dim), pooled (B, text_dim)); differentiable (pretraining)."""
        out = self.text_encoder(input_ids=input_ids)
        return out.last_hidden_state, out.text_embeds

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        states, pooled = self.text_states(self.tokenize(prompts))
        tensors = {"states": states, "pooled": pooled}
        if self.guidance_scale != 1.0:
            u_states, u_pooled = self.text_states(self.tokenize([""] * len(prompts)))
            tensors.update(uncond_states=u_states, uncond_pooled=u_pooled)
        return Conditioning(tensors)

    def denoise(self, latents: torch.Tensor, sigma: torch.Tensor, states: torch.Tensor, pooled: torch.Tensor):
        """One denoiser call → velocity v (B, 3, H, W); the SD3 convention feeds timestep = 1000·σ.

        With `prediction = "x"` the transformer outputs the clean image and v = (x_σ − x̂0) / σ
        (σ floored at SIGMA_FLOOR). Large-patch pixel-space transformers learn clean images far
        faster than noise-like velocities (Li & He, "Back to Basics: Let Denoising Generative
        Models Denoise", 2025); the policy still exposes a velocity, so samplers are unchanged.
        """
        out = self.transformer(
            hidden_states=latents,
            encoder_hidden_states=states,
            pooled_projections=pooled,
            timestep=sigma * 1000.0,
            return_dict=False,
        )[0]
        if self.config.prediction == "v":
            return out
        s = sigma.clamp_min(SIGMA_FLOOR).view(-1, *([1] * (latents.ndim - 1))).to(out.dtype)
        return (latents - out) / s

    def velocity(self, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        t = cond.tensors
        if self.guidance_scale == 1.0:
            return self.denoise(latents, sigma, t["states"], t["pooled"]).float()
        # The unconditional branch is detached (as in Flow-GRPO) and runs first, so that the
        # attention entropy left in an active recorder is the conditional branch's.
        with torch.no_grad():
            u = self.denoise(latents, sigma, t["uncond_states"], t["uncond_pooled"]).float()
        v = self.denoise(latents, sigma, t["states"], t["pooled"]).float()
        return u + self.guidance_scale * (v - u)

    @property
    def nfe_per_call(self) -> int:
        """Denoiser evaluations per `velocity` call (2 with classifier-free guidance)."""
        return 2 if self.guidance_scale != 1.0 else 1

    @staticmethod
    def encode_images(images: np.ndarray) -> torch.Tensor:
        """uint8 (B, H, W, 3) → latents float32 (B, 3, H, W) in [−1, 1]."""
        x = torch.from_numpy(np.ascontiguousarray(images)).float().permute(0, 3, 1, 2)
        return x / 127.5 - 1.0

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        x = ((latents.detach().float().clamp(-1, 1) + 1) * 127.5).round()
        return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    # ----- checkpoint files (see aegpo.checkpoint) ---------------------------------------
    def save_base_files(self, directory) -> dict[str, str]:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.transformer.state_dict().items()},
                  str(directory / "transformer.safetensors"))
        save_file({k: v.contiguous() for k, v in self.text_encoder.state_dict().items()},
                  str(directory / "text_encoder.safetensors"))
        self.tokenizer.save_pretrained(str(directory / "tokenizer"))
        return {"transformer": "transformer.safetensors", "text_encoder": "text_encoder.safetensors",
                "tokenizer": "tokenizer"}

    @classmethod
    def load_base_files(cls, directory, manifest: dict, guidance_scale: float = 1.0) -> TinyMMDiTPolicy:
        from safetensors.torch import load_file

        files = manifest["files"]
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory / files["tokenizer"]))
        config = {"prediction": "v", **manifest["policy"]["config"]}  # checkpoints before x-prediction were v
        policy = cls(TinyMMDiTConfig(**config), tokenizer, guidance_scale=guidance_scale)
        policy.transformer.load_state_dict(load_file(str(directory / files["transformer"])))
        policy.text_encoder.load_state_dict(load_file(str(directory / files["text_encoder"])))
        return policy
