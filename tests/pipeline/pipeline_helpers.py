"""Helpers shared by the pipeline tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import sys
from pathlib import Path

from flows.local_server import free_port, wait_http  # noqa: F401 (re-exported to the tests)

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
TRAIN_PROMPTS = ["a red circle", "two blue squares", "a green triangle left of a white square",
                 "a yellow circle and a red square", "a blue triangle", "two green circles"]
EVAL_PROMPTS = ["a blue circle", "two red triangles"]


def tiny_params(tiny_base: Path, **extra: object) -> str:
    """params.yaml text of a tiny run (the test checkpoint, 4-step sampler, 2 prompts per round)."""
    lines = [
        "seed: 0",
        f"model: {{checkpoint: {tiny_base}, lora: {{rank: 4}}}}",
        "sampler: {num_steps: 4}",
        "train: {prompts: data/train.txt, strategy: %s, rounds: %d, prompts_per_round: 2, group_size: 3, "
        "eval_every: %d, out_dir: runs/train}" % (extra.get("strategy", "aegpo"), extra.get("rounds", 2),
                                                  extra.get("eval_every", 2)),
        "entropy: {layers: [0]}",
        "eval: {prompts: data/eval.txt, num_steps: 3}",
        "aegpo: {peaks_k: 2, high_group: 4, low_group: 2, floor: 2, ceiling: 4}",
    ]
    return "\n".join(lines) + "\n"
