"""Pure maths of skyexp.algos, against hand-computed values and brute force."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import estimator

from skyexp.algos.advantages import ADVANTAGES, dr_grpo, grpo, reinforce_pp, rloo
from skyexp.algos.entropy import CONTROLLERS, adaptive_bonus, fixed_bonus, no_bonus, token_entropy
from skyexp.algos.filters import FILTERS, accuracy_band, mixed_accuracy, zero_variance
from skyexp.algos.kl import k1, k2, k3
from skyexp.algos.losses import (
    AGGREGATIONS,
    Normalisers,
    clipped_policy_loss,
    seq_mean_token_mean,
    seq_mean_token_sum,
    seq_mean_token_sum_norm,
    token_logprobs,
    token_mean,
)


def test_rloo_hand_values():
    # rewards [1, 0, 0, 1]: A_0 = 1 - (0+0+1)/3 = 2/3 ; A_1 = 0 - (1+0+1)/3 = -2/3
    a = rloo(torch.tensor([[1.0, 0.0, 0.0, 1.0]]))
    assert torch.allclose(a, torch.tensor([[2 / 3, -2 / 3, -2 / 3, 2 / 3]]))


def test_rloo_equals_brute_force_leave_one_out():
    torch.manual_seed(0)
    r = torch.rand(5, 6)
    brute = torch.stack(
        [torch.stack([r[b, i] - (r[b].sum() - r[b, i]) / 5 for i in range(6)]) for b in range(5)]
    )
    assert torch.allclose(rloo(r), brute, atol=1e-6)


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_equal_rewards_give_exactly_zero(name):
    r = torch.tensor([[1.0] * 4, [0.0] * 4, [0.5] * 4])
    assert torch.equal(estimator(name)(r), torch.zeros_like(r))


def test_rloo_rejects_single_sample():
    with pytest.raises(ValueError):
        rloo(torch.ones(3, 1))


def test_grpo_hand_values():
    # rewards [1, 0, 0, 0]: mean 0.25, unbiased std = sqrt((0.5625 + 3*0.0625)/3) = 0.5
    a = grpo(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), norm_by_std=True, adv_eps=0.0)
    assert torch.allclose(a, torch.tensor([[1.5, -0.5, -0.5, -0.5]]))
    assert torch.allclose(
        dr_grpo(torch.tensor([[1.0, 0.0, 0.0, 0.0]])), torch.tensor([[0.75, -0.25, -0.25, -0.25]])
    )


def test_reinforce_pp_hand_values():
    # groups [1, 0] and [1, 1]: centred [0.5, -0.5] and [0, 0]; population std over the 4 values
    # = sqrt((0.25 + 0.25 + 0 + 0) / 4) = sqrt(0.125) = 0.35355 -> A = +-0.5 / 0.35355 = +-1.41421
    a = reinforce_pp(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), adv_eps=0.0)
    assert torch.allclose(a, torch.tensor([[2**0.5, -(2**0.5)], [0.0, 0.0]]), atol=1e-6)
    assert a[1].eq(0).all()  # exactly zero, not ~1e-8
    # batch-level, not group-level: the same group gets a smaller advantage beside a more spread one
    # ([1, 0] beside [3, -3]: std = sqrt((0.25*2 + 9*2)/4) = sqrt(4.625) -> 0.5 / 2.1506 = 0.2325)
    b = reinforce_pp(torch.tensor([[1.0, 0.0], [3.0, -3.0]]), adv_eps=0.0)
    assert b[0, 0].item() == pytest.approx(0.5 / 4.625**0.5, rel=1e-5)
    # n = 1: the original whitening over the batch: [1, 0, 0, 1] -> (r - 0.5) / 0.5
    c = reinforce_pp(torch.tensor([[1.0], [0.0], [0.0], [1.0]]), adv_eps=0.0)
    assert c.flatten().tolist() == [1.0, -1.0, -1.0, 1.0]


def test_advantages_are_zero_mean_per_group_and_rloo_scales_grpo_centring():
    torch.manual_seed(4)
    r = torch.rand(6, 5)
    for name in ("rloo", "grpo", "dr_grpo", "reinforce_pp"):
        assert torch.allclose(estimator(name)(r).sum(-1), torch.zeros(6), atol=1e-5), name
    # RLOO = n/(n-1) * (r - mean): Dr.GRPO's advantage times 5/4
    assert torch.allclose(rloo(r), dr_grpo(r) * 5 / 4, atol=1e-6)


def test_zero_variance_filter():
    keep = zero_variance(torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]), None)
    assert keep.tolist() == [False, True, False]


def test_accuracy_filters():
    correct = torch.tensor(
        [[1.0, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0], [0, 0, 0, 0, 0], [1, 1, 0, 0, 0]]
    )
    # accuracies 1.0, 0.2, 0.8, 0.0, 0.4: PRIME's band [0.2, 0.8] keeps both ends inclusive
    assert accuracy_band(correct, correct, filter_low=0.2, filter_high=0.8).tolist() == [
        False,
        True,
        True,
        False,
        True,
    ]
    assert mixed_accuracy(correct, correct).tolist() == [False, True, True, False, True]
    # shaped rewards: an all-correct group of different lengths has variance (kept by
    # zero_variance) but accuracy 1 (dropped by mixed_accuracy, DAPO's `acc` metric)
    shaped = torch.tensor([[1.0, 0.8], [0.0, 0.0]])
    acc = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert zero_variance(shaped, acc).tolist() == [True, False]
    assert mixed_accuracy(shaped, acc).tolist() == [False, False]
    assert set(FILTERS) == {"none", "zero_variance", "mixed_accuracy", "accuracy_band"}


def test_entropy_uniform_is_log_v_and_one_hot_is_zero():
    v = 37
    assert torch.allclose(
        token_entropy(torch.zeros(3, 4, v)), torch.full((3, 4), math.log(v)), atol=1e-5
    )
    one_hot = torch.full((2, v), -1e4)
    one_hot[:, 5] = 0
    assert torch.allclose(token_entropy(one_hot), torch.zeros(2), atol=1e-5)


def test_entropy_chunked_equals_unchunked_and_temperature():
    torch.manual_seed(1)
    logits = torch.randn(5, 7, 50) * 3
    assert torch.allclose(
        token_entropy(logits, chunk=3), token_entropy(logits, chunk=10_000), atol=1e-6
    )
    p = torch.softmax(logits / 0.5, -1)
    assert torch.allclose(token_entropy(logits, 0.5), -(p * p.log()).sum(-1), atol=1e-5)


def test_token_logprobs_match_log_softmax():
    torch.manual_seed(2)
    logits, ids = torch.randn(3, 4, 11), torch.randint(0, 11, (3, 4))
    ref = torch.log_softmax(logits / 0.7, -1).gather(-1, ids[..., None]).squeeze(-1)
    assert torch.allclose(token_logprobs(logits, ids, 0.7, chunk=5), ref, atol=1e-6)


def test_clipped_loss_hand_values():
    # ratio e^0.5 = 1.6487 with A = +1 -> clipped at 1.2: loss -1.2 ; A = -1 -> max(1.6487, 1.2) =
    # 1.6487
    lp, old = torch.tensor([[0.5, 0.5]]), torch.zeros(1, 2)
    loss, st = clipped_policy_loss(lp, old, torch.tensor([[1.0, -1.0]]), 0.2, 0.2)
    assert torch.allclose(loss, torch.tensor([[-1.2, math.exp(0.5)]]), atol=1e-5)
    assert st["clipped_high"].tolist() == [[1.0, 0.0]]
    # dual clip with c = 1.5 bounds the negative-advantage loss at 1.5
    loss, _ = clipped_policy_loss(lp, old, torch.tensor([[1.0, -1.0]]), 0.2, 0.2, clip_c=1.5)
    assert torch.allclose(loss[0, 1], torch.tensor(1.5))
    # ratio 1: plain -A
    loss, _ = clipped_policy_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.tensor([[2.0]]))
    assert loss.item() == -2.0


def test_clip_higher_and_dual_clip_gradients():
    # DAPO clip-higher: r = 1.25 with A = +1 is inside [0.8, 1.28] -> gradient -A*r = -1.25 per unit
    # log-ratio; with symmetric 0.2 it is clipped at 1.2 -> zero gradient
    for high, grad in ((0.28, -1.25), (0.2, 0.0)):
        lp = torch.tensor([[math.log(1.25)]], requires_grad=True)
        loss, st = clipped_policy_loss(lp, torch.zeros(1, 1), torch.tensor([[1.0]]), 0.2, high)
        loss.sum().backward()
        assert lp.grad.item() == pytest.approx(grad, abs=1e-6)
        assert st["clipped_high"].item() == float(grad == 0.0)
    # A = -1, r = 4: PPO loss max(4, 0.8*... ) = 4; dual clip c = 3 holds it at 3 with zero gradient
    lp = torch.tensor([[math.log(4.0)]], requires_grad=True)
    loss, st = clipped_policy_loss(
        lp, torch.zeros(1, 1), torch.tensor([[-1.0]]), 0.2, 0.2, clip_c=3.0
    )
    loss.sum().backward()
    assert (
        loss.item() == pytest.approx(3.0)
        and lp.grad.item() == 0.0
        and st["dual_clipped"].item() == 1.0
    )
    # r = 0.5 with A = -1: the lower clip holds the loss at 0.8 (clipped_low), no gradient
    lp = torch.tensor([[math.log(0.5)]], requires_grad=True)
    loss, st = clipped_policy_loss(lp, torch.zeros(1, 1), torch.tensor([[-1.0]]), 0.2, 0.2)
    loss.sum().backward()
    assert (
        loss.item() == pytest.approx(0.8)
        and lp.grad.item() == 0.0
        and st["clipped_low"].item() == 1.0
    )
    # approx_kl is the k1 estimate old - new
    assert st["approx_kl"].item() == pytest.approx(-math.log(0.5))


@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
def test_aggregations_are_split_invariant(name):
    torch.manual_seed(3)
    loss, mask = torch.randn(8, 5), (torch.rand(8, 5) > 0.3).float()
    mask[:, 0] = 1
    norm = Normalisers(num_tokens=mask.sum().item(), num_seqs=8.0, max_len=7)
    agg = AGGREGATIONS[name]
    whole = agg(loss, mask, norm)
    parts = sum(agg(loss[i : i + 1], mask[i : i + 1], norm) for i in range(8))
    assert torch.allclose(whole, parts)
    assert set(AGGREGATIONS) == {
        "token-mean",
        "seq-mean-token-mean",
        "seq-mean-token-sum",
        "seq-mean-token-sum-norm",
    }


def test_aggregation_hand_values():
    # two sequences: losses [1, 2, (pad)] and [3, (pad), (pad)]; 3 tokens, 2 sequences, cap 4
    loss = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    norm = Normalisers(num_tokens=3.0, num_seqs=2.0, max_len=4)
    assert token_mean(loss, mask, norm).item() == pytest.approx(2.0)  # (1+2+3)/3
    assert seq_mean_token_mean(loss, mask, norm).item() == pytest.approx(2.25)  # (1.5 + 3)/2
    assert seq_mean_token_sum(loss, mask, norm).item() == pytest.approx(3.0)  # (3 + 3)/2
    assert seq_mean_token_sum_norm(loss, mask, norm).item() == pytest.approx(0.75)  # (3 + 3)/(2*4)


def test_kl_estimators():
    lp, ref = torch.tensor([0.0, -1.0]), torch.tensor([0.0, 0.0])
    assert k1(lp, ref).tolist() == [0.0, -1.0]
    assert k2(lp, ref).tolist() == [0.0, 0.5]
    assert torch.allclose(k3(lp, ref), torch.tensor([0.0, math.e - 2]))  # e^1 - 1 - 1


def test_entropy_controllers():
    assert no_bonus(0.3, 0.1) == (0.3, 0.0)
    assert fixed_bonus(0.3, 0.1) == (0.3, 0.3)
    kw = dict(target=0.2, delta=0.01, coef_min=0.0, coef_max=0.015)
    # below target: step k applies c_k, then c_{k+1} = c_k + delta: in force 0, 0.01, 0.015 (capped)
    coef, forces = 0.0, []
    for _ in range(4):
        coef, in_force = adaptive_bonus(coef, 0.1, **kw)
        forces.append(in_force)
    assert forces == pytest.approx([0.0, 0.01, 0.015, 0.015]) and coef == pytest.approx(0.015)
    coef, in_force = adaptive_bonus(coef, 0.5, **kw)  # above target: no bonus, coefficient shrinks
    assert in_force == 0.0 and coef == pytest.approx(0.005)
    assert adaptive_bonus(0.0, 0.5, **kw)[0] == 0.0  # stays at c_min
    assert adaptive_bonus(0.01, 0.2, **kw) == (
        pytest.approx(0.0),
        0.0,
    )  # at the target: decrease, no bonus


def test_adaptive_controller_tracks_the_target_and_stays_in_bounds():
    """A toy entropy that a bonus raises: H_{k+1} = H_k - 0.01 (collapse) + 40 * alpha_k.
    The controller must hold H near the target, with the coefficient inside [c_min, c_max]."""
    kw = dict(target=0.2, delta=1e-4, coef_min=0.0, coef_max=5e-3)
    h, coef, hs, coefs = 0.4, 0.0, [], []
    for _ in range(2000):
        coef, alpha = adaptive_bonus(coef, h, **kw)
        h = h - 0.01 + 40 * alpha
        hs.append(h)
        coefs.append(coef)
    assert min(coefs) >= 0.0 and max(coefs) <= 5e-3
    tail = hs[-500:]
    assert (
        abs(sum(tail) / len(tail) - 0.2) < 0.05
    )  # without control it would be at 0.4 - 20 = -19.6
    assert max(coefs) > 0  # the bonus switched on


def test_controllers_and_token_rules_are_separate_registries():
    """entropy.controller and entropy.token_rule compose: neither registry lists the other's
    names."""
    from skyexp.algos.token_rules import TOKEN_RULES

    assert set(CONTROLLERS) == {"none", "fixed", "adaptive", "aer"}
    assert set(TOKEN_RULES) == {"none", "clip_cov", "kl_cov", "high_entropy_tokens"}


# ---- token rules: Clip-Cov, KL-Cov, high-entropy tokens ----

from skyexp.algos.token_rules import (  # noqa: E402
    TOKEN_RULES,
    clip_cov_loss,
    clip_cov_select,
    high_entropy_loss,
    high_entropy_select,
    kl_cov_loss,
    kl_cov_select,
    token_covariance,
)


def test_token_covariance_hand_values():
    # A = [1, 1, -1, (pad)], logp = [-1, -3, -2, (pad)]: means 1/3 and -2
    # c = (2/3)(1), (2/3)(-1), (-4/3)(0), 0
    adv = torch.tensor([[1.0, 1.0, -1.0, 5.0]])
    logp = torch.tensor([[-1.0, -3.0, -2.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert torch.allclose(
        token_covariance(adv, logp, mask), torch.tensor([[2 / 3, -2 / 3, 0.0, 0.0]])
    )


def test_kl_cov_selects_the_largest_covariance_tokens():
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    logp = torch.tensor(
        [[-0.1, -3.0, -3.0, -0.2]]
    )  # confident & rewarded, and confident & punished
    mask = torch.ones(1, 4)
    # means: A 0, logp -1.575; c = [1.475, -1.425, 1.425, -1.375]: the top-1 (ratio 0.25) is token 0
    sel = kl_cov_select(adv, logp, None, mask, kl_cov_ratio=0.25)
    assert sel.tolist() == [[True, False, False, False]]
    assert kl_cov_select(adv, logp, None, mask, kl_cov_ratio=0.5).tolist() == [
        [True, False, True, False]
    ]
    assert not kl_cov_select(adv, logp, None, torch.zeros(1, 4), kl_cov_ratio=0.25).any()


def test_kl_cov_loss_penalises_only_selected_tokens_and_does_not_clip():
    # A = +1, logp - old = 0.5 on both tokens (ratio 1.6487, beyond any PPO clip), token 0 selected:
    # L = -1.6487 + 1.0 * 0.5 on token 0, -1.6487 on token 1; gradient wrt logp: -1.6487 + 1,
    # -1.6487
    lp = torch.tensor([[0.5, 0.5]], requires_grad=True)
    sel = torch.tensor([[True, False]])
    loss, st = kl_cov_loss(
        lp, torch.zeros(1, 2), torch.ones(1, 2), sel, ratio_max=10.0, kl_cov_coef=1.0
    )
    r = math.exp(0.5)
    assert torch.allclose(loss, torch.tensor([[-r + 0.5, -r]]), atol=1e-5)
    loss.sum().backward()
    assert torch.allclose(lp.grad, torch.tensor([[-r + 1.0, -r]]), atol=1e-5)
    assert st["clipped_high"].sum() == 0


def test_clip_cov_cuts_random_tokens_inside_the_band():
    torch.manual_seed(0)
    adv = torch.tensor([[2.0] * 50 + [-2.0] * 50])
    logp = torch.cat([torch.linspace(-0.1, -1.0, 50), torch.linspace(-4.0, -5.0, 50)])[None]
    mask = torch.ones(1, 100)
    cov = token_covariance(adv, logp, mask)
    g = torch.Generator().manual_seed(1)
    sel = clip_cov_select(
        adv, logp, None, mask, clip_cov_ratio=0.05, cov_low=1.0, cov_high=5.0, generator=g
    )
    assert int(sel.sum()) == 5  # int(0.05 * 100)
    assert ((cov[sel] > 1.0) & (cov[sel] < 5.0)).all()
    # at least one token is cut even for a tiny ratio; none when no token lies in the band
    assert (
        int(
            clip_cov_select(
                adv, logp, None, mask, clip_cov_ratio=1e-6, cov_low=1.0, cov_high=5.0
            ).sum()
        )
        == 1
    )
    assert (
        int(
            clip_cov_select(
                adv, logp, None, mask, clip_cov_ratio=0.05, cov_low=100.0, cov_high=200.0
            ).sum()
        )
        == 0
    )
    # the selected tokens lose their gradient; the others keep it
    lp = logp.clone().requires_grad_(True)
    loss, _ = clip_cov_loss(lp, logp, adv, sel, clip_low=0.2, clip_high=0.2, clip_c=0.0)
    loss.sum().backward()
    assert (lp.grad[sel] == 0).all() and (lp.grad[~sel] != 0).all()


def test_high_entropy_tokens_keep_the_top_share():
    ent = torch.tensor([[0.1, 2.0, 0.3, 1.5, 0.2], [0.9, 0.0, 9.0, 0.4, 0.5]])
    mask = torch.tensor([[1.0, 1, 1, 1, 1], [1, 1, 0, 1, 1]])  # the 9.0 is padding: never selected
    # 9 valid tokens, top 20% -> ceil(1.8) = 2 tokens: entropies 2.0 and 1.5
    sel = high_entropy_select(None, None, ent, mask, top_ratio=0.2)
    assert sel.tolist() == [[False, True, False, True, False], [False, False, False, False, False]]
    lp = torch.zeros(2, 5, requires_grad=True)
    loss, _ = high_entropy_loss(
        lp, torch.zeros(2, 5), torch.ones(2, 5), sel, clip_low=0.2, clip_high=0.2, clip_c=0.0
    )
    loss.sum().backward()
    assert torch.equal(lp.grad != 0, sel)
    assert (
        TOKEN_RULES["kl_cov"].grads_zero_advantage
        and not TOKEN_RULES["clip_cov"].grads_zero_advantage
    )
