"""Shared machinery of policies built on a diffusers text-to-image pipeline (SD3/SD3.5, FLUX.1).

A `PipelinePolicy` owns the pipeline's denoiser (`transformer`, trained) and VAE as
submodules; the text encoders stay outside the module tree (they are never trained and
`policy.to(device)` must not drag a 4.7B-parameter T5 onto the GPU unless asked), and
run on the denoiser's device or the CPU (`model.pretrained.text_encoder_device`).

- **dtype**: weights and activations in `model.pretrained.dtype` (bf16 by default);
  `velocity` casts latents in and returns float32, so sampler arithmetic stays float32.
- **text**: prompts are encoded once per model and settings and cached in memory, and on
  disk with `model.pretrained.text_cache_dir` (aegpo.models.text_cache).
- **guidance**: `guidance_scale > 1` runs a detached unconditional branch on
  `negative_prompt` first, then the conditional one (so an installed entropy recorder keeps
  the conditional branch's values); FLUX's distilled guidance is handled by the FLUX policy.
- **loading**: `from_pretrained_params` (params.yaml) and `from_base_ref` (trained
  checkpoints) resolve a local folder or a cached hub id and fingerprint it, so a trained
  checkpoint refuses to load on a changed base.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from abc import abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from aegpo.models.base import Conditioning, FlowPolicy
from aegpo.models.pretrained_params import PretrainedParams
from aegpo.models.text_cache import TextEmbeddingCache, namespace_for

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
ENCODE_BATCH = 16  # prompts per text-encoder call


class PretrainedModelError(ValueError):
    """`model.pretrained` does not name a loadable pipeline, or a checkpoint's base has changed."""


# ----- where the weights are ----------------------------------------------------------------------
def resolve_source(path: str, revision: str | None, project_dir: str | Path, kind: str) -> Path:
    """The local folder of `model.pretrained.path`: a folder (relative to the project) or a cached hub id."""
    if not path:
        raise PretrainedModelError(f"model.pretrained.path is required for model.kind={kind} "
                                   "(a local diffusers pipeline folder or a hub id; see docs/models.md)")
    local = Path(path) if Path(path).is_absolute() else Path(project_dir) / path
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise PretrainedModelError(f"model.pretrained.path: {local} has no model_index.json "
                                       "(expected a diffusers pipeline folder, e.g. from "
                                       "`hf download <repo> --local-dir DIR`)")
        return local.resolve()
    if path.count("/") == 1 and not path.startswith((".", "/")):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(repo_id=path, revision=revision, local_files_only=True))
        except Exception as err:  # noqa: BLE001 - any hub error means: not available offline
            raise PretrainedModelError(
                f"model.pretrained.path: {path!r} is not a local folder and not in the local Hugging Face cache "
                f"({type(err).__name__}); nothing is downloaded at run time: fetch it first with "
                f"`hf download {path}` (or point model.pretrained.path at a folder)") from None
    raise PretrainedModelError(f"model.pretrained.path: folder {local} does not exist")


def fingerprint(folder: Path) -> str:
    """SHA-256 over the pipeline folder's file list and sizes plus the text of its JSON/config files.

    Cheap (weights are not read) but catches swapped weights, changed configs and other revisions.
    """
    h = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts):
        rel = file.relative_to(folder).as_posix()
        h.update(f"{rel}\0{file.stat().st_size}\0".encode())
        if file.suffix in (".json", ".txt", ".model") and file.stat().st_size < 4_000_000:
            h.update(file.read_bytes())
    return h.hexdigest()


class PipelinePolicy(FlowPolicy):
    """Base of diffusers-pipeline policies; subclasses define the text encoding and one denoiser call."""

    kind: ClassVar[str]
    pipeline_class: ClassVar[type]
    default_max_sequence_length: ClassVar[int]

    def __init__(self, pipe, params: PretrainedParams, guidance_scale: float = 1.0,
                 source: dict[str, str] | None = None, project_dir: str | Path = ".") -> None:
        """
        Args:
            pipe: a loaded diffusers pipeline of `pipeline_class` (its VAE and text encoders may be None
                for a denoiser-only policy, as in the GPU benchmark).
            params: `model.pretrained`.
            guidance_scale: classifier-free guidance (1 = off).
            source: {"path": folder, "fingerprint": digest} of the loaded weights (None: built in memory).
        """
        super().__init__()
        self.params, self.guidance_scale, self.source = params, float(guidance_scale), source
        self.dtype = TORCH_DTYPES[params.dtype]
        self._pipe = pipe
        self.transformer = pipe.transformer
        self.vae = getattr(pipe, "vae", None)
        for module in [self.transformer, self.vae, *self.text_encoders()]:
            if module is not None:
                module.requires_grad_(False).eval()
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 8
        self.height, self.width = params.image_height, params.image_width
        multiple = self.vae_scale_factor * self.pixel_multiple_per_latent()
        for name, value in (("height", self.height), ("width", self.width)):
            if value % multiple:
                raise PretrainedModelError(f"model.pretrained.{name} (or resolution): {value} pixels is not a multiple "
                                           f"of {multiple} (VAE factor × patch size of this {self.kind} model)")
        self.latent_shape = (self.latent_channels(), self.height // self.vae_scale_factor,
                             self.width // self.vae_scale_factor)
        self.max_sequence_length = params.max_sequence_length or self.default_max_sequence_length
        if params.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        cache_dir = Path(project_dir) / params.text_cache_dir if params.text_cache_dir else None
        self.text_cache = TextEmbeddingCache(self._cache_namespace(), cache_dir)
        self._text_device: torch.device | None = None

    # ----- what each model defines -----------------------------------------------------------
    @abstractmethod
    def latent_channels(self) -> int:
        """Channels of the (unpacked) VAE latent."""

    @abstractmethod
    def pixel_multiple_per_latent(self) -> int:
        """Latent cells per token side (the patch size); image sides must be multiples of this × VAE factor."""

    @abstractmethod
    def text_encoders(self) -> list[nn.Module]:
        """The pipeline's text encoders (not registered as submodules)."""

    @abstractmethod
    def encode_batch(self, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        """Batched text tensors (dim 0 = prompts) for `prompts`, computed on `device`."""

    @abstractmethod
    def denoise(self, latents: torch.Tensor, sigma: torch.Tensor, text: dict[str, torch.Tensor],
                prefix: str) -> torch.Tensor:
        """One denoiser call on latents (B, *latent_shape) in the model dtype; `text[prefix + name]` are its inputs."""

    # ----- loading -----------------------------------------------------------------------------
    @classmethod
    def load(cls, params: PretrainedParams, folder: Path, guidance_scale: float = 1.0,
             project_dir: str | Path = ".") -> PipelinePolicy:
        """Load the pipeline in `folder` (already resolved) in `params.dtype`."""
        digest = fingerprint(folder)
        try:
            pipe = cls.pipeline_class.from_pretrained(str(folder), dtype=TORCH_DTYPES[params.dtype],
                                                      variant=params.variant)
        except (OSError, ValueError) as err:
            raise PretrainedModelError(f"model.pretrained.path: cannot load a {cls.pipeline_class.__name__} from "
                                       f"{folder}: {err}") from err
        return cls(pipe, params, guidance_scale, {"path": str(folder), "fingerprint": digest}, project_dir)

    @classmethod
    def from_pretrained_params(cls, model, project_dir: str | Path = ".") -> PipelinePolicy:
        """From `params.model` (kind, guidance_scale, pretrained)."""
        p = model.pretrained
        folder = resolve_source(p.path, p.revision, project_dir, cls.kind)
        return cls.load(p, folder, model.guidance_scale, project_dir)

    @classmethod
    def base_ref(cls, model, project_dir: str | Path = ".") -> dict[str, Any]:
        """What a trained checkpoint records about its base; `manifest_sha256` keys entropy-profile caches."""
        p = model.pretrained
        folder = resolve_source(p.path, p.revision, project_dir, cls.kind)
        ref = {"kind": cls.kind, "path": str(folder), "fingerprint": fingerprint(folder), "pretrained": p.identity(),
               "guidance_scale": model.guidance_scale}
        ref["manifest_sha256"] = hashlib.sha256(json.dumps(ref, sort_keys=True).encode()).hexdigest()
        return ref

    @classmethod
    def from_base_ref(cls, base: dict[str, Any], guidance_scale: float | None = None, **_: Any) -> PipelinePolicy:
        """Reload the base of a trained checkpoint (aegpo.checkpoint.load_policy); refuses a changed base."""
        from aegpo.checkpoint import CheckpointError

        folder = Path(base["path"])
        if not (folder / "model_index.json").is_file():
            raise CheckpointError(f"the base pipeline {folder} of this checkpoint is missing")
        if fingerprint(folder) != base["fingerprint"]:
            raise CheckpointError(f"the base pipeline {folder} has changed since training (fingerprint differs)")
        pretrained = {**base["pretrained"], "path": str(folder)}
        scale = base.get("guidance_scale", 1.0) if guidance_scale is None else guidance_scale
        return cls.load(PretrainedParams(**pretrained), folder, scale)

    def add_lora(self, spec, seed: int = 0) -> None:
        """LoRA adapters (base.FlowPolicy.add_lora) kept in float32 on a bf16/fp16 denoiser.

        peft creates the adapter in the base layer's dtype; optimizer updates of ~lr·|w| are below bf16's
        resolution, so the trainable weights are upcast (peft casts activations to the adapter dtype and
        the result back), as diffusers' training scripts do with `cast_training_params`.
        """
        super().add_lora(spec, seed)
        for p in self.trainable_parameters():
            p.data = p.data.float()

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "pretrained": self.params.identity(), "guidance_scale": self.guidance_scale}

    # ----- text ----------------------------------------------------------------------------------
    def _cache_namespace(self) -> str:
        weights = self.source["fingerprint"] if self.source else f"in-memory-{id(self)}"
        return namespace_for(kind=self.kind, weights=weights, max_sequence_length=self.max_sequence_length,
                             dtype=self.params.dtype)

    def _encoder_device(self) -> torch.device:
        target = torch.device("cpu") if self.params.text_encoder_device == "cpu" else self.device
        if self._text_device != target:
            for encoder in self.text_encoders():
                encoder.to(target)
            self._text_device = target
        return target

    def _encode_uncached(self, prompts: list[str]) -> list[dict[str, torch.Tensor]]:
        if not self.text_encoders():
            raise RuntimeError(f"{type(self).__name__} has no text encoders: pass pre-computed conditioning")
        device = self._encoder_device()
        rows: list[dict[str, torch.Tensor]] = []
        with torch.no_grad():
            for start in range(0, len(prompts), ENCODE_BATCH):
                batch = self.encode_batch(prompts[start : start + ENCODE_BATCH], device)
                rows += [{k: v[i] for k, v in batch.items()} for i in range(len(next(iter(batch.values()))))]
        return rows

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """Conditioning (text tensors with dim 0 = prompt), from the cache where possible."""
        rows = self.text_cache.get_many(prompts, self._encode_uncached)
        tensors = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
        if self.uses_cfg:
            uncond = self.text_cache.get_many([self.params.negative_prompt], self._encode_uncached)[0]
            tensors.update({f"uncond_{k}": v.unsqueeze(0).expand(len(prompts), *v.shape) for k, v in uncond.items()})
        device = self.device
        return Conditioning({k: v.to(device) for k, v in tensors.items()})

    # ----- denoising -------------------------------------------------------------------------
    @property
    def uses_cfg(self) -> bool:
        return self.guidance_scale != 1.0

    @property
    def nfe_per_call(self) -> int:
        """Denoiser evaluations per `velocity` call (2 with classifier-free guidance)."""
        return 2 if self.uses_cfg else 1

    @contextlib.contextmanager
    def _attention_backend(self) -> Iterator[None]:
        if self.params.sdpa_backend == "auto":
            yield
            return
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                   "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[self.params.sdpa_backend]
        with sdpa_kernel([backend]):
            yield

    def velocity(self, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """float32 v (B, *latent_shape) for latents (B, *latent_shape) at sigma (B,); see the module docstring."""
        x = latents.to(self.dtype)
        t = cond.tensors
        with self._attention_backend():
            if self.uses_cfg:
                with torch.no_grad():  # detached unconditional branch (Flow-GRPO), run first: see module docstring
                    u = self.denoise(x, sigma, t, "uncond_").float()
            v = self.denoise(x, sigma, t, "").float()
        if self.uses_cfg:
            v = u + self.guidance_scale * (v - u)
        return v

    # ----- pixels ------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents (B, *latent_shape) → uint8 images (B, H, W, 3), `decode_batch_size` at a time.

        A denoiser-only policy (no VAE, e.g. the GPU benchmark) returns black images.
        """
        n = latents.shape[0]
        if self.vae is None:
            return np.zeros((n, self.height, self.width, 3), np.uint8)
        cfg = self.vae.config
        scale, shift = cfg.scaling_factor, getattr(cfg, "shift_factor", None) or 0.0
        out = []
        for chunk in torch.split(latents, self.params.decode_batch_size):
            z = chunk.to(self.device, self.vae.dtype) / scale + shift
            img = self.vae.decode(z, return_dict=False)[0].float()
            img = ((img / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
            out.append(img.permute(0, 2, 3, 1).cpu().numpy())
        return np.concatenate(out)

    def scheduler_shift(self) -> float:
        """The time shift the published scheduler uses at this resolution (set `sampler.shift` to it)."""
        return float(self._pipe.scheduler.config.get("shift", 1.0))

