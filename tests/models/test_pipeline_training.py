"""One training round of every strategy on tiny SD3 and FLUX pipelines through aegpo.trainer.Trainer."""

import json

import pytest
import torch

from aegpo.checkpoint import CheckpointError, load_policy, read_manifest
from aegpo.strategies.registry import STRATEGIES
from aegpo.trainer import Trainer

from aegpo_testing import shipped_params
from fixtures.tiny_pipelines import save_flux, save_sd3

TRAIN = ["a red circle", "two blue squares", "a green triangle left of a white square",
         "a yellow circle and a red square"]
EVAL = ["a blue circle"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    save_sd3(root / "models" / "sd3")
    save_flux(root / "models" / "flux")
    return root


def params(project, kind, strategy, *extra):
    return shipped_params([
        f"model.kind={kind}", f"model.pretrained.path=models/{kind}", "model.pretrained.resolution=32",
        "model.pretrained.max_sequence_length=8", "model.pretrained.dtype=float32",
        "model.pretrained.text_cache_dir=cache/text",
        f"train.strategy={strategy}", f"train.out_dir=runs/{kind}-{strategy}", "train.rounds=1",
        "train.prompts_per_round=2",
        "train.group_size=2", "train.eval_every=0", "train.eval_base=false", "sampler.num_steps=4", "eval.num_steps=2",
        "model.lora.rank=2", "entropy.layers=[0, -1]", "aegpo.peaks_k=2", "mixgrpo.window=2",
        "aegpo.cache_dir=cache/profiles",
        "reward.name=multi", "reward.weights={shapes.dense: 1.0, jpeg_incompressibility: 0.1}", *extra])


@pytest.mark.slow  # 14 rounds of tiny SD3 / FLUX pipelines
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_one_round_of_every_strategy(project, kind, strategy):
    trainer = Trainer(params(project, kind, strategy), TRAIN, None, project_dir=project, progress=False)
    before = {n: p.detach().clone() for n, p in trainer.named_trainable.items()}
    result = trainer.run()
    rec = result["history"][0]
    assert result["rounds"] == 1 and rec.num_samples >= 4
    assert rec.update.trained_transitions > 0 and rec.update.first_ratio_dev < 1e-4
    assert len(rec.entropy_t) == 4 and all(e > 0 for e in rec.entropy_t)
    assert {"shapes.dense", "shapes.strict", "jpeg_incompressibility"} <= set(rec.reward_parts)
    assert any(not torch.equal(before[n], p) for n, p in trainer.named_trainable.items())  # LoRA moved
    manifest = read_manifest(project / "runs" / f"{kind}-{strategy}" / "checkpoint")
    assert manifest["form"] == "lora" and manifest["policy"]["kind"] == kind


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_trained_checkpoint_reloads_onto_its_base(project, kind):
    p = params(project, kind, "grpo", f"train.out_dir=runs/reload-{kind}", "reward.aggregate=advantage",
               "model.guidance_scale=2.0")
    trainer = Trainer(p, TRAIN, EVAL, project_dir=project, progress=False)
    trainer.run()
    checkpoint = project / "runs" / f"reload-{kind}" / "checkpoint"
    reloaded = load_policy(checkpoint)
    assert type(reloaded) is type(trainer.policy) and reloaded.nfe_per_call == 2
    x, s = torch.randn(2, *reloaded.latent_shape), torch.tensor([0.6, 0.3])
    with torch.no_grad():
        expected = trainer.policy.velocity(x, s, trainer.policy.encode_prompts(TRAIN[:2]))
        got = reloaded.velocity(x, s, reloaded.encode_prompts(TRAIN[:2]))
    assert torch.allclose(expected, got, atol=1e-5)
    # a changed base is refused
    config = project / "models" / kind / "transformer" / "config.json"
    original = config.read_text()
    config.write_text(json.dumps({**json.loads(original), "_note": "edited"}))
    try:
        with pytest.raises(CheckpointError, match="has changed since training"):
            load_policy(checkpoint)
    finally:
        config.write_text(original)

def test_full_finetune_bf16_round(project):
    p = params(project, "sd3", "flow_grpo", "train.out_dir=runs/full-bf16", "model.finetune=full",
               "model.pretrained.dtype=bfloat16", "model.pretrained.gradient_checkpointing=true", "train.kl_beta=0.01")
    result = Trainer(p, TRAIN, None, project_dir=project, progress=False).run()
    rec = result["history"][0]
    assert rec.update.trained_transitions > 0 and rec.update.loss == rec.update.loss  # finite
    assert read_manifest(project / "runs" / "full-bf16" / "checkpoint")["form"] == "full"
