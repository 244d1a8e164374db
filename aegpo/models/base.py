"""The policy seam: what the trainer, samplers and entropy recorder need from a text-to-image flow model.

A policy owns a denoiser (`self.transformer`, the module that is trained) and
everything needed to turn prompts into conditioning and latents into pixels.
The trainer only calls the methods below, so the built-in tiny MMDiT, SD3.5 and
FLUX policies are interchangeable.
"""

from __future__ import annotations

import contextlib
import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class Conditioning:
    """Text conditioning for a batch of prompts; every tensor has the prompt batch as dim 0."""

    tensors: dict[str, torch.Tensor]

    def select(self, index: torch.Tensor) -> Conditioning:
        """Rows `index` (LongTensor (N,)) of every tensor: one row per sample."""
        return Conditioning({k: v.index_select(0, index.to(v.device)) for k, v in self.tensors.items()})

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapter settings (peft)."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    init: str = "gaussian"
    dropout: float = 0.0


class FlowPolicy(nn.Module, ABC):
    """A rectified-flow policy: x_t = (1 − σ)·x0 + σ·ε, the denoiser predicts v = ε − x0."""

    transformer: nn.Module
    #: latent shape of one sample, e.g. (3, 32, 32)
    latent_shape: tuple[int, ...]

    def __init__(self) -> None:
        super().__init__()
        self._frozen_reference: nn.Module | None = None
        self.lora: LoraSpec | None = None

    # ----- what each model implements -----------------------------------------------------
    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """Text conditioning for `prompts` (no gradient)."""

    @abstractmethod
    def velocity(self, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Predicted velocity, float32 (B, *latent_shape), for latents (B, *latent_shape) at sigma (B,)."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents (B, *latent_shape) → uint8 images (B, H, W, 3)."""

    # ----- shared machinery -------------------------------------------------------------------
    #: denoiser evaluations per `velocity` call (2 with classifier-free guidance)
    nfe_per_call: int = 1

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def add_lora(self, spec: LoraSpec, seed: int = 0) -> None:
        """Add a trainable LoRA adapter to the denoiser and freeze everything else."""
        from peft import LoraConfig

        self.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # LoRA's random A init must not depend on global RNG state
            self.transformer.add_adapter(
                LoraConfig(
                    r=spec.rank,
                    lora_alpha=spec.alpha,
                    target_modules=list(spec.target_modules),
                    init_lora_weights=spec.init if spec.init != "default" else True,
                    lora_dropout=spec.dropout,
                )
            )
        self.lora = spec

    def set_full_finetune(self) -> None:
        """Train every denoiser weight; the reference becomes a frozen copy made now."""
        self.requires_grad_(False)
        self.transformer.requires_grad_(True)
        self._frozen_reference = copy.deepcopy(self.transformer).requires_grad_(False).eval()
        self.lora = None

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.transformer.parameters() if p.requires_grad]

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Within this block the policy computes the frozen base policy (adapters off or frozen copy)."""
        if self.lora is not None:
            self.transformer.disable_adapters()
            try:
                yield
            finally:
                self.transformer.enable_adapters()
        elif self._frozen_reference is not None:
            live = self.transformer
            self.transformer = self._frozen_reference
            try:
                yield
            finally:
                self.transformer = live
        else:
            yield  # no training set up: the policy is its own base

    def attention_modules(self) -> list[tuple[str, nn.Module]]:
        """(name, diffusers Attention) of every joint-attention layer (`*.attn`), in depth order."""
        return [(n, m) for n, m in self.transformer.named_modules() if n.endswith(".attn")]

    def entropy_processor(self, recorder, slot: int, module: nn.Module):
        """The recording processor for one attention module (SD3 joint attention by default)."""
        from aegpo.entropy.sd3 import EntropyJointAttnProcessor

        return EntropyJointAttnProcessor(recorder, slot)
