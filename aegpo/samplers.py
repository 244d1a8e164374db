"""Flow-matching sampler steps with exact Gaussian log-probabilities.

Convention (rectified flow, SD3/FLUX): x_σ = (1 − σ)·x0 + σ·ε, the denoiser predicts
v = ε − x0, and sampling runs σ from 1 down to 0. One step maps x at σ to x' at
σ_next < σ. Every step here is computed in float32 and returns

    StepOutput(prev (B, ...), log_prob (B,), mean (B, ...), std (B,))

where x' = mean + std·z, z ~ N(0, I), and `log_prob` is the exact Gaussian log
density of x' **averaged over the latent dimensions** (the convention of Flow-GRPO and
DanceGRPO, which keeps per-transition ratios near 1 so a clip of 1e-3 is meaningful).

Kinds (`sde`), with a = noise level, dσ = σ_next − σ < 0:

- ``ode``  : x' = x + dσ·v (deterministic Euler; = diffusers' FlowMatchEulerDiscreteScheduler.step).
- ``dance``: DanceGRPO. std = a·√(σ − σ_next); x̂0 = x − σv; score = −(x − (1 − σ)x̂0)/σ²;
  mean = x + dσ·v − ½a²·score·dσ.
- ``flow`` : Flow-GRPO. s = a·√(σ / (1 − σ)) (σ = 1 uses the schedule's σ_max = sigmas[1] in the
  denominator); mean = x + [v + s²/(2σ)·(x + (1 − σ)v)]·dσ; std = s·√(−dσ).
- ``cps``  : coefficient-preserving sampling. std = σ_next·sin(aπ/2); x̂0 = x − σv,
  x̂1 = x + (1 − σ)v; mean = (1 − σ_next)x̂0 + √(σ_next² − std²)·x̂1.

With a = 0 every kind reduces exactly to the ODE step; a may differ per sample, which is how
a per-step/per-sample mask picks SDE or ODE. Where std = 0 the log-prob is reported as 0 and
must not be trained on (the rollout's train mask excludes those transitions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SDE_KINDS = ("dance", "flow", "cps")
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class StepOutput:
    prev: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def sigma_schedule(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """σ_0 = 1 > ... > σ_T = 0, shape (num_steps + 1,), float32: σ = s·t / (1 + (s − 1)·t)."""
    t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return (shift * t / (1 + (shift - 1) * t)).float()


def _per_sample(value: torch.Tensor | float, ref: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) value → float32 (B, 1, ..., 1) broadcastable against `ref` (B, ...)."""
    value = torch.as_tensor(value, dtype=torch.float32, device=ref.device)
    if value.ndim == 0:
        value = value.expand(ref.shape[0])
    return value.reshape(-1, *([1] * (ref.ndim - 1)))


def mean_and_std(
    kind: str,
    x: torch.Tensor,
    v: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    noise_level: torch.Tensor | float,
    sigma_max: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Transition mean (B, ...) and std (B, 1, ..., 1) of one step, in float32."""
    x, v = x.float(), v.float()
    s, sn, a = (_per_sample(t, x) for t in (sigma, sigma_next, noise_level))
    ds = sn - s
    if kind == "ode":
        return x + ds * v, torch.zeros_like(s)
    if kind == "dance":
        std = a * torch.sqrt((s - sn).clamp_min(0))
        x0 = x - s * v
        score = -(x - (1 - s) * x0) / s**2
        return x + ds * v - 0.5 * a**2 * score * ds, std
    if kind == "flow":
        if sigma_max is None:
            raise ValueError("the flow SDE needs sigma_max (the schedule's sigmas[1])")
        denom = 1 - torch.where(s >= 1, torch.full_like(s, sigma_max), s)
        st = a * torch.sqrt(s / denom)
        mean = x * (1 + st**2 / (2 * s) * ds) + v * (1 + st**2 * (1 - s) / (2 * s)) * ds
        return mean, st * torch.sqrt(-ds)
    if kind == "cps":
        std = sn * torch.sin(a * math.pi / 2)
        x0 = x - s * v
        x1 = x + (1 - s) * v
        return (1 - sn) * x0 + torch.sqrt((sn**2 - std**2).clamp_min(0)) * x1, std
    raise ValueError(f"unknown sampler kind {kind!r} (expected ode, {', '.join(SDE_KINDS)})")


def gaussian_log_prob(sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-dimension-averaged log N(sample; mean, std²·I) → (B,); 0 where std = 0."""
    safe = torch.where(std > 0, std, torch.ones_like(std))
    lp = -((sample.float() - mean) ** 2) / (2 * safe**2) - torch.log(safe) - _HALF_LOG_2PI
    lp = lp.mean(dim=tuple(range(1, lp.ndim)))
    return torch.where(std.reshape(-1) > 0, lp, torch.zeros_like(lp))


def step(
    kind: str,
    x: torch.Tensor,
    v: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    noise_level: torch.Tensor | float = 0.0,
    *,
    sigma_max: float | None = None,
    prev: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> StepOutput:
    """One step. Given `prev`, score it (training: log-prob of a stored transition); else sample
    it as mean + std·noise (`noise` (B, ...) standard normal, drawn from `generator` if not given)."""
    mean, std = mean_and_std(kind, x, v, sigma, sigma_next, noise_level, sigma_max)
    if prev is None:
        if noise is None:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        prev = mean + std * noise.to(mean)
    return StepOutput(prev=prev, log_prob=gaussian_log_prob(prev, mean, std), mean=mean, std=std.reshape(-1))


def kl_to_reference(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std²) ‖ N(ref_mean, std²)) averaged over dims → (B,): ‖μ − μ_ref‖² / (2σ²)."""
    safe = torch.where(std > 0, std, torch.ones_like(std)).reshape(-1, *([1] * (mean.ndim - 1)))
    return (((mean - ref_mean) ** 2) / (2 * safe**2)).mean(dim=tuple(range(1, mean.ndim)))
