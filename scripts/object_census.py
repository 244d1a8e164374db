"""Where a checkpoint's eval images fail: strict accuracy by prompt kind, objects detected vs asked
for, and how many are `unknown` blobs.

    .venv/bin/python scripts/object_census.py [CHECKPOINT]   # default: the shipped base

Samples the eval split exactly as `aegpo evaluate` does (params.yaml's eval section: 20 ODE steps,
seed 1234), runs the verifier and prints counts. Quoted in docs/findings.md §2a.
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
    result = evaluate(load_policy(checkpoint).eval(), prompts, ShapesReward(), num_steps=e.num_steps,
                      samples_per_prompt=1, seed=e.seed, batch_size=e.batch_size)
    asked = detected = unknown = with_unknown = 0
    by_kind: dict[str, list[float]] = {}
    for image, prompt, row in zip(result["images"], prompts, result["rows"]):
        scene = parse_prompt(prompt)
        by_kind.setdefault(scene.kind, []).append(row["strict"])
        objects = verify(image, scene).objects
        asked += sum(p.count for p in scene.phrases)
        detected += len(objects)
        n_unknown = sum(o.shape == "unknown" for o in objects)
        unknown += n_unknown
        with_unknown += n_unknown > 0
    print(f"checkpoint {checkpoint}: {len(prompts)} eval prompts, {e.num_steps} ODE steps, seed {e.seed}")
    print(f"strict {result['strict']:.3f}  dense {result['dense']:.3f}  soft {result['soft']:.3f}")
    print("strict by prompt kind:", ", ".join(f"{k} {np.mean(v):.3f} ({len(v)} prompts)" for k, v in sorted(by_kind.items())))
    print(f"objects asked for {asked}, detected {detected}, of which unknown {unknown} "
          f"({unknown / max(detected, 1):.0%}); images with an unknown object: {with_unknown} of {len(prompts)}")
    soft = np.asarray([r["soft"] for r in result["rows"]])
    print("soft per image, 10th / 50th / 90th percentile:", np.round(np.percentile(soft, [10, 50, 90]), 2).tolist())


if __name__ == "__main__":
    main()
