"""objective() by hand, in torchtune's style: tiny tensors, every expected value worked out in the
comments. Two rows of three tokens; the last token of row 1 is masked and carries extreme values
(advantage 100, ratio 3, entropy 9, log-ratio to the reference 50) that must change nothing.

    ratios r = exp(logp - old_logp)    row 0: 1.5, 0.5, 1.0     A = +1 on every token
                                       row 1: 1.5, 0.5, (3.0)   A = -2 (masked: 100)
    PPO per token, clip 0.2 both sides: L = max(-A r, -A clip(r, 0.8, 1.2))
      row 0: max(-1.5, -1.2) = -1.2 (clip high)   max(-0.5, -0.8) = -0.5   max(-1, -1) = -1
      row 1: max(3.0, 2.4) = 3.0                  max(1.0, 1.6) = 1.6 (clip low)
      sums: row 0 -2.7 over 3 tokens, row 1 4.6 over 2 tokens, all 1.9 over 5 tokens
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import loss_spec

from skyexp.algos.losses import Normalisers
from skyexp.config import AlgoConfig
from skyexp.rl.objective import TokenInputs, objective

MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
RATIO = torch.tensor([[1.5, 0.5, 1.0], [1.5, 0.5, 3.0]], dtype=torch.float64)
ADV = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, 100.0]], dtype=torch.float64)
NORM = Normalisers(num_tokens=5, num_seqs=2, max_len=4)


def spec(entropy_coef: float = 0.0, kl_coef: float = 0.0, **algo):
    """The spec one RL step builds, from config values (the one place that knows how)."""
    return loss_spec(AlgoConfig(**algo), entropy_coef, kl_coef)


def inputs(ratio=RATIO, adv=ADV, mask=MASK, **extra) -> TokenInputs:
    """logp = -1 everywhere (a leaf with gradient); old_logp = logp - log r."""
    logp = torch.full(ratio.shape, -1.0, dtype=torch.float64, requires_grad=True)
    return TokenInputs(
        logp=logp, old_logp=(logp - ratio.log()).detach(), advantages=adv, mask=mask, **extra
    )


def test_token_mean_clips_both_sides():
    x = inputs()
    loss, sums = objective(x, NORM, spec(clip_low=0.2, clip_high=0.2, loss_agg="token-mean"))
    assert loss.item() == pytest.approx(1.9 / 5)  # 0.38
    assert sums["pg"].item() == pytest.approx(1.9)
    assert sums["clipped_high"].item() == 1  # row 0 token 0: r = 1.5 > 1.2 with A > 0
    assert sums["clipped_low"].item() == 1  # row 1 token 1: r = 0.5 < 0.8 with A < 0
    assert sums["dual_clipped"].item() == 0 and sums["tokens"].item() == 5
    # k1 KL(old || new) = sum of old - new = -sum log r = -2 (ln 1.5 + ln 0.5) = -2 ln 0.75
    assert sums["approx_kl"].item() == pytest.approx(-2 * math.log(0.75))
    loss.backward()
    # d/dlogp of -A r is -A r where the unclipped branch is active, 0 where the clip is, / 5 tokens:
    # row 0: 0 (clipped), -0.5 / 5, -1 / 5;  row 1: 3 / 5, 0 (clipped), 0 (masked)
    want = torch.tensor([[0.0, -0.1, -0.2], [0.6, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(x.logp.grad, want)


def test_clip_high_is_its_own_range():
    # clip_high 0.6 (DAPO's clip-higher): row 0 token 0 no longer clips: -1.5 instead of -1.2, and
    # the sum is 1.9 - 0.3 = 1.6
    loss, sums = objective(inputs(), NORM, spec(clip_low=0.2, clip_high=0.6))
    assert loss.item() == pytest.approx(1.6 / 5)
    assert sums["clipped_high"].item() == 0 and sums["clipped_low"].item() == 1


@pytest.mark.parametrize(
    ("agg", "want"),
    [
        ("token-mean", 1.9 / 5),  # all tokens alike: 0.38
        ("seq-mean-token-mean", (-2.7 / 3 + 4.6 / 2) / 2),  # (-0.9 + 2.3) / 2 = 0.7
        ("seq-mean-token-sum", (-2.7 + 4.6) / 2),  # 0.95
        ("seq-mean-token-sum-norm", 1.9 / (2 * 4)),  # Dr.GRPO: / (sequences x max_len) = 0.2375
    ],
)
def test_aggregations(agg, want):
    loss, _ = objective(inputs(), NORM, spec(loss_agg=agg))
    assert loss.item() == pytest.approx(want)


def test_seq_mean_weights_a_short_row_more():
    x = inputs()
    loss, _ = objective(x, NORM, spec(loss_agg="seq-mean-token-mean"))
    loss.backward()
    # each row's tokens share 1/2 of the weight: row 0's token gets 1/(2*3), row 1's 1/(2*2)
    # row 0: 0, -0.5/6, -1/6;  row 1: 3/4, 0, 0
    want = torch.tensor([[0.0, -0.5 / 6, -1 / 6], [0.75, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(x.logp.grad, want)


def test_dual_clip_bounds_negative_advantage_tokens():
    # one row, A = -2, r = 4 and 1.5, dual clip c = 3: -A c = 6
    #   r = 4:   PPO max(8, 2.4) = 8 > 6, so the dual clip makes it 6 (and no gradient)
    #   r = 1.5: max(3.0, 2.4) = 3.0 < 6, untouched (gradient -A r = 3)
    ratio = torch.tensor([[4.0, 1.5]], dtype=torch.float64)
    adv = torch.tensor([[-2.0, -2.0]], dtype=torch.float64)
    x = inputs(ratio, adv, torch.ones(1, 2, dtype=torch.float64))
    loss, sums = objective(x, Normalisers(2, 1, 2), spec(clip_c=3.0))
    assert loss.item() == pytest.approx((6 + 3) / 2)
    assert sums["dual_clipped"].item() == 1 and sums["clipped_low"].item() == 0
    loss.backward()
    torch.testing.assert_close(x.logp.grad, torch.tensor([[0.0, 3 / 2]], dtype=torch.float64))
    # without it the r = 4 token costs 8: (8 + 3) / 2
    loss, sums = objective(
        inputs(ratio, adv, torch.ones(1, 2, dtype=torch.float64)), Normalisers(2, 1, 2), spec()
    )
    assert loss.item() == pytest.approx(11 / 2) and sums["dual_clipped"].item() == 0


def test_entropy_bonus_is_subtracted_with_the_same_aggregation():
    # H: row 0 1, 2, 3; row 1 0.5, 1.5, (9 masked): sum 8 over 5 tokens = 1.6
    # loss = 0.38 - 0.1 * 1.6 = 0.22; dloss/dH = -0.1 / 5 = -0.02 on each trained token
    h = torch.tensor([[1.0, 2.0, 3.0], [0.5, 1.5, 9.0]], dtype=torch.float64, requires_grad=True)
    loss, _ = objective(inputs(entropy=h), NORM, spec(entropy_coef=0.1))
    assert loss.item() == pytest.approx(0.38 - 0.16)
    loss.backward()
    torch.testing.assert_close(h.grad, -0.02 * MASK)


def test_kl_term_k1():
    # logp - ref_logp: row 0 0.1, -0.2, 0.3; row 1 0.4, 0, (50 masked)
    # k1 = the log-ratio: sum 0.6 over 5 tokens = 0.12; loss = 0.38 + 0.5 * 0.12 = 0.44
    log_ratio = torch.tensor([[0.1, -0.2, 0.3], [0.4, 0.0, 50.0]], dtype=torch.float64)
    ref = torch.full_like(log_ratio, -1.0) - log_ratio  # logp is -1
    loss, sums = objective(inputs(ref_logp=ref), NORM, spec(kl_coef=0.5, kl_estimator="k1"))
    assert loss.item() == pytest.approx(0.44)
    assert sums["kl_ref"].item() == pytest.approx(0.6)


def test_kl_term_k3():
    # k3(x) = e^-x - 1 + x: x = ln 2 gives 1/2 - 1 + ln 2 = ln 2 - 1/2 ~ 0.1931; x = 0 gives 0.
    # One trained token of each, A = 0 (no policy loss): loss = kl_coef * (ln 2 - 1/2) / 2
    log_ratio = torch.tensor([[math.log(2), 0.0, 50.0]], dtype=torch.float64)
    mask = torch.tensor(
        [[1.0, 1.0, 0.0]], dtype=torch.float64
    )  # x = 50 is clamped to 20, then masked
    x = inputs(
        torch.ones(1, 3, dtype=torch.float64),
        torch.zeros(1, 3, dtype=torch.float64),
        mask,
        ref_logp=torch.full((1, 3), -1.0, dtype=torch.float64) - log_ratio,
    )
    loss, sums = objective(x, Normalisers(2, 1, 3), spec(kl_coef=0.1, kl_estimator="k3"))
    assert loss.item() == pytest.approx(0.1 * (math.log(2) - 0.5) / 2)
    assert sums["kl_ref"].item() == pytest.approx(math.log(2) - 0.5)
    loss.backward()
    # dk3/dx = 1 - e^-x: 1/2 at x = ln 2, 0 at x = 0; times 0.1 / 2 tokens
    torch.testing.assert_close(x.logp.grad, torch.tensor([[0.025, 0.0, 0.0]], dtype=torch.float64))


def test_no_kl_term_without_a_coefficient():
    # kl_coef 0: the reference is not needed (None) and kl_ref sums to 0
    loss, sums = objective(inputs(), NORM, spec(kl_coef=0.0))
    assert loss.item() == pytest.approx(0.38) and sums["kl_ref"].item() == 0


def test_importance_weights_scale_each_tokens_policy_loss():
    # w: row 0 2, 1, 1; row 1 1, 0.5, (7 masked)
    # row 0: -1.2*2 - 0.5 - 1 = -3.9; row 1: 3.0 + 1.6*0.5 = 3.8; (-3.9 + 3.8) / 5 = -0.02
    w = torch.tensor([[2.0, 1.0, 1.0], [1.0, 0.5, 7.0]], dtype=torch.float64)
    loss, sums = objective(inputs(is_weights=w), NORM, spec())
    assert loss.item() == pytest.approx(-0.1 / 5)
    assert sums["pg"].item() == pytest.approx(-0.1)


def test_masked_tokens_change_nothing():
    # the masked token's advantage, ratio, entropy and reference log-prob set to other values:
    # loss, stats and gradients are the same
    def run(adv_masked, ratio_masked, h_masked, ref_masked):
        adv, ratio = ADV.clone(), RATIO.clone()
        adv[1, 2], ratio[1, 2] = adv_masked, ratio_masked
        h = torch.tensor([[1.0, 2.0, 3.0], [0.5, 1.5, h_masked]], dtype=torch.float64)
        ref = torch.full((2, 3), -1.0, dtype=torch.float64)
        ref[1, 2] = ref_masked
        x = inputs(ratio, adv, entropy=h, ref_logp=ref)
        loss, sums = objective(x, NORM, spec(entropy_coef=0.1, kl_coef=0.5, clip_c=3.0))
        loss.backward()
        return loss.item(), {k: v.item() for k, v in sums.items()}, x.logp.grad

    a, b = run(100.0, 3.0, 9.0, -51.0), run(-7.0, 0.01, 0.0, 3.0)
    assert a[0] == pytest.approx(b[0]) and a[1] == pytest.approx(b[1])
    torch.testing.assert_close(a[2], b[2])
    assert a[2][1, 2] == 0


def test_micro_batches_with_the_mini_batchs_normalisers_sum_to_the_whole():
    # row 0 and row 1 as two micro-batches, each with the mini-batch's NORM: -2.7/5 + 4.6/5 = 0.38
    for agg in ("token-mean", "seq-mean-token-mean"):
        whole, _ = objective(inputs(), NORM, spec(loss_agg=agg))
        parts = [
            objective(
                inputs(RATIO[i : i + 1], ADV[i : i + 1], MASK[i : i + 1]), NORM, spec(loss_agg=agg)
            )[0]
            for i in range(2)
        ]
        assert (parts[0] + parts[1]).item() == pytest.approx(whole.item())
