"""Which denoising steps decide the reward? SDE at one step only, same initial noise per group.

For each step t, every prompt gets a group of rollouts that share their initial noise and run
the ODE everywhere except step t (SDE there). The within-group reward std then comes from step
t's noise alone: it measures how much exploring at t can change the outcome, which is what the
local level of AEGPO wants its entropy peaks to find. Beside it, the base's Entropy(t) (the
default recording of params.yaml) on the same prompts, to compare with.

    python scripts/critical_steps.py [--checkpoint DIR] [--prompts 32] [--group 8] [-S key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from aegpo.bench.efficiency import machine_description
from aegpo.config import load_params
from aegpo.entropy.recorder import EntropyRecorder
from aegpo.models.registry import load_base_policy
from aegpo.prompt_files import read_prompt_file
from aegpo.rewards.registry import reward_from_params
from aegpo.rollout import StepPlan, generate, sample_seeds
from aegpo.strategies.base import expand_groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--checkpoint", default=None, help="policy checkpoint (default: model.checkpoint)")
    ap.add_argument("--prompts", type=int, default=32, help="first N train prompts")
    ap.add_argument("--group", type=int, default=8, help="rollouts per prompt and step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the table as JSON here")
    ap.add_argument("-S", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    overrides = list(args.overrides) + ([f"model.checkpoint={args.checkpoint}"] if args.checkpoint else [])
    params = load_params(args.params, overrides)
    policy = load_base_policy(params.model)[0].eval()
    reward = reward_from_params(params)
    prompts = read_prompt_file(params.train.prompts)[: args.prompts]
    s = params.sampler
    t_steps = s.num_steps
    prompt_index, rank = expand_groups([args.group] * len(prompts))
    n = len(prompt_index)
    init = sample_seeds(args.seed, prompt_index, rank, True)
    rows = []
    for t in range(t_steps):
        sde = torch.zeros(n, t_steps, dtype=torch.bool)
        sde[:, t] = True
        seeds = sample_seeds(args.seed + 1 + t, prompt_index, rank, False)
        ro = generate(policy, prompts, prompt_index, seeds, StepPlan(sde, torch.zeros_like(sde)),
                      init_seeds=init, sde=s.sde, noise_level=s.noise_level, shift=s.shift)
        score = reward(ro.images, [prompts[i] for i in prompt_index]).score.reshape(len(prompts), args.group)
        rows.append({"step": t, "sigma": round(float(ro.sigmas[t]), 3),
                     "group_std": float(score.std(axis=1).mean()),
                     "groups_with_spread": float((score.std(axis=1) > 0).mean()),
                     "reward_mean": float(score.mean())})
    rec = EntropyRecorder.from_params(params.entropy)
    rec.install(policy)
    ro = generate(policy, prompts, torch.arange(len(prompts)), sample_seeds(args.seed, torch.arange(len(prompts)),
                  torch.zeros(len(prompts), dtype=torch.long), True), StepPlan.ode(len(prompts), t_steps),
                  shift=s.shift, recorder=rec, decode=False)
    ent = ro.entropy.mean(0).tolist()  # (T,) mean over prompts
    for row, e in zip(rows, ent):
        row["entropy"] = e
    print(f"# {machine_description()}; {len(prompts)} prompts x "
          f"{args.group} rollouts per step; sde {s.sde} noise {s.noise_level}, {t_steps} steps, "
          f"checkpoint {params.model.checkpoint}")
    print("step  sigma  reward-std(SDE only here)  groups-with-spread  reward-mean  Entropy(t)")
    for r in rows:
        print(f"{r['step']:4d}  {r['sigma']:.3f}  {r['group_std']:25.3f}  {r['groups_with_spread']:18.2f}  "
              f"{r['reward_mean']:11.3f}  {r['entropy']:.3f}")
    print(f"(step {t_steps - 1}, σ → 0, is never explored or trained by a strategy: noise there stays in the image)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
