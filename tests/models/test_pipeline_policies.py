"""SD3 and FLUX policies on tiny random pipelines loaded from disk: shapes, dtypes, text cache, guidance, errors."""

import numpy as np
import pytest
import torch

from aegpo.checkpoint import load_base_policy
from aegpo.config import ParamsError
from aegpo.entropy.recorder import EntropyRecorder
from aegpo.models.base import LoraSpec
from aegpo.models.diffusers_policy import PretrainedModelError

from aegpo_testing import shipped_params
from fixtures.tiny_pipelines import save_flux, save_sd3

PROMPTS = ["a red circle", "two blue squares"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {"sd3": save_sd3(root / "sd3"), "flux": save_flux(root / "flux"),
            "flux_schnell": save_flux(root / "flux_schnell", guidance_embeds=False)}


def load(folder, kind, *extra, project_dir="."):
    path = [f"model.pretrained.path={folder}"] if folder is not None else []
    params = shipped_params([f"model.kind={kind}", *path, "model.pretrained.resolution=32",
                             "model.pretrained.max_sequence_length=8", "model.pretrained.dtype=float32", *extra])
    policy, ref = load_base_policy(params.model, project_dir)
    return policy.eval(), ref


@pytest.mark.parametrize("kind", ["sd3", "flux"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_shapes_dtypes_and_pixels(folders, kind, dtype):
    policy, ref = load(folders[kind], kind, f"model.pretrained.dtype={dtype}")
    assert policy.latent_shape == (4, 8, 8) and policy.nfe_per_call == 1
    assert next(policy.transformer.parameters()).dtype == getattr(torch, dtype)
    assert len(ref["manifest_sha256"]) == 64 and ref["path"] == str(folders[kind].resolve())
    cond = policy.encode_prompts(PROMPTS)
    text_tokens = 77 + 8 if kind == "sd3" else 8
    assert (cond.tensors["states"].shape == (2, text_tokens, 32)
            and cond.tensors["states"].dtype == getattr(torch, dtype))
    x = torch.randn(2, *policy.latent_shape)
    with torch.no_grad():
        v = policy.velocity(x, torch.tensor([0.9, 0.4]), cond)
        v_same_prompt = policy.velocity(x, torch.tensor([0.9, 0.4]), policy.encode_prompts([PROMPTS[0]] * 2))
    assert v.dtype == torch.float32 and v.shape == x.shape and torch.isfinite(v).all()
    assert not torch.allclose(v[1], v_same_prompt[1])  # the prompt matters
    images = policy.decode(x)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_text_cache_memory_and_disk(folders, kind, tmp_path):
    policy, _ = load(folders[kind], kind, f"model.pretrained.text_cache_dir={tmp_path / 'cache'}")
    first = policy.encode_prompts(PROMPTS + PROMPTS[:1])
    assert (policy.text_cache.misses, policy.text_cache.hits) == (2, 0)  # unique prompts encoded once
    policy.encode_prompts(PROMPTS)
    assert policy.text_cache.hits == 2
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 2
    fresh, _ = load(folders[kind], kind, f"model.pretrained.text_cache_dir={tmp_path / 'cache'}")
    again = fresh.encode_prompts(PROMPTS + PROMPTS[:1])
    assert fresh.text_cache.misses == 0
    for k in first.tensors:
        assert torch.equal(first.tensors[k], again.tensors[k])
    other, _ = load(folders[kind], kind, f"model.pretrained.text_cache_dir={tmp_path / 'cache'}",
                    "model.pretrained.max_sequence_length=6")
    assert other.text_cache.namespace != fresh.text_cache.namespace


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_cfg_is_detached_and_entropy_comes_from_the_conditional_branch(folders, kind):
    plain, _ = load(folders[kind], kind)
    cfg, _ = load(folders[kind], kind, "model.guidance_scale=3.0", "model.pretrained.negative_prompt=a cat")
    assert cfg.nfe_per_call == 2
    x, s = torch.randn(2, *cfg.latent_shape), torch.tensor([0.8, 0.3])
    cond, uncond = plain.encode_prompts(PROMPTS), plain.encode_prompts(["a cat"] * 2)
    c = cfg.encode_prompts(PROMPTS)
    assert torch.equal(c.tensors["uncond_states"], uncond.tensors["states"])
    recorders = []
    for policy in (plain, cfg):
        rec = EntropyRecorder()
        rec.install(policy)
        recorders.append(rec)
    with recorders[0].recording(), torch.no_grad():
        v_c = plain.velocity(x, s, cond)
    with recorders[1].recording():
        v = cfg.velocity(x, s, c)
    with torch.no_grad():
        v_u = plain.velocity(x, s, uncond)
    assert torch.allclose(v, v_u + 3.0 * (v_c - v_u), atol=1e-5)
    assert torch.equal(recorders[0].collect(), recorders[1].collect())
    # the unconditional branch is detached: d(velocity)/dθ = scale · d(conditional branch)/dθ
    cfg.add_lora(LoraSpec(4, 8.0, ("to_q", "to_v")))
    params = cfg.trainable_parameters()
    with torch.no_grad():
        for p in params:
            p.add_(0.05)
    g_cfg = torch.autograd.grad(cfg.velocity(x, s, c).sum(), params)
    g_cond = torch.autograd.grad(3.0 * cfg.denoise(x, s, c.tensors, "").float().sum(), params)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(g_cfg, g_cond))


def test_flux_embedded_guidance(folders):
    dev, _ = load(folders["flux"], "flux", "model.pretrained.embedded_guidance=3.5")
    dev_low, _ = load(folders["flux"], "flux", "model.pretrained.embedded_guidance=1.0")
    schnell, _ = load(folders["flux_schnell"], "flux", "model.pretrained.embedded_guidance=3.5")
    schnell_low, _ = load(folders["flux_schnell"], "flux", "model.pretrained.embedded_guidance=1.0")
    x, s = torch.randn(1, *dev.latent_shape), torch.tensor([0.5])
    with torch.no_grad():
        assert not torch.allclose(dev.velocity(x, s, dev.encode_prompts(PROMPTS[:1])),
                                  dev_low.velocity(x, s, dev_low.encode_prompts(PROMPTS[:1])))
        assert torch.equal(schnell.velocity(x, s, schnell.encode_prompts(PROMPTS[:1])),
                           schnell_low.velocity(x, s, schnell_low.encode_prompts(PROMPTS[:1])))
    assert dev.nfe_per_call == 1 and dev.scheduler_shift() > 1.0


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_lora_is_float32_on_bf16_and_checkpointing_keeps_gradients(folders, kind):
    grads = {}
    for ckpt in (True, False):
        policy, _ = load(folders[kind], kind, f"model.pretrained.gradient_checkpointing={str(ckpt).lower()}")
        policy.add_lora(LoraSpec(4, 8.0, ("to_q", "to_k", "to_v", "to_out.0")), seed=0)
        with torch.no_grad():
            for p in policy.trainable_parameters():
                p.add_(0.01)  # lora_B starts at 0: make the adapter active so gradients reach every LoRA weight
        policy.transformer.train()
        cond = policy.encode_prompts(PROMPTS)
        torch.manual_seed(0)
        v = policy.velocity(torch.randn(2, *policy.latent_shape), torch.tensor([0.7, 0.2]), cond)
        v.square().mean().backward()
        grads[ckpt] = [p.grad.clone() for p in policy.trainable_parameters()]
        assert policy.transformer.is_gradient_checkpointing == ckpt
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads[True], grads[False]))
    bf16, _ = load(folders[kind], kind, "model.pretrained.dtype=bfloat16")
    bf16.add_lora(LoraSpec(4, 8.0, ("to_q", "to_v")))
    assert {p.dtype for p in bf16.trainable_parameters()} == {torch.float32}
    assert next(bf16.transformer.parameters()).dtype == torch.bfloat16
    v = bf16.velocity(torch.randn(1, *bf16.latent_shape), torch.tensor([0.5]), bf16.encode_prompts(PROMPTS[:1]))
    assert v.dtype == torch.float32


def test_clear_errors_for_missing_or_wrong_models(folders, tmp_path):
    with pytest.raises(PretrainedModelError, match="model.pretrained.path is required"):
        load(None, "sd3")
    with pytest.raises(PretrainedModelError, match="does not exist"):
        load(tmp_path / "nowhere", "sd3")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PretrainedModelError, match="no model_index.json"):
        load(tmp_path / "empty", "sd3")
    with pytest.raises(PretrainedModelError, match="not in the local Hugging Face cache"):
        load("some-org/not-downloaded-model", "flux")
    with pytest.raises(ParamsError, match="model.pretrained.height: 36 pixels is not a multiple of 8"):
        load(folders["flux"], "flux", "model.pretrained.resolution=36")


def test_relative_path_is_relative_to_the_project(folders):
    policy, ref = load(folders["sd3"].name, "sd3", project_dir=folders["sd3"].parent)
    assert ref["path"] == str(folders["sd3"].resolve())


def test_entropy_probes_skip_the_vae(folders, monkeypatch):
    from aegpo.entropy.profile import ProbeSpec, probe

    policy, _ = load(folders["flux"], "flux")
    recorder = EntropyRecorder(layers=[0, -1])
    recorder.install(policy)

    def no_decode(latents):
        raise AssertionError("probes must not decode")

    monkeypatch.setattr(policy, "decode", no_decode)
    spec = ProbeSpec(num_steps=3, shift=1.0, seed=0, guidance_scale=1.0, layers=(0, -1), heads="all", keys="all",
                     normalize=False, query_stride=1)
    rollout = probe(policy, PROMPTS, spec, recorder)
    assert rollout.images.shape == (2, 0, 0, 3) and rollout.entropy_layers.shape == (2, 3, 2)
