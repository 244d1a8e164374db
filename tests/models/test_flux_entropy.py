"""FLUX recording processor (double- and single-stream) and the fused entropy backend."""

import pytest
import torch
from diffusers import FluxTransformer2DModel
from diffusers.models.transformers import transformer_flux
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

from aegpo.entropy import fused
from aegpo.entropy.core import explicit_entropy, mean_query_entropy
from aegpo.entropy.flux import EntropyFluxAttnProcessor, FluxTokenLayout
from aegpo.entropy.recorder import EntropyRecorder
from aegpo.models.flux import image_ids, pack, unpack

N_TXT, H, W = 5, 8, 6  # text tokens, latent height/width → 4·3 = 12 image tokens


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                               num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                               guidance_embeds=False, axes_dims_rope=(4, 6, 6)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def rope(model):
    ids = torch.cat([torch.zeros(N_TXT, 3), image_ids(H, W, "cpu", torch.float32)])
    return model.pos_embed(ids)


def capture_default(attn, inputs, monkeypatch):
    """Output of diffusers' FluxAttnProcessor and the (query, key) its attention saw (B, S, H, D)."""
    seen = {}
    original = transformer_flux.dispatch_attention_fn

    def spy(query, key, value, **kwargs):
        seen["q"], seen["k"] = query, key
        return original(query, key, value, **kwargs)

    monkeypatch.setattr(transformer_flux, "dispatch_attention_fn", spy)
    attn.set_processor(FluxAttnProcessor())
    out = attn(**inputs)
    monkeypatch.undo()
    return out, seen["q"].transpose(1, 2), seen["k"].transpose(1, 2)


@pytest.mark.parametrize("block", ["double", "single"])
@pytest.mark.parametrize("keys", ["all", "text"])
def test_processor_output_is_diffusers_and_entropy_is_exact(model, block, keys, monkeypatch):
    torch.manual_seed(1)
    dim = 32
    n_img = (H // 2) * (W // 2)
    if block == "double":
        attn = model.transformer_blocks[0].attn
        inputs = {"hidden_states": torch.randn(2, n_img, dim), "encoder_hidden_states": torch.randn(2, N_TXT, dim)}
    else:
        attn = model.single_transformer_blocks[0].attn
        inputs = {"hidden_states": torch.randn(2, N_TXT + n_img, dim)}
    inputs["image_rotary_emb"] = rope(model)
    with torch.no_grad():
        expected, q, k = capture_default(attn, inputs, monkeypatch)
        recorder = EntropyRecorder(keys=keys)
        recorder.layer_names = [block]
        attn.set_processor(EntropyFluxAttnProcessor(recorder, 0, FluxTokenLayout(text_tokens=N_TXT)))
        with recorder.recording():
            got = attn(**inputs)
        silent = attn(**inputs)  # recorder inactive
    expected, got, silent = [t if isinstance(t, tuple) else (t,) for t in (expected, got, silent)]
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(expected, got, silent))
    key_set = k if keys == "all" else k[:, :, :N_TXT]
    want = explicit_entropy(q[:, :, N_TXT:], key_set, 16**-0.5)  # text tokens first: image queries are the rest
    assert torch.allclose(recorder.collect()[:, 0], want, atol=1e-5)


def test_single_stream_needs_the_text_length(model):
    attn = model.single_transformer_blocks[0].attn
    recorder = EntropyRecorder()
    attn.set_processor(EntropyFluxAttnProcessor(recorder, 0, FluxTokenLayout()))
    with recorder.recording(), pytest.raises(RuntimeError, match="number of text tokens"):
        attn(hidden_states=torch.randn(1, N_TXT + 12, 32), image_rotary_emb=rope(model))


def test_pack_unpack_match_flux_pipeline():
    from diffusers import FluxPipeline

    x = torch.randn(2, 4, H, W)
    packed = pack(x)
    assert torch.equal(packed, FluxPipeline._pack_latents(x, 2, 4, H, W))
    assert torch.equal(unpack(packed, H, W), x)
    assert torch.equal(image_ids(H, W, "cpu", torch.float32),
                       FluxPipeline._prepare_latent_image_ids(2, H // 2, W // 2, "cpu", torch.float32))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 5e-3)])
def test_fused_entropy_matches_explicit(dtype, tol):
    torch.manual_seed(0)
    q = (torch.randn(2, 3, 40, 16) * 2).to(dtype)
    k = (torch.randn(2, 3, 70, 16) * 2).to(dtype)
    got = fused.fused_mean_query_entropy(q[:, :, ::3], k, 0.25)
    want = explicit_entropy(q[:, :, ::3].float(), k.float(), 0.25)
    assert got is not None and got.dtype == torch.float32 and got.shape == (2, 3)
    assert torch.allclose(got, want, atol=tol)
    # non-contiguous (B, S, H, D)-transposed inputs, as FLUX passes them
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.allclose(fused.fused_mean_query_entropy(qt, k, 0.25), fused.fused_mean_query_entropy(q, k, 0.25))


def test_fused_recorder_equals_chunked_and_falls_back(monkeypatch):
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 30, 8), torch.randn(1, 2, 45, 8)
    results = {}
    for method in ("chunked", "fused"):
        rec = EntropyRecorder(method=method, query_stride=2)
        rec.layer_names = ["x"]
        with rec.recording():
            rec.record(0, q, k, slice(30, None), scale=8**-0.5)
        results[method] = rec.collect()
    assert torch.allclose(results["fused"], results["chunked"], atol=1e-5)

    def unavailable(*args, **kwargs):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(fused, "_attention_and_lse", unavailable)
    monkeypatch.setattr(fused, "_UNSUPPORTED", set())
    assert fused.fused_mean_query_entropy(q, k, 0.3) is None
    rec = EntropyRecorder(method="fused")
    rec.layer_names = ["x"]
    with rec.recording():
        rec.record(0, q, k, slice(30, None), scale=0.3)
    assert torch.allclose(rec.collect()[:, 0], mean_query_entropy(q, k, 0.3), atol=1e-6)
    with pytest.raises(ValueError, match="method"):
        EntropyRecorder(method="flash")
