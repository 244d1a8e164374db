"""Evaluation: fixed-seed ODE samples of a prompt set, scored by the reward.

Seeds are a function of (eval seed, prompt position, sample number) only, so two
checkpoints evaluated on the same prompt file see exactly the same initial noise, and
ranks of a data-parallel run (aegpo.distributed) can each evaluate a slice of the samples.
"""

from __future__ import annotations

import numpy as np
import torch

from aegpo import distributed
from aegpo.models.base import FlowPolicy
from aegpo.rewards.base import Reward, RewardResult
from aegpo.rollout import StepPlan, derive_seed, generate


@torch.no_grad()
def evaluate(
    policy: FlowPolicy,
    prompts: list[str],
    reward: Reward,
    *,
    num_steps: int = 20,
    samples_per_prompt: int = 1,
    seed: int = 1234,
    shift: float = 1.0,
    batch_size: int = 100,
    progress: bool = False,
) -> dict:
    """Returns {<part>: mean, ..., 'reward', 'metrics', 'rows': [...], 'images': uint8 (N, H, W, 3), 'nfe'}.

    Every reward part's mean is a key (the shapes reward: `strict`, `dense`, `soft`); `metrics` lists the
    ones the reward reports, headline first (`Reward.metrics`), for reports that know no reward.
    """
    k = samples_per_prompt
    prompt_index = torch.arange(len(prompts)).repeat_interleave(k)
    rank = torch.arange(k).repeat(len(prompts))
    seeds = torch.tensor([derive_seed("eval", seed, int(p), int(r)) for p, r in zip(prompt_index, rank)])

    def run(idx: torch.Tensor) -> dict:
        ro = generate(policy, prompts, prompt_index[idx], seeds[idx], StepPlan.ode(len(idx), num_steps),
                      sde="dance", noise_level=0.0, shift=shift, batch_size=batch_size, progress=progress)
        scored = reward(ro.images, [prompts[i] for i in prompt_index[idx]])
        return {"images": ro.images, "score": np.asarray(scored.score), "nfe": ro.nfe,
                **{f"part/{k}": np.asarray(v) for k, v in scored.parts.items()}}

    # data-parallel runs: each rank evaluates a slice of the samples (seeds are per sample), all get the whole
    out = distributed.split_and_gather(len(seeds), run) if len(seeds) >= distributed.world_size() \
        else run(torch.arange(len(seeds)))
    result = RewardResult(out["score"], {k[5:]: v for k, v in out.items() if k.startswith("part/")})
    rows = []
    for i, prompt in enumerate(prompts):
        sl = slice(i * k, (i + 1) * k)
        row = {"prompt": prompt, "reward": float(result.score[sl].mean())}
        row.update({name: float(part[sl].mean()) for name, part in result.parts.items()})
        rows.append(row)
    summary = {name: float(np.mean(part)) for name, part in result.parts.items()}
    return {
        **summary,
        "reward": float(np.mean(result.score)),
        "metrics": list(reward.metrics),
        "num_prompts": len(prompts),
        "samples_per_prompt": k,
        "num_steps": num_steps,
        "seed": seed,
        "nfe": out["nfe"],
        "rows": rows,
        "images": out["images"],
    }

