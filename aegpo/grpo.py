"""GRPO core: group advantages over variable-size groups, the clipped-ratio loss, and one policy update.

Advantage of sample i in prompt group g (any group size ≥ 2):

    A_i = clip((r_i − mean_g) / max(std_g, std_floor), ±adv_clip_max)

with std the population std of the group. Loss per trained transition (PPO-clip on
the per-dimension-averaged log-probs of aegpo.samplers):

    ρ = exp(logp_θ − logp_old);  L = max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε))  [+ β·KL(μθ ‖ μref)]

averaged over the trained transitions of a minibatch; one optimizer step per minibatch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aegpo.guard import require_finite
from aegpo.models.base import Conditioning, FlowPolicy
from aegpo.rollout import Rollout
from aegpo.samplers import kl_to_reference, mean_and_std, step


def group_advantages(
    rewards: torch.Tensor, groups: torch.Tensor, std_floor: float = 0.05, clip: float = 5.0
) -> torch.Tensor:
    """Per-group z-scores. rewards (N,), groups (N,) long group ids (any sizes) → (N,) float32."""
    rewards = rewards.double()
    ids, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    if bool((counts < 2).any()):
        raise ValueError(f"group_advantages: groups {ids[counts < 2].tolist()} have fewer than 2 samples")
    sums = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, rewards)
    mean = sums / counts
    sq = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, (rewards - mean[inverse]) ** 2)
    std = (sq / counts).sqrt().clamp_min(std_floor)
    if std_floor == 0:  # a constant group has no signal: advantage 0 instead of 0/0
        std = torch.where(std > 0, std, torch.ones_like(std))
    return ((rewards - mean[inverse]) / std[inverse]).clamp(-clip, clip).float()


def clipped_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-transition PPO-clip loss (M,) and ratio (M,)."""
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped), ratio


@dataclass
class UpdateConfig:
    sde: str
    noise_level: float
    clip_range: float
    kl_beta: float
    max_grad_norm: float
    optimizer_steps: int
    micro_batch: int
    inner_epochs: int


def _minibatches(num_samples: int, count: int, gen: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(num_samples, generator=gen)
    return [chunk for chunk in torch.tensor_split(order, min(count, num_samples)) if len(chunk)]


def policy_update(
    policy: FlowPolicy,
    optimizer: torch.optim.Optimizer,
    rollout: Rollout,
    advantages: torch.Tensor,
    cond: Conditioning,
    cfg: UpdateConfig,
    gen: torch.Generator,
) -> dict[str, float]:
    """Optimise on the rollout's trained transitions; returns averaged statistics.

    Samples are shuffled and split into `optimizer_steps` minibatches; each minibatch's
    transitions go through forward/backward in chunks of `micro_batch` (gradient accumulation)
    and end in one clipped optimizer step. A NaN/inf loss or gradient norm raises
    `aegpo.guard.NonFiniteRound` before the optimizer steps on it (the caller restores its snapshot).
    """
    device = policy.device
    params = policy.trainable_parameters()
    sigmas = rollout.sigmas
    sigma_max = float(sigmas[1])
    noise = rollout.plan.sde.float() * cfg.noise_level  # (N, T)
    stats: dict[str, list[float]] = {k: [] for k in ("loss", "policy_loss", "kl", "clip_frac", "approx_kl", "ratio_mean", "grad_norm")}
    first_ratio_dev = None
    for _ in range(cfg.inner_epochs):
        for samples in _minibatches(rollout.num_samples, cfg.optimizer_steps, gen):
            member = torch.isin(rollout.trans_sample, samples)
            trans = torch.nonzero(member).squeeze(1)
            if len(trans) == 0:
                continue
            optimizer.zero_grad(set_to_none=True)
            for chunk in torch.split(trans, cfg.micro_batch):
                s_idx, t_idx = rollout.trans_sample[chunk], rollout.trans_step[chunk]
                x_t, x_next = rollout.x_t[chunk].to(device), rollout.x_next[chunk].to(device)
                sig, sig_next = sigmas[t_idx].to(device), sigmas[t_idx + 1].to(device)
                c = cond.select(rollout.prompt_index[s_idx])
                a = noise[s_idx, t_idx].to(device)
                v = policy.velocity(x_t, sig, c)
                out = step(cfg.sde, x_t, v, sig, sig_next, a, sigma_max=sigma_max, prev=x_next)
                adv = advantages[s_idx].to(device)
                per, ratio = clipped_loss(out.log_prob, rollout.log_prob[chunk].to(device), adv, cfg.clip_range)
                loss = per
                kl = torch.zeros_like(per)
                if cfg.kl_beta > 0:
                    with torch.no_grad(), policy.reference():
                        v_ref = policy.velocity(x_t, sig, c)
                    ref_mean, _ = mean_and_std(cfg.sde, x_t, v_ref, sig, sig_next, a, sigma_max)
                    kl = kl_to_reference(out.mean, ref_mean, out.std)
                    loss = per + cfg.kl_beta * kl
                require_finite("loss", loss)
                (loss.sum() / len(trans)).backward()
                with torch.no_grad():
                    if first_ratio_dev is None:
                        first_ratio_dev = float((ratio - 1).abs().max())
                    stats["loss"].append(float(loss.mean()))
                    stats["policy_loss"].append(float(per.mean()))
                    stats["kl"].append(float(kl.mean()))
                    stats["clip_frac"].append(float(((ratio - 1).abs() > cfg.clip_range).float().mean()))
                    stats["approx_kl"].append(float(0.5 * ((out.log_prob - rollout.log_prob[chunk].to(device)) ** 2).mean()))
                    stats["ratio_mean"].append(float(ratio.mean()))
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            require_finite("gradient norm", grad_norm)  # before the step: AdamW's moments must stay finite
            stats["grad_norm"].append(float(grad_norm))
            optimizer.step()
    out_stats = {k: (sum(v) / len(v) if v else 0.0) for k, v in stats.items()}
    out_stats["first_ratio_dev"] = first_ratio_dev if first_ratio_dev is not None else 0.0
    out_stats["trained_transitions"] = float(len(rollout.trans_sample))
    return out_stats

