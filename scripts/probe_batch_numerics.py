#!/usr/bin/env python
"""How much a prompt's probed Entropy(t) depends on the size of the batch it was probed in.

    .venv/bin/python scripts/probe_batch_numerics.py [--params params.yaml] [--prompts 64] [--threads 1]

The base profile is lazy: a prompt's base Entropy(t) is probed in whatever batch first needs it (the new prompts of
a round, up to 16), while the `profile` stage probes 64 at a time. Float kernels may differ with the batch
size, so the same prompt can get slightly different values, and ΔEntropy's median split can flip where two prompts
are nearly tied. This prints, for each batch size n, the largest |difference| of the first n prompts' Entropy(t)
(every step and layer) against the same prompts probed in one batch of `--prompts`, and repeats the full batch to
show that a rerun is exact. docs/findings.md §2e quotes its output.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from aegpo.checkpoint import load_base_policy
from aegpo.config import load_params
from aegpo.entropy.profile import ProbeSpec, probe
from aegpo.entropy.recorder import EntropyRecorder
from aegpo.prompt_files import read_prompt_file


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--prompts", type=int, default=64, help="the reference batch: the first N train prompts")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params, [])
    root = Path(args.params).resolve().parent
    policy, _ = load_base_policy(params.model, root)
    recorder = EntropyRecorder.from_params(params.entropy)
    recorder.install(policy)
    spec = ProbeSpec.from_params(params)
    prompts = read_prompt_file(root / params.train.prompts)[: args.prompts]
    policy.eval()
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s); "
          f"{params.model.checkpoint}, {spec.num_steps} steps, reference batch {len(prompts)} prompts")
    with torch.no_grad():
        ref = probe(policy, prompts, spec, recorder).entropy_layers
        print(f"reference magnitude: mean |Entropy| {ref.abs().mean().item():.4f}")
        rerun = probe(policy, prompts, spec, recorder).entropy_layers
        print(f"rerun of the reference batch: max |diff| {(ref - rerun).abs().max().item():.3g}")
        for n in sorted({1, 2, 3, 4, 5, 8, 16, len(prompts) - 1} & set(range(1, len(prompts)))):
            part = probe(policy, prompts[:n], spec, recorder).entropy_layers
            print(f"batch of {n:2d}: max |diff| {(ref[:n] - part).abs().max().item():.3g}")


if __name__ == "__main__":
    main()
