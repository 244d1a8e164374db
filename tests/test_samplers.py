import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from aegpo.samplers import SDE_KINDS, gaussian_log_prob, kl_to_reference, sigma_schedule, step


def test_sigma_schedule_matches_shift_formula():
    s = sigma_schedule(10, 3.0)
    t = torch.linspace(1, 0, 11, dtype=torch.float64)
    assert s.shape == (11,) and s[0] == 1 and s[-1] == 0
    torch.testing.assert_close(s.double(), 3 * t / (1 + 2 * t), atol=1e-7, rtol=0)
    assert bool((s[1:] < s[:-1]).all())


@pytest.mark.parametrize("kind", ("ode",) + SDE_KINDS)
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_noise_level_zero_reproduces_diffusers_euler(kind, shift):
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(8)
    sigmas = sched.sigmas
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 8, 8, generator=gen)
    for i, t in enumerate(sched.timesteps):
        v = torch.randn(x.shape, generator=gen)
        expected = sched.step(v, t, x).prev_sample
        ours = step(kind, x, v, sigmas[i], sigmas[i + 1], 0.0, sigma_max=float(sigmas[1])).prev
        assert (ours - expected).abs().max() <= 1e-6
        x = expected


def _independent_mean_std(kind, x, v, s, sn, a, sigma_max):
    """Each SDE's transition written out from its paper/code form, independently of aegpo.samplers."""
    dt = sn - s
    if kind == "dance":
        x0 = x - s * v
        score = -(x - x0 * (1 - s)) / s**2
        return x + dt * v + (-0.5 * a**2 * score) * dt, a * math.sqrt(s - sn)
    if kind == "flow":
        s_den = sigma_max if s == 1 else s
        sd = a * math.sqrt(s / (1 - s_den))
        drift = v + sd**2 / (2 * s) * (x + (1 - s) * v)
        return x + drift * dt, sd * math.sqrt(-dt)
    if kind == "cps":
        std = sn * math.sin(a * math.pi / 2)
        return (1 - sn) * (x - s * v) + math.sqrt(sn**2 - std**2) * (x + (1 - s) * v), std
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", SDE_KINDS)
def test_sde_log_prob_matches_closed_form_gaussian(kind):
    sigmas = sigma_schedule(10, 3.0)
    gen = torch.Generator().manual_seed(1)
    a = 0.7
    for i in range(9):  # the last step (σ_next = 0) is never trained
        x = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
        v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        s, sn = float(sigmas[i]), float(sigmas[i + 1])
        out = step(kind, x.float(), v.float(), s, sn, a, sigma_max=float(sigmas[1]), generator=gen)
        mean, std = _independent_mean_std(kind, x, v, s, sn, a, float(sigmas[1]))
        d = mean[0].numel()
        sq = ((out.prev.double() - mean) ** 2).flatten(1).sum(1)
        closed = (-0.5 * d * math.log(2 * math.pi * std**2) - sq / (2 * std**2)) / d  # per-dim average
        torch.testing.assert_close(out.log_prob.double(), closed, atol=2e-4, rtol=1e-5)
        torch.testing.assert_close(out.mean.double(), mean, atol=1e-4, rtol=1e-5)
        assert out.std[0].item() == pytest.approx(std, rel=1e-5)


@pytest.mark.parametrize("kind", SDE_KINDS)
def test_samples_have_the_stated_std(kind):
    sigmas = sigma_schedule(10, 1.0)
    x = torch.zeros(4000, 16)
    v = torch.zeros_like(x)
    out = step(kind, x, v, sigmas[3], sigmas[4], 0.7, sigma_max=float(sigmas[1]),
               generator=torch.Generator().manual_seed(0))
    emp = (out.prev - out.mean).std()
    assert emp.item() == pytest.approx(out.std[0].item(), rel=0.02)


def test_per_sample_noise_level_mixes_sde_and_ode():
    x, v = torch.randn(4, 10), torch.randn(4, 10)
    a = torch.tensor([0.0, 0.7, 0.0, 0.7])
    out = step("dance", x, v, 0.8, 0.6, a, generator=torch.Generator().manual_seed(0))
    ode = x + (0.6 - 0.8) * v
    assert torch.allclose(out.prev[[0, 2]], ode[[0, 2]], atol=1e-6)
    assert not torch.allclose(out.prev[[1, 3]], ode[[1, 3]], atol=1e-3)
    assert out.log_prob[0] == 0 and out.log_prob[1] != 0


def test_rescoring_a_stored_transition_is_exact_and_differentiable():
    x = torch.randn(3, 10)
    v = torch.randn(3, 10, requires_grad=True)
    first = step("flow", x, v.detach(), 0.9, 0.8, 0.7, sigma_max=0.9, generator=torch.Generator().manual_seed(0))
    again = step("flow", x, v, 0.9, 0.8, 0.7, sigma_max=0.9, prev=first.prev)
    assert torch.equal(again.log_prob.detach(), first.log_prob)
    again.log_prob.sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0


def test_gaussian_log_prob_and_kl_closed_forms():
    mean, std = torch.randn(2, 5), torch.tensor([0.5, 2.0]).view(2, 1)
    x = torch.randn(2, 5)
    expected = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(x).mean(1)
    torch.testing.assert_close(gaussian_log_prob(x, mean, std), expected)
    ref = mean + 0.1
    torch.testing.assert_close(kl_to_reference(mean, ref, std.view(-1)), (0.01 / (2 * std.view(-1) ** 2)))


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown sampler kind"):
        step("euler-maruyama", torch.zeros(1, 2), torch.zeros(1, 2), 0.5, 0.4, 0.1)
