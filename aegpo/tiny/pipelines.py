"""Tiny random-weight `StableDiffusion3Pipeline` and `FluxPipeline` (no download).

Every component is the real diffusers/transformers class at a toy size: 8×8 latents
(32×32 pixels through a 3-level VAE), 1–2 transformer blocks of width 32, CLIP and T5
text encoders of one or two layers, and the tokenizers of `aegpo.tiny.tokenizers`.
`save_*` writes the pipeline with `save_pretrained`, so policies load it through the
same `from_pretrained` path as a published checkpoint (model.kind sd3 / flux).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from aegpo.tiny.tokenizers import clip_tokenizer, t5_tokenizer

LATENT = 8  # latent side; pixels = 4 × LATENT with the 3-level VAE below
RESOLUTION = 4 * LATENT  # image side in pixels (model.pretrained.resolution)
TEXT_DIM = 32
T5_DIM = 32


def _perturb(module: torch.nn.Module, scale: float = 0.05) -> None:
    """diffusers zero-initialises adaLN gates and output layers: perturb every weight so outputs depend on inputs."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)


def _vae(latent_channels: int, shift: bool) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 8, 8), layers_per_block=1, norm_num_groups=4, sample_size=RESOLUTION,
        scaling_factor=1.5305 if not shift else 0.3611, shift_factor=0.0609 if not shift else 0.1159,
        use_quant_conv=False, use_post_quant_conv=False,
    )


def _clip(tokenizer, with_projection: bool, hidden: int = TEXT_DIM):
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                            projection_dim=hidden, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def _t5(tokenizer) -> T5EncoderModel:
    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=T5_DIM, d_kv=8, d_ff=64, num_layers=1,
                                   num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))


def sd3_pipeline(seed: int = 0, num_layers: int = 2) -> StableDiffusion3Pipeline:
    """SD3.5-style: two CLIP-with-projection encoders, a T5 encoder, MMDiT with RMS qk-norm."""
    torch.manual_seed(seed)
    tok = clip_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=LATENT, patch_size=2, in_channels=4, out_channels=4, num_layers=num_layers,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=T5_DIM, caption_projection_dim=32,
        pooled_projection_dim=2 * TEXT_DIM, pos_embed_max_size=LATENT, qk_norm="rms_norm",
    )
    _perturb(transformer)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae(4, shift=False),
        text_encoder=_clip(tok, True), tokenizer=tok, text_encoder_2=_clip(tok, True), tokenizer_2=clip_tokenizer(),
        text_encoder_3=_t5(t5_tokenizer()), tokenizer_3=t5_tokenizer(),
    )


def flux_pipeline(seed: int = 0, guidance_embeds: bool = True) -> FluxPipeline:
    """FLUX.1-style: CLIP (pooled) + T5 (sequence), one double- and one single-stream block; dev-style guidance."""
    torch.manual_seed(seed)
    tok = clip_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=T5_DIM, pooled_projection_dim=TEXT_DIM,
        guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6),
    )
    _perturb(transformer)
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        vae=_vae(4, shift=True), text_encoder=_clip(tok, False), tokenizer=tok,
        text_encoder_2=_t5(t5_tokenizer()), tokenizer_2=t5_tokenizer(), transformer=transformer,
    )


def save_sd3(path: Path, **kwargs) -> Path:
    """Write `sd3_pipeline(**kwargs)` to the folder `path` (diffusers layout with model_index.json)."""
    sd3_pipeline(**kwargs).save_pretrained(str(path))
    return path


def save_flux(path: Path, **kwargs) -> Path:
    """Write `flux_pipeline(**kwargs)` to the folder `path` (diffusers layout with model_index.json)."""
    flux_pipeline(**kwargs).save_pretrained(str(path))
    return path
