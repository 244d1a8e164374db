"""GRPO core: group advantages over variable-size groups, the clipped-ratio loss, and one policy update.

Advantage of sample i in prompt group g (any group size ≥ 2):

    A_i = clip((r_i − mean_g) / max(std_g, std_floor), ±adv_clip_max)

with std the population std of the group. Loss per trained transition (PPO-clip on
the per-dimension-averaged log-probs of aegpo.samplers):

    ρ = exp(logp_θ − logp_old);  L = max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε))  [+ β·KL(μθ ‖ μref)]

averaged over the trained transitions of a minibatch; one optimizer step per minibatch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from aegpo.guard import NonFiniteRound, require_finite
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


@dataclass
class UpdateShard:
    """This rank's part of a data-parallel update (aegpo.distributed): which global samples it holds.

    The minibatches are drawn over all N samples of the round exactly as one process draws them;
    each rank trains the transitions of its own samples in them, and the loss is normalised by
    the minibatch's global transition count, so the summed gradient is the one-process gradient.
    """

    sample_ids: torch.Tensor  # (n,) global index of each local sample
    sample_rank: torch.Tensor  # (N,) rank holding each global sample
    train_count: torch.Tensor  # (N,) trained transitions of each global sample
    rank: int
    world: int
    sync: object  # aegpo.distributed.GradSync


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
    shard: UpdateShard | None = None,
) -> dict[str, float]:
    """Optimise on the rollout's trained transitions; returns statistics (loss, clip fraction, ...: means
    over the trained transitions of all passes; grad_norm: mean over optimizer steps).

    Samples are shuffled and split into `optimizer_steps` minibatches; each minibatch's
    transitions go through forward/backward in chunks of `micro_batch` (gradient accumulation)
    and end in one clipped optimizer step. With `shard`, `rollout` holds this rank's samples
    only and gradients are summed over ranks before the step (see UpdateShard). A NaN/inf loss or gradient
    norm raises `aegpo.guard.NonFiniteRound` before the optimizer steps on it (on every rank alike).
    """
    device = policy.device
    params = policy.trainable_parameters()
    sigmas = rollout.sigmas
    sigma_max = float(sigmas[1])
    noise = rollout.plan.sde.float() * cfg.noise_level  # (n, T)
    num_global = rollout.num_samples if shard is None else len(shard.sample_rank)
    local_of = torch.arange(num_global)
    if shard is not None:
        local_of = torch.full((num_global,), -1, dtype=torch.long)
        local_of[shard.sample_ids] = torch.arange(len(shard.sample_ids))
    velocity = policy.velocity if shard is None else shard.sync.velocity
    loss_scale = 1.0 if shard is None else shard.sync.loss_scale
    sums = dict.fromkeys(("loss", "policy_loss", "kl", "clip_frac", "approx_kl", "ratio_mean"), 0.0)
    counted, grad_norms = 0, []
    first_ratio_dev = None
    for _ in range(cfg.inner_epochs):
        for samples in _minibatches(num_global, cfg.optimizer_steps, gen):
            local = local_of[samples]
            member = torch.isin(rollout.trans_sample, local[local >= 0])
            trans = torch.nonzero(member).squeeze(1)
            # (torch.split of an empty tensor gives one empty chunk: a rank with nothing here has no chunk)
            chunks: list[torch.Tensor | None] = list(torch.split(trans, cfg.micro_batch)) if len(trans) else []
            if shard is None:
                n_global, steps = len(trans), len(chunks)
            else:  # every rank derives every rank's micro-batch count: all run the same number of backwards
                counts = torch.zeros(shard.world, dtype=torch.long).index_add_(
                    0, shard.sample_rank[samples], shard.train_count[samples])
                n_global = int(counts.sum())
                steps = int(((counts + cfg.micro_batch - 1) // cfg.micro_batch).max())
            if n_global == 0:
                continue
            chunks += [None] * (steps - len(chunks))
            optimizer.zero_grad(set_to_none=True)
            bad_loss = False
            for i, chunk in enumerate(chunks):
                sync = contextlib.nullcontext() if shard is None else shard.sync.accumulate(last=i == steps - 1)
                with sync:
                    if chunk is None:  # padding: this rank has fewer transitions in the minibatch than another
                        _zero_backward(policy, velocity, cond, sigmas)
                        continue
                    s_idx, t_idx = rollout.trans_sample[chunk], rollout.trans_step[chunk]
                    x_t, x_next = rollout.x_t[chunk].to(device), rollout.x_next[chunk].to(device)
                    sig, sig_next = sigmas[t_idx].to(device), sigmas[t_idx + 1].to(device)
                    c = cond.select(rollout.prompt_index[s_idx])
                    a = noise[s_idx, t_idx].to(device)
                    v = velocity(x_t, sig, c)
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
                    if shard is None:
                        require_finite("loss", loss)
                    elif not bool(torch.isfinite(loss).all()):  # raised below on every rank together
                        bad_loss = True
                        _zero_backward(policy, velocity, cond, sigmas)  # keeps the ranks' reductions in step
                        continue
                    # normalised by the minibatch's transitions on all ranks; × world size undoes DDP's average
                    (loss.sum() * (loss_scale / n_global)).backward()
                with torch.no_grad():  # sums over transitions: means per transition, whatever the chunking
                    if first_ratio_dev is None:
                        first_ratio_dev = float((ratio - 1).abs().max())
                    sums["loss"] += float(loss.sum())
                    sums["policy_loss"] += float(per.sum())
                    sums["kl"] += float(kl.sum())
                    sums["clip_frac"] += float(((ratio - 1).abs() > cfg.clip_range).float().sum())
                    sums["approx_kl"] += float(0.5 * ((out.log_prob - rollout.log_prob[chunk].to(device)) ** 2).sum())
                    sums["ratio_mean"] += float(ratio.sum())
                    counted += len(chunk)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            if shard is not None:  # a NaN/inf loss on any rank rejects the round on all of them
                from aegpo import distributed

                if distributed.all_reduce_(torch.tensor([float(bad_loss)]), "max")[0] > 0:
                    raise NonFiniteRound("loss: NaN/inf on some rank")
            require_finite("gradient norm", grad_norm)  # before the step: AdamW's moments must stay finite
            grad_norms.append(float(grad_norm))
            optimizer.step()
    if shard is not None:
        from aegpo import distributed

        reduced = torch.tensor([*sums.values(), float(counted)], dtype=torch.float64)
        distributed.all_reduce_(reduced, "sum")
        sums, counted = dict(zip(sums, reduced[:-1].tolist())), float(reduced[-1])
        first = torch.tensor([first_ratio_dev or 0.0], dtype=torch.float64)
        first_ratio_dev = float(distributed.all_reduce_(first, "max")[0])
    out_stats = {k: (v / counted if counted else 0.0) for k, v in sums.items()}
    out_stats["grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else 0.0  # equal on every rank
    out_stats["first_ratio_dev"] = first_ratio_dev if first_ratio_dev is not None else 0.0
    out_stats["trained_transitions"] = float(len(rollout.trans_sample) if shard is None else shard.train_count.sum())
    return out_stats


def _zero_backward(policy: FlowPolicy, velocity, cond: Conditioning, sigmas: torch.Tensor) -> None:
    """A forward/backward that adds zero to every gradient (keeps the ranks' collectives in step)."""
    x = torch.zeros(1, *policy.latent_shape, device=policy.device)
    v = velocity(x, sigmas[:1].to(policy.device), cond.select(torch.zeros(1, dtype=torch.long)))
    (v.sum() * 0.0).backward()
