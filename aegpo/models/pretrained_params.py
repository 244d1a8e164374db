"""params.yaml `model.pretrained`: loading real diffusers pipelines (kinds sd3: SD3/SD3.5, flux: FLUX.1).

Classifier-free guidance is `model.guidance_scale` (1 = off; > 1 runs a detached
unconditional branch on `negative_prompt`); FLUX.1-dev's distilled guidance is the
separate `embedded_guidance` value fed to its guidance embedding. See docs/models.md.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from aegpo.config_base import Section

DTYPES = ("bfloat16", "float16", "float32")


class PretrainedParams(Section):
    path: str = Field(
        "", description="Local folder (relative to the project) or hub id of a diffusers pipeline, e.g. "
        "stabilityai/stable-diffusion-3.5-medium; hub ids are read from the local Hugging Face cache only (nothing is "
        "downloaded at run time). Required for kinds sd3 and flux; unused by tiny_mmdit.")
    revision: str | None = Field(
        None, description="Hub revision (branch, tag or commit) of a hub id; null = main. Ignored for a local folder.")
    variant: str | None = Field(
        None, description="Weight-file variant to load (diffusers `variant`, e.g. fp16); null = the default files.")
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="Weights and activations of the denoiser, VAE and text encoders. Sampler arithmetic "
        "(SDE steps, log-probs) is always float32 (aegpo/samplers.py).")
    resolution: int = Field(
        512, ge=16, le=4096, description="Image side in pixels (height = width = resolution unless height/width are "
        "set). Must be a multiple of the VAE factor × patch size (16 for SD3.5 and FLUX.1).")
    height: int | None = Field(None, ge=16, le=4096, description="Image height in pixels; null = resolution.")
    width: int | None = Field(None, ge=16, le=4096, description="Image width in pixels; null = resolution.")
    max_sequence_length: int | None = Field(
        None, ge=1, le=512, description="T5 tokens per prompt; null = the model's default (SD3: 256, FLUX.1: 512).")
    gradient_checkpointing: bool = Field(
        True, description="Recompute transformer blocks in the backward pass (training memory ÷ ~depth, ≈ +30 % step "
        "time). Rollouts run without gradients and are unaffected.")
    text_cache_dir: str = Field(
        "", description="Folder (relative to the project) for cached text embeddings, one safetensors file per prompt "
        "under a key of the text encoders and settings; '' = cache in memory only.")
    text_encoder_device: Literal["auto", "cpu"] = Field(
        "auto", description="auto: text encoders run on the denoiser's device (moved there on first use); cpu: they "
        "stay on the CPU (saves ~10 GB of GPU memory for T5-XXL; with the text cache each prompt is encoded once).")
    negative_prompt: str = Field("", description="Prompt of the unconditional branch when model.guidance_scale > 1.")
    embedded_guidance: float = Field(
        3.5, ge=0, description="FLUX guidance-distilled models (FLUX.1-dev): value fed to the guidance embedding (3.5 "
        "is the published default). Ignored by models without one (SD3, FLUX.1-schnell).")
    decode_batch_size: int = Field(8, ge=1, description="Images per VAE decode call (bounds decode memory).")
    sdpa_backend: Literal["auto", "flash", "efficient", "cudnn", "math"] = Field(
        "auto", description="torch scaled_dot_product_attention backend for the denoiser; auto = torch's choice.")

    @model_validator(mode="after")
    def _check(self) -> PretrainedParams:
        for name in ("height", "width"):
            value = getattr(self, name) or self.resolution
            if value % 8:
                raise ValueError(f"model.pretrained.{name}: {value} pixels is not a multiple of 8 (the VAE factor)")
        return self

    @property
    def image_height(self) -> int:
        return self.height or self.resolution

    @property
    def image_width(self) -> int:
        return self.width or self.resolution

    def identity(self) -> dict[str, Any]:
        """The settings that change what the policy computes (part of the base reference and its digest).

        Storage and speed knobs (cache folder, decode batch, checkpointing, devices, SDPA backend) are left out,
        so changing them does not invalidate cached entropy profiles or trained checkpoints.
        """
        keys = ("path", "revision", "variant", "dtype", "max_sequence_length", "negative_prompt", "embedded_guidance")
        return {**{k: getattr(self, k) for k in keys}, "height": self.image_height, "width": self.image_width}
