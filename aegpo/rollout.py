"""Rollouts: sample groups of trajectories with a per-step SDE/ODE plan, keeping what training needs.

Randomness is per sample: sample i draws its initial noise and its step noise from a
generator seeded with `seeds[i]`, so a trajectory does not depend on batch size,
batch order or device placement of the other samples (resumed runs replay exactly).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from aegpo.models.base import Conditioning, FlowPolicy
from aegpo.samplers import sigma_schedule, step


@dataclass
class StepPlan:
    """Per sample and step: `sde` (N, T) explores with the SDE (else ODE); `train` (N, T) ⊆ sde is trained."""

    sde: torch.Tensor
    train: torch.Tensor

    def __post_init__(self) -> None:
        if self.sde.shape != self.train.shape:
            raise ValueError(f"StepPlan: sde {tuple(self.sde.shape)} and train {tuple(self.train.shape)} differ")
        if bool((self.train & ~self.sde).any()):
            raise ValueError("StepPlan: a trained step must be stochastic (train ⊆ sde)")

    @classmethod
    def ode(cls, num_samples: int, num_steps: int) -> StepPlan:
        off = torch.zeros(num_samples, num_steps, dtype=torch.bool)
        return cls(off, off.clone())


@dataclass
class Rollout:
    """A round's samples. N samples, T steps, M trained transitions (flattened)."""

    prompts: list[str]  # the round's P prompts
    prompt_index: torch.Tensor  # (N,) sample → prompt
    seeds: torch.Tensor  # (N,) int64 noise seeds
    sigmas: torch.Tensor  # (T + 1,)
    plan: StepPlan
    final: torch.Tensor  # (N, *latent) final latents
    images: np.ndarray  # (N, H, W, 3) uint8
    trans_sample: torch.Tensor  # (M,) sample of each trained transition
    trans_step: torch.Tensor  # (M,) step index t (x_t → x_{t+1})
    x_t: torch.Tensor  # (M, *latent)
    x_next: torch.Tensor  # (M, *latent)
    log_prob: torch.Tensor  # (M,) log-prob under the sampling policy
    nfe: int  # denoiser evaluations spent
    entropy_layers: torch.Tensor | None = None  # (N, T, L) mean over recorded heads
    entropy_heads: torch.Tensor | None = None  # (N, T, L, H) when kept
    extra: dict = field(default_factory=dict)

    @property
    def entropy(self) -> torch.Tensor | None:
        """Entropy(t): (N, T), mean over the recorded layers and heads."""
        return None if self.entropy_layers is None else self.entropy_layers.mean(-1)

    @property
    def num_samples(self) -> int:
        return int(self.prompt_index.shape[0])


def sample_seeds(base_seed: int, prompt_index: torch.Tensor, group_rank: torch.Tensor,
                 same_noise: bool) -> torch.Tensor:
    """One 63-bit seed per sample from (base seed, prompt, rank in group); same_noise drops the rank.

    Seeds made with same_noise are for `generate(init_seeds=...)` only: used as the trajectory seeds
    too they would make every rollout of a group identical (zero advantages)."""
    rank = torch.zeros_like(group_rank) if same_noise else group_rank
    mixed = [derive_seed(base_seed, int(p), int(r)) for p, r in zip(prompt_index, rank)]
    return torch.tensor(mixed, dtype=torch.int64)


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (SHA-256; independent of Python's hash randomisation)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


@torch.no_grad()
def generate(
    policy: FlowPolicy,
    prompts: list[str],
    prompt_index: torch.Tensor,
    seeds: torch.Tensor,
    plan: StepPlan,
    *,
    init_seeds: torch.Tensor | None = None,
    sde: str = "dance",
    noise_level: float = 0.7,
    shift: float = 1.0,
    cond: Conditioning | None = None,
    recorder=None,
    batch_size: int = 64,
    keep_heads: bool = False,
    progress: bool | Callable[[int, int], None] = False,
    decode: bool = True,
) -> Rollout:
    """Sample N = len(prompt_index) trajectories of T = plan.sde.shape[1] steps.

    Args:
        prompts: the P prompts; `prompt_index` (N,) picks one per sample.
        seeds: (N,) per-sample noise seeds (see `sample_seeds`): the initial noise and every SDE step's noise.
        init_seeds: (N,) seeds of the initial noise alone, e.g. one per prompt group (same-initial-noise
            groups); the SDE noise still comes from `seeds`, so a group's trajectories differ.
        plan: which steps are SDE (noise_level) or ODE, and which transitions are kept for training.
        cond: pre-computed conditioning of `prompts` (computed here if None).
        recorder: an installed EntropyRecorder; if given, Entropy(t) is recorded at every step.
        decode: decode the final latents to `images`; False (entropy probes) leaves `images` empty (N, 0, 0, 3),
            skipping the VAE where no reward needs pixels.
        progress: True for a tqdm bar, or a callable `(done, total)` counting samples, called after each batch
            (the pipeline logs it through Prefect, where no terminal shows a bar).
    """
    n, num_steps = plan.sde.shape
    device = policy.device
    sigmas = sigma_schedule(num_steps, shift)
    cond = cond if cond is not None else policy.encode_prompts(prompts)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    init_gens = gens if init_seeds is None else [torch.Generator().manual_seed(int(s)) for s in init_seeds]
    shape = tuple(policy.latent_shape)
    final = torch.empty(n, *shape)
    ent_heads: list[torch.Tensor] = []
    trans: dict[str, list[torch.Tensor]] = {k: [] for k in ("sample", "step", "x_t", "x_next", "log_prob")}
    bar = tqdm(total=n * num_steps, desc="sample", unit="step", disable=progress is not True, mininterval=2,
               leave=False)
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(n, start + batch_size))
        b_cond = cond.select(prompt_index[idx])
        x = torch.stack([torch.randn(shape, generator=init_gens[i]) for i in idx]).to(device)
        b_ent = []
        for t in range(num_steps):
            sigma = sigmas[t].expand(len(idx)).to(device)
            if recorder is not None:
                with recorder.recording():
                    v = policy.velocity(x, sigma, b_cond)
                b_ent.append(recorder.collect().float().cpu())  # (B, L, H)
            else:
                v = policy.velocity(x, sigma, b_cond)
            a = plan.sde[idx, t].float() * noise_level
            z = torch.stack([torch.randn(shape, generator=gens[i]) for i in idx]).to(device)
            out = step(sde, x, v, sigmas[t], sigmas[t + 1], a.to(device), sigma_max=float(sigmas[1]), noise=z)
            keep = plan.train[idx, t]
            if bool(keep.any()):
                trans["sample"].append(idx[keep])
                trans["step"].append(torch.full((int(keep.sum()),), t, dtype=torch.long))
                trans["x_t"].append(x[keep.to(device)].float().cpu())
                trans["x_next"].append(out.prev[keep.to(device)].cpu())
                trans["log_prob"].append(out.log_prob[keep.to(device)].cpu())
            x = out.prev
            bar.update(len(idx))
        final[idx] = x.float().cpu()
        if callable(progress):
            progress(int(idx[-1]) + 1, n)
        if b_ent:
            ent_heads.append(torch.stack(b_ent, dim=1))  # (B, T, L, H)
    bar.close()
    heads = torch.cat(ent_heads) if ent_heads else None

    def cat(key: str, empty_shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
        return torch.cat(trans[key]) if trans[key] else torch.empty(empty_shape, dtype=dtype)

    return Rollout(
        prompts=list(prompts),
        prompt_index=prompt_index.clone(),
        seeds=seeds.clone(),
        sigmas=sigmas,
        plan=plan,
        final=final,
        images=policy.decode(final) if decode else np.zeros((n, 0, 0, 3), np.uint8),
        trans_sample=cat("sample", (0,), torch.long),
        trans_step=cat("step", (0,), torch.long),
        x_t=cat("x_t", (0, *shape)),
        x_next=cat("x_next", (0, *shape)),
        log_prob=cat("log_prob", (0,)),
        nfe=n * num_steps * getattr(policy, "nfe_per_call", 1),
        entropy_layers=None if heads is None else heads.mean(-1),
        entropy_heads=heads if keep_heads else None,
    )
