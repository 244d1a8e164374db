import math

import pytest
import torch
from diffusers.models.attention_processor import JointAttnProcessor2_0

from aegpo.entropy.core import explicit_entropy, mean_query_entropy
from aegpo.entropy.recorder import EntropyRecorder
from aegpo.rollout import StepPlan, generate

from aegpo_testing import tiny_policy


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_chunked_entropy_matches_explicit_softmax(chunk):
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 11, 8, generator=gen) * 2, torch.randn(2, 3, 13, 8, generator=gen) * 2
    ours = mean_query_entropy(q, k, 8**-0.5, chunk_size=chunk)
    assert ours.shape == (2, 3)
    torch.testing.assert_close(ours, explicit_entropy(q, k, 8**-0.5), atol=1e-5, rtol=1e-5)


def test_entropy_bounds():
    q = torch.zeros(1, 1, 4, 8)  # all-equal logits → uniform → log N
    k = torch.randn(1, 1, 10, 8)
    assert mean_query_entropy(q, k, 1.0).item() == pytest.approx(math.log(10), rel=1e-6)
    q = torch.ones(1, 1, 1, 1) * 100.0
    k = torch.tensor([[[[1.0], [0.0], [0.0]]]])  # one key dominates → ≈ 0
    assert mean_query_entropy(q, k, 1.0).item() < 1e-6


def _capture_qk(policy, x, sigma, cond):
    """Per layer: (image queries, all keys) computed from the module's own weights on its inputs."""
    captured = {}

    def hook(name):
        def fn(module, args, kwargs):
            hs, ehs = kwargs["hidden_states"], kwargs["encoder_hidden_states"]
            b, h = hs.shape[0], module.heads
            proj = lambda lin, t: lin(t).view(b, -1, h, lin.out_features // h).transpose(1, 2)  # noqa: E731
            q, k = proj(module.to_q, hs), proj(module.to_k, hs)
            kt = proj(module.add_k_proj, ehs)
            captured[name] = (q, torch.cat([k, kt], dim=2), hs.shape[1])
        return fn

    handles = [m.register_forward_pre_hook(hook(n), with_kwargs=True) for n, m in policy.attention_modules()]
    with torch.no_grad():
        policy.velocity(x, sigma, cond)
    for h in handles:
        h.remove()
    return captured


@pytest.mark.parametrize("keys", ["all", "text"])
def test_processor_output_equals_diffusers_and_records_exact_entropy(keys):
    policy = tiny_policy()
    cond = policy.encode_prompts(["a red circle", "two blue squares and a white triangle", "a green square"])
    x, sigma = torch.randn(3, 3, 32, 32), torch.tensor([0.9, 0.5, 0.2])
    for _, m in policy.attention_modules():
        assert isinstance(m.processor, JointAttnProcessor2_0)
    with torch.no_grad():
        expected = policy.velocity(x, sigma, cond)
    captured = _capture_qk(policy, x, sigma, cond)
    recorder = EntropyRecorder(keys=keys, chunk_size=5)
    names = recorder.install(policy)
    with torch.no_grad():
        off = policy.velocity(x, sigma, cond)
        with recorder.recording():
            on = policy.velocity(x, sigma, cond)
    assert (off - expected).abs().max() <= 1e-5 and (on - expected).abs().max() <= 1e-5
    values = recorder.collect()
    assert values.shape == (3, len(names), 2)
    for slot, name in enumerate(names):
        q, k, n_img = captured[name]
        if keys == "text":
            k = k[:, :, n_img:]
        ref = explicit_entropy(q, k, q.shape[-1] ** -0.5)
        torch.testing.assert_close(values[:, slot], ref, atol=1e-4, rtol=1e-5)
    recorder.uninstall()
    assert all(isinstance(m.processor, JointAttnProcessor2_0) for _, m in policy.attention_modules())


def test_layer_head_stride_and_normalize_options():
    policy = tiny_policy()
    cond = policy.encode_prompts(["a red circle"] * 2)
    x, sigma = torch.randn(2, 3, 32, 32), torch.tensor([0.7, 0.3])
    full = EntropyRecorder()
    full.install(policy)
    with torch.no_grad(), full.recording():
        policy.velocity(x, sigma, cond)
    all_vals = full.collect()
    sub = EntropyRecorder(layers=[-1], heads=[1], normalize=True)
    assert sub.install(policy) == [policy.attention_modules()[-1][0]]
    with torch.no_grad(), sub.recording():
        policy.velocity(x, sigma, cond)
    n_keys = 64 + policy.config.max_tokens
    torch.testing.assert_close(sub.collect()[:, 0, 0], all_vals[:, -1, 1] / math.log(n_keys))
    strided = EntropyRecorder(query_stride=4)
    strided.install(policy)
    with torch.no_grad(), strided.recording():
        policy.velocity(x, sigma, cond)
    approx = strided.collect()
    assert approx.shape == all_vals.shape and (approx - all_vals).abs().max() < 0.5
    with pytest.raises(ValueError, match="out of range"):
        EntropyRecorder(layers=[5]).install(policy)


def test_recording_is_no_grad_even_in_a_grad_forward():
    policy = tiny_policy()
    rec = EntropyRecorder()
    rec.install(policy)
    cond = policy.encode_prompts(["a red circle"])
    with rec.recording():
        v = policy.velocity(torch.randn(1, 3, 32, 32), torch.tensor([0.5]), cond)
    assert v.requires_grad and not rec.collect().requires_grad


def test_rollout_returns_entropy_trajectory():
    policy = tiny_policy()
    rec = EntropyRecorder()
    rec.install(policy)
    n, t = 3, 4
    ro = generate(policy, ["a red circle", "a blue square"], torch.tensor([0, 1, 1]), torch.arange(n),
                  StepPlan.ode(n, t), recorder=rec, batch_size=2, keep_heads=True)
    assert ro.entropy.shape == (n, t) and ro.entropy_layers.shape == (n, t, 2)
    assert ro.entropy_heads.shape == (n, t, 2, 2)
    assert torch.isfinite(ro.entropy).all()
    torch.testing.assert_close(ro.entropy, ro.entropy_heads.mean((-1, -2)))
