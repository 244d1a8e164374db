"""Run under torchrun by test_failures: rank 1's reward returns one NaN in round 1 (rank 0's are all finite)."""

from __future__ import annotations

from aegpo import distributed
from aegpo.config import load_params
from aegpo.prompt_files import read_prompt_file
from aegpo.trainer import Trainer

params = load_params("params.yaml", [])
trainer = Trainer(params, read_prompt_file(params.train.prompts), None, progress=False)
reward = trainer.reward


class OneNaN:
    def __getattr__(self, name):
        return getattr(reward, name)

    def __call__(self, images, prompts):
        result = reward(images, prompts)
        if trainer.round == 1 and distributed.rank() == 1:
            result.score[0] = float("nan")
        return result


trainer.reward = OneNaN()
try:
    trainer.run()
finally:
    distributed.teardown()
