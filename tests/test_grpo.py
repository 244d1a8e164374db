import numpy as np
import pytest
import torch

from aegpo.models.base import LoraSpec
from aegpo.policy_update import UpdateConfig, clipped_loss, group_advantages, policy_update
from aegpo.rollout import StepPlan, generate, sample_seeds
from aegpo.strategies.base import expand_groups

from aegpo_testing import tiny_policy


def test_group_advantages_variable_sizes_match_manual_zscores():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.9, 0.9, 0.1, 0.3, 0.3, 0.3])
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])  # sizes 3, 4, 3
    adv = group_advantages(rewards, groups, std_floor=0.0, clip=100)
    for g in range(3):
        r = rewards[groups == g].double().numpy()
        expected = (r - r.mean()) / (r.std() if r.std() > 0 else 1.0)
        np.testing.assert_allclose(adv[groups == g].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert torch.all(adv[groups == 2] == 0)  # constant group: no signal


def test_group_advantages_floor_clip_and_errors():
    r = torch.tensor([0.0, 0.01, 1.0, 0.0])
    g = torch.tensor([0, 0, 1, 1])
    adv = group_advantages(r, g, std_floor=0.05, clip=5.0)
    assert adv[1].item() == pytest.approx(0.005 / 0.05, rel=1e-5)  # floor used, not std = 0.005
    adv = group_advantages(torch.tensor([0.0, 0, 0, 0, 0, 0, 0, 0, 0, 1]), torch.zeros(10, dtype=torch.long),
                           std_floor=0.0, clip=2.0)
    assert adv.max().item() == 2.0
    with pytest.raises(ValueError, match="fewer than 2"):
        group_advantages(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 0, 1]))


def test_clipped_loss_formula():
    lp_old = torch.zeros(4)
    lp_new = torch.log(torch.tensor([1.5, 0.5, 1.5, 0.5]))
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, ratio = clipped_loss(lp_new, lp_old, adv, 0.2)
    # max(-A·ρ, -A·clip(ρ)): positive A takes the clipped ρ when ρ > 1+ε; negative A when ρ < 1−ε
    torch.testing.assert_close(loss, torch.tensor([-1.2, -0.5, 1.5, 0.8]))
    torch.testing.assert_close(ratio, torch.tensor([1.5, 0.5, 1.5, 0.5]))


def _rollout(policy, group_sizes, t=4, train_steps=(0, 1, 2)):
    prompts = ["a red circle", "two blue squares", "a green triangle left of a white square"][: len(group_sizes)]
    idx, rank = expand_groups(group_sizes)
    n = len(idx)
    sde = torch.ones(n, t, dtype=torch.bool)
    train = torch.zeros(n, t, dtype=torch.bool)
    train[:, list(train_steps)] = True
    cond = policy.encode_prompts(prompts)
    ro = generate(policy, prompts, idx, sample_seeds(0, idx, rank, False), StepPlan(sde, train), sde="flow",
                  noise_level=0.7, cond=cond, batch_size=5)
    return ro, cond


def _cfg(**kw):
    base = dict(sde="flow", noise_level=0.7, clip_range=1e-3, kl_beta=0.0, max_grad_norm=1.0,
                optimizer_steps=2, micro_batch=7, inner_epochs=1)
    return UpdateConfig(**{**base, **kw})


def test_policy_update_is_on_policy_at_first_step_and_moves_logprobs_with_advantages():
    policy = tiny_policy()
    policy.add_lora(LoraSpec(4, 8, ("to_q", "to_k", "to_v", "to_out.0")), seed=0)
    ro, cond = _rollout(policy, [3, 5])  # variable group sizes
    assert ro.log_prob.shape == (8 * 3,)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    adv = group_advantages(rewards, ro.prompt_index)
    params = policy.trainable_parameters()
    opt = torch.optim.SGD(params, lr=0.5)
    stats = policy_update(policy, opt, ro, adv, cond, _cfg(clip_range=10.0), torch.Generator().manual_seed(0))
    assert stats["first_ratio_dev"] < 1e-5  # same weights → ratio exactly 1 before the first step
    assert stats["grad_norm"] > 0
    # after the update, positive-advantage samples became more likely relative to negative ones
    ro2 = ro
    with torch.no_grad():
        from aegpo.samplers import step
        v = policy.velocity(ro2.x_t, ro2.sigmas[ro2.trans_step], cond.select(ro2.prompt_index[ro2.trans_sample]))
        new = step("flow", ro2.x_t, v, ro2.sigmas[ro2.trans_step], ro2.sigmas[ro2.trans_step + 1], 0.7,
                   sigma_max=float(ro2.sigmas[1]), prev=ro2.x_next).log_prob
    delta = (new - ro2.log_prob).view(8, 3).mean(1)
    pos, neg = adv > 0, adv < 0
    assert delta[pos].mean() > delta[neg].mean()


def test_kl_term_is_zero_at_start_and_counts_when_weighted():
    policy = tiny_policy()
    policy.add_lora(LoraSpec(4, 8, ("to_q", "to_v")), seed=0)
    ro, cond = _rollout(policy, [2, 2])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    opt = torch.optim.SGD(policy.trainable_parameters(), lr=1.0)
    stats = policy_update(policy, opt, ro, adv, cond, _cfg(kl_beta=1.0, optimizer_steps=1), torch.Generator())
    assert stats["kl"] == pytest.approx(0.0, abs=1e-8)  # LoRA B starts at 0: policy == reference
    stats = policy_update(policy, opt, ro, adv, cond, _cfg(kl_beta=1.0, optimizer_steps=1), torch.Generator())
    assert stats["kl"] > 0
