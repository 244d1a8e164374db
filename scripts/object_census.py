"""Where a checkpoint's eval images fail: strict accuracy by prompt kind, objects detected vs asked
for, and how many are `unknown` blobs.

    .venv/bin/python scripts/object_census.py [CHECKPOINT]   # default: the shipped base

Samples the eval split exactly as `aegpo evaluate` does (params.yaml's eval section: 20 ODE steps,
images per prompt, seed 1234), runs the verifier on every image and prints counts. Quoted in docs/findings.md §2a.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from aegpo.checkpoint import load_policy
    from aegpo.config import load_params
    from aegpo.evaluate import evaluate
    from aegpo.prompt_files import read_prompt_file
    from aegpo.rewards.shapes import ShapesReward
    from aegpo.shapes.prompts import parse_prompt
    from aegpo.shapes.verify import verify

    params = load_params(ROOT / "params.yaml")
    e = params.eval
    checkpoint = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / params.model.checkpoint)
    prompts = read_prompt_file(ROOT / e.prompts)
    k = e.samples_per_prompt
    reward = ShapesReward()
    result = evaluate(load_policy(checkpoint).eval(), prompts, reward, num_steps=e.num_steps,
                      samples_per_prompt=k, seed=e.seed, batch_size=e.batch_size)
    by_kind: dict[str, list[float]] = {}
    for prompt, row in zip(prompts, result["rows"]):
        by_kind.setdefault(parse_prompt(prompt).kind, []).append(row["strict"])
    images = result["images"]  # (len(prompts) * k, H, W, 3), prompt-major
    image_prompts = [prompts[i // k] for i in range(len(images))]
    asked = detected = unknown = with_unknown = 0
    for image, prompt in zip(images, image_prompts):
        scene = parse_prompt(prompt)
        objects = verify(image, scene).objects
        asked += sum(p.count for p in scene.phrases)
        detected += len(objects)
        n_unknown = sum(o.shape == "unknown" for o in objects)
        unknown += n_unknown
        with_unknown += n_unknown > 0
    print(f"checkpoint {checkpoint}: {len(prompts)} eval prompts × {k} images, {e.num_steps} ODE steps, seed {e.seed}")
    print(f"strict {result['strict']:.3f}  dense {result['dense']:.3f}  soft {result['soft']:.3f}")
    print("strict by prompt kind:", ", ".join(f"{kind} {np.mean(v):.3f} ({len(v)} prompts)" for kind, v in sorted(by_kind.items())))
    print(f"objects asked for {asked}, detected {detected}, of which unknown {unknown} "
          f"({unknown / max(detected, 1):.0%}); images with an unknown object: {with_unknown} of {len(images)}")
    soft = np.asarray(reward(images, image_prompts).parts["soft"])
    print("soft per image, 10th / 50th / 90th percentile:", np.round(np.percentile(soft, [10, 50, 90]), 2).tolist())


if __name__ == "__main__":
    main()
