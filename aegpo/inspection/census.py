"""`aegpo inspect census`: where a checkpoint's eval images fail. Strict accuracy by prompt kind, objects
detected vs asked for, and how many are `unknown` blobs.

Samples the eval split exactly as `aegpo evaluate` does (the params' eval section: ODE steps, images per
prompt, seed), runs the shapes verifier on every image and counts. Quoted in docs/findings.md §2a.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aegpo.config import Params


@dataclass(frozen=True)
class Census:
    checkpoint: str
    prompts: int  # eval prompts
    images_per_prompt: int
    num_steps: int
    seed: int
    strict: float
    dense: float
    soft: float
    strict_by_kind: dict[str, tuple[float, int]]  # prompt kind → (mean strict, prompts)
    asked: int  # objects the prompts ask for, over all images
    detected: int  # objects the verifier found
    unknown: int  # of which of no recognised shape
    images: int
    images_with_unknown: int
    soft_percentiles: tuple[float, float, float]  # 10th / 50th / 90th percentile of the per-image soft score

    def lines(self) -> list[str]:
        kinds = ", ".join(f"{kind} {m:.3f} ({n} prompts)" for kind, (m, n) in sorted(self.strict_by_kind.items()))
        return [
            (f"checkpoint {self.checkpoint}: {self.prompts} eval prompts × {self.images_per_prompt} images, "
             f"{self.num_steps} ODE steps, seed {self.seed}"),
            f"strict {self.strict:.3f}  dense {self.dense:.3f}  soft {self.soft:.3f}",
            f"strict by prompt kind: {kinds}",
            (f"objects asked for {self.asked}, detected {self.detected}, of which unknown {self.unknown} "
             f"({self.unknown / max(self.detected, 1):.0%}); images with an unknown object: "
             f"{self.images_with_unknown} of {self.images}"),
            f"soft per image, 10th / 50th / 90th percentile: {[round(float(v), 2) for v in self.soft_percentiles]}",
        ]


def object_census(params: Params, checkpoint: str | Path | None = None, project_dir: str | Path = ".") -> Census:
    """The census of `checkpoint` (default: params.model.checkpoint) on params.eval's prompts."""
    from aegpo.checkpoint import load_policy
    from aegpo.evaluate import evaluate
    from aegpo.prompt_files import read_prompt_file
    from aegpo.rewards.shapes import ShapesReward
    from aegpo.shapes.prompts import parse_prompt
    from aegpo.shapes.verify import verify

    project = Path(project_dir)
    e = params.eval
    checkpoint = str(checkpoint or project / params.model.checkpoint)
    reward = ShapesReward()
    prompts = read_prompt_file(project / e.prompts, reward.validate_prompt)
    k = e.samples_per_prompt
    result = evaluate(load_policy(checkpoint).eval(), prompts, reward, num_steps=e.num_steps, samples_per_prompt=k,
                      seed=e.seed, batch_size=e.batch_size)
    by_kind: dict[str, list[float]] = {}
    for prompt, row in zip(prompts, result["rows"]):
        by_kind.setdefault(parse_prompt(prompt).kind, []).append(row["strict"])
    images = result["images"]  # (len(prompts) · k, H, W, 3), prompt-major
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
    soft = np.asarray(reward(images, image_prompts).parts["soft"])
    p10, p50, p90 = np.percentile(soft, [10, 50, 90]).tolist()
    return Census(checkpoint=checkpoint, prompts=len(prompts), images_per_prompt=k, num_steps=e.num_steps, seed=e.seed,
                  strict=float(result["strict"]), dense=float(result["dense"]), soft=float(result["soft"]),
                  strict_by_kind={kind: (float(np.mean(v)), len(v)) for kind, v in by_kind.items()},
                  asked=asked, detected=detected, unknown=unknown, images=len(images),
                  images_with_unknown=with_unknown, soft_percentiles=(p10, p50, p90))
