"""FLUX.1 policy (`model.kind: flux`): diffusers' `FluxPipeline` (FLUX.1-dev, FLUX.1-schnell).

Denoiser: `FluxTransformer2DModel` — double-stream blocks (`transformer_blocks.*.attn`,
separate text/image projections, **text tokens first**) then single-stream blocks
(`single_transformer_blocks.*.attn`, one sequence text + image), 3-axis RoPE. Text: T5-XXL
states → `states` (B, max_sequence_length, 4096); CLIP-L pooled → `pooled` (B, 768).

Latents are kept unpacked, (16, H/8, W/8), so samplers and decoding see an image-shaped
tensor; each call packs them into 2×2 patches (B, H/16·W/16, 64) and unpacks the output.
The transformer takes timestep = σ (it multiplies by 1000 itself). Guidance-distilled models
(FLUX.1-dev, `guidance_embeds`) get `model.pretrained.embedded_guidance` through the guidance
embedding on every call (no second branch); `model.guidance_scale > 1` adds true CFG on
top (a detached negative-prompt branch), which FLUX.1-dev normally does not use.
"""

from __future__ import annotations

import math

import torch
from diffusers import FluxPipeline

from aegpo.entropy.flux import EntropyFluxAttnProcessor, FluxTokenLayout
from aegpo.models.diffusers_policy import PipelinePolicy


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) → (B, h/2·w/2, 4C), FLUX's 2×2 patch packing (FluxPipeline._pack_latents)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(packed: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, h/2·w/2, 4C) → (B, C, h, w), the inverse of `pack`."""
    b, _, c4 = packed.shape
    x = packed.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, h, w)


def image_ids(h: int, w: int, device, dtype) -> torch.Tensor:
    """RoPE positions (h/2·w/2, 3) = (0, row, col) of the packed latent grid."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] += torch.arange(h // 2)[:, None]
    ids[..., 2] += torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxPolicy(PipelinePolicy):
    kind = "flux"
    pipeline_class = FluxPipeline
    default_max_sequence_length = 512

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.layout = FluxTokenLayout()  # text length of the current forward, for single-stream entropy

    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels) // 4

    def pixel_multiple_per_latent(self) -> int:
        return 2  # 2×2 packing

    @property
    def guidance_embeds(self) -> bool:
        return bool(self.transformer.config.guidance_embeds)

    def text_encoders(self) -> list:
        pipe = self._pipe
        return [e for e in (getattr(pipe, n, None) for n in ("text_encoder", "text_encoder_2")) if e is not None]

    def encode_batch(self, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        """{"states": (B, max_sequence_length, joint_dim), "pooled": (B, pooled_dim)} in the model dtype."""
        states, pooled, _ = self._pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=device, max_sequence_length=self.max_sequence_length
        )
        return {"states": states.to(self.dtype), "pooled": pooled.to(self.dtype)}

    def denoise(self, latents, sigma, text, prefix):
        b, _, h, w = latents.shape
        states = text[prefix + "states"]
        self.layout.text_tokens = states.shape[1]
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full((b,), self.params.embedded_guidance, device=latents.device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=pack(latents),
            timestep=sigma.to(latents.dtype),
            guidance=guidance,
            pooled_projections=text[prefix + "pooled"],
            encoder_hidden_states=states,
            txt_ids=torch.zeros(states.shape[1], 3, device=latents.device, dtype=latents.dtype),
            img_ids=image_ids(h, w, latents.device, latents.dtype),
            return_dict=False,
        )[0]
        return unpack(out, h, w)

    def entropy_processor(self, recorder, slot: int, module):
        """FLUX processor for double- and single-stream blocks (aegpo.entropy.flux)."""
        return EntropyFluxAttnProcessor(recorder, slot, self.layout)

    def scheduler_shift(self) -> float:
        """exp(μ) of FluxPipeline's resolution-dependent shift (μ linear in image tokens), or the static shift."""
        cfg = self._pipe.scheduler.config
        if not cfg.get("use_dynamic_shifting", False):
            return float(cfg.get("shift", 1.0))
        tokens = (self.latent_shape[1] // 2) * (self.latent_shape[2] // 2)
        x1, x2 = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
        y1, y2 = cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15)
        mu = (y2 - y1) / (x2 - x1) * tokens + (y1 - (y2 - y1) / (x2 - x1) * x1)
        return math.exp(mu)
