"""Regression tests for issue 17, an audit of the RL maths against verl, TRL, OpenRLHF and the papers:
1. KL in the reward + masked truncated rows: every row of a training group gets its log-probs;
2. equal-reward groups get exactly 0 advantage in float32;
3. REINFORCE++ with the KL in the reward is the paper's token-level estimator;
4. the ratio's numerical-safety cap changes no gradient the PPO objective defines.
Expected numbers are computed by hand in the comments (or quoted from the issue)."""

from __future__ import annotations

import pytest
import torch

from skyexp.algos.advantages import ADVANTAGES, reinforce_pp

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
