"""Regression tests for issue 17, an audit of the RL maths against verl, TRL, OpenRLHF and the papers:
1. KL in the reward + masked truncated rows: every row of a training group gets its log-probs;
2. equal-reward groups get exactly 0 advantage in float32;
3. REINFORCE++ with the KL in the reward is the paper's token-level estimator;
4. the ratio's numerical-safety cap changes no gradient the PPO objective defines.
Expected numbers are computed by hand in the comments (or quoted from the issue)."""

from __future__ import annotations

import math

import pytest
import torch

from skyexp.algos.advantages import ADVANTAGES, reinforce_pp
from skyexp.algos.losses import LOG_RATIO_CAP, clipped_policy_loss

# ---- 2. equal-reward groups: exactly zero in float32 ----


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
@pytest.mark.parametrize("value", [1.2, 0.7, -1.99])
def test_equal_non_dyadic_rewards_give_exactly_zero(name, value):
    # n = 8 rewards of 1.2 in float32: the mean is off by ~1e-7; divided by std + 1e-6 that was
    # +0.1057 for every sample under grpo (0.7 -> 0.056, -1.99 -> -0.106)
    r = torch.full((1, 8), value)
    assert torch.equal(ADVANTAGES[name](r), torch.zeros_like(r))


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_equal_reward_groups_are_zero_over_a_sweep(name):
    """Values from -3 to 3 (and a few non-dyadic ones) x n = 2..16, each equal group beside one
    informative group (so batch statistics are not degenerate): every equal group exactly 0."""
    values = torch.cat([torch.linspace(-3, 3, 241), torch.tensor([0.1, 0.3, 1 / 3, 2 / 3, 1e-3, 123.456, -7.77])])
    for n in range(2, 17):
        informative = (torch.arange(n) == 0).float()[None]  # one of n correct: no sample at the mean
        r = torch.cat([values[:, None].expand(-1, n), informative])
        adv = ADVANTAGES[name](r)
        assert torch.equal(adv[:-1], torch.zeros_like(adv[:-1])), n
        assert (adv[-1] != 0).all()
    # reinforce_pp with n = 1 (the original form, batch baseline): a batch of equal rewards is 0
    assert torch.equal(reinforce_pp(torch.full((8, 1), 1.2)), torch.zeros(8, 1))


def test_only_exactly_equal_groups_are_zeroed():
    # one reward d = 1e-3 above the others: a real difference, which GRPO scales up to O(1) as its
    # formula does: mean 1.2 + d/8, centred +7d/8 and -d/8, std (n-1) = d/sqrt(8) -> 7 sqrt(8) / 8
    r = torch.full((1, 8), 1.2)
    r[0, 0] = 1.201
    adv = ADVANTAGES["grpo"](r, eps=0.0)
    assert adv[0, 0].item() == pytest.approx(7 / 8 * 8**0.5, rel=1e-3) and (adv[0, 1:] < 0).all()


# ---- 4. the ratio's safety cap ----


def _loss_and_grad(log_ratio: float, adv: float, clip_low=0.2, clip_high=0.2, clip_c=0.0):
    lp = torch.tensor([[log_ratio]], requires_grad=True)
    loss, st = clipped_policy_loss(lp, torch.zeros(1, 1), torch.tensor([[adv]]), clip_low, clip_high, clip_c)
    loss.sum().backward()
    return loss.item(), lp.grad.item(), st


def test_small_ratio_keeps_its_gradient_for_positive_advantage():
    # A = 1, r = 0.05 (below the former clamp 1/ratio_max = 0.1): L = max(-0.05, -0.8) = -0.05,
    # dL/dlogp = -A r = -0.05, as TRL and verl (the clamp gave -0.10 with gradient 0)
    loss, grad, _ = _loss_and_grad(math.log(0.05), 1.0)
    assert loss == pytest.approx(-0.05) and grad == pytest.approx(-0.05)
    # A = 2: scaled by A
    loss, grad, _ = _loss_and_grad(math.log(0.05), 2.0)
    assert loss == pytest.approx(-0.1) and grad == pytest.approx(-0.1)


def test_large_ratio_negative_advantage_is_bounded_only_by_the_dual_clip():
    # A = -1, r = 20: PPO's L = max(20, 1.2) = 20 with gradient 20 (the former clamp at 10 gave 10, 0)
    loss, grad, st = _loss_and_grad(math.log(20.0), -1.0)
    assert loss == pytest.approx(20.0) and grad == pytest.approx(20.0) and st["dual_clipped"].item() == 0
    # with the dual clip c = 10: held at -A c = 10, no gradient, counted as dual-clipped
    loss, grad, st = _loss_and_grad(math.log(20.0), -1.0, clip_c=10.0)
    assert loss == pytest.approx(10.0) and grad == 0.0 and st["dual_clipped"].item() == 1


def test_overflow_cap_keeps_everything_finite():
    # log-ratio 1000 would make r = inf: A = 0 -> 0 * inf = NaN without the cap; capped at e^20
    loss, grad, _ = _loss_and_grad(1000.0, 0.0)
    assert loss == 0.0 and grad == 0.0
    loss, grad, _ = _loss_and_grad(1000.0, -1.0)
    assert loss == pytest.approx(math.exp(LOG_RATIO_CAP), rel=1e-5) and grad == 0.0
    loss, grad, _ = _loss_and_grad(1000.0, 1.0)  # A > 0 far above 1 + clip_high: the PPO clip's flat value
    assert loss == pytest.approx(-1.2) and grad == 0.0
    loss, grad, _ = _loss_and_grad(-1000.0, 1.0)  # r underflows to 0: L = -A r = 0, gradient 0
    assert loss == 0.0 and grad == 0.0


@pytest.mark.parametrize("clip", [(0.2, 0.2, 0.0), (0.2, 0.28, 0.0), (1.0, 1.0, 0.0), (0.2, 0.2, 3.0)],
                         ids=["ppo", "clip_higher", "clip_cov_range", "dual_clip"])
def test_gradient_equals_the_unclamped_ppo_objective(clip):
    """Over log-ratios -12..12 and advantages of both signs, value and gradient equal the PPO
    objective written without any clamp (in float64)."""
    clip_low, clip_high, clip_c = clip
    x = torch.linspace(-12, 12, 241, dtype=torch.float64)
    for a in (-2.0, -0.5, 0.5, 2.0):
        adv = torch.full_like(x, a)
        lp = x.clone().float().requires_grad_(True)
        loss, _ = clipped_policy_loss(lp[None], torch.zeros(1, x.numel()), adv.float()[None], clip_low, clip_high, clip_c)
        loss.sum().backward()
        ref_x = x.clone().requires_grad_(True)
        r = torch.exp(ref_x)
        ref = torch.maximum(-adv * r, -adv * r.clamp(1 - clip_low, 1 + clip_high))
        if clip_c > 1:
            ref = torch.where(adv < 0, torch.minimum(ref, -adv * clip_c), ref)
        ref.sum().backward()
        assert torch.allclose(loss.double()[0], ref.detach(), rtol=1e-5, atol=1e-6), a
        assert torch.allclose(lp.grad.double(), ref_x.grad, rtol=1e-4, atol=1e-6), a
