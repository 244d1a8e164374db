"""SD3 / SD3.5 policy (`model.kind: sd3`): diffusers' `StableDiffusion3Pipeline`.

Denoiser: `SD3Transformer2DModel` (MMDiT joint attention, image tokens first; SD3.5
adds RMS qk-norm and, in its first blocks, a second image-only attention `attn2`, which
is not recorded). Text: CLIP-L and CLIP-G penultimate states concatenated and zero-padded
to T5's width, followed by T5-XXL states → `states` (B, 77 + max_sequence_length, 4096);
the two pooled CLIP embeddings → `pooled` (B, 2048). The transformer takes
timestep = 1000·σ. Latents are the VAE's 16 channels at 1/8 resolution (unpacked).
"""

from __future__ import annotations

import torch
from diffusers import StableDiffusion3Pipeline

from aegpo.models.diffusers_policy import PipelinePolicy


class SD3Policy(PipelinePolicy):
    kind = "sd3"
    pipeline_class = StableDiffusion3Pipeline
    default_max_sequence_length = 256

    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels)

    def pixel_multiple_per_latent(self) -> int:
        return int(self.transformer.config.patch_size)

    def text_encoders(self) -> list:
        pipe = self._pipe
        return [e for e in (getattr(pipe, n, None) for n in ("text_encoder", "text_encoder_2", "text_encoder_3"))
                if e is not None]

    def encode_batch(self, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        """{"states": (B, 77 + T5 tokens, joint_dim), "pooled": (B, pooled_dim)} in the model dtype."""
        states, _, pooled, _ = self._pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=device, do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return {"states": states.to(self.dtype), "pooled": pooled.to(self.dtype)}

    def denoise(self, latents, sigma, text, prefix):
        return self.transformer(
            hidden_states=latents,
            encoder_hidden_states=text[prefix + "states"],
            pooled_projections=text[prefix + "pooled"],
            timestep=sigma.float() * 1000.0,
            return_dict=False,
        )[0]
