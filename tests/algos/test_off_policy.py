"""Decoupled PPO (arXiv 2505.24298, skyexp.algos.off_policy) by hand, through the objective a run
uses: the weights bound by build_algorithm, the spec LossSpec.of gives, objective().

Two rows of five tokens. pi_prox's log-prob is 0 on every token, so u = pi_theta / pi_prox is
exp(logp) and logp = log u is the leaf; pi_behav's log-prob is -log w, so w = pi_prox / pi_behav.
Clip 0.25 on both sides (bounds 0.75 and 1.25, exact in binary, as are every u and w below), cap
C = 4. Per token L = w max(-A u, -A clip(u, 0.75, 1.25)), dL/dlogp = w (-A u) on the unclipped
branch, 0 on the clipped one, and w = 0 above the cap.

    row 0, A = +1            u      w    L                              dL/dlogp
      inside                 1.0    2    2 * -1     = -2                 -2
      at the upper bound     1.25   0.5  0.5 * -1.25 = -0.625            -0.625 (-A u: PPO's side)
      beyond it (clipped)    1.5    1    -1.25                            0
      below, A > 0 (kept)    0.5    4    4 * -0.5   = -2  (w at the cap) -2
      cap exceeded           1.0    8    0          (dropped)             0
    row 1, A = -2
      at the lower bound     0.75   1    max(1.5, 1.5)  = 1.5             1.5
      beyond it (clipped)    0.5    2    2 * max(1, 1.5) = 3              0
      above, A < 0 (kept)    1.5    0.5  0.5 * max(3, 2.5) = 1.5          1.5
      inside                 1.1    1    2.2                              2.2
      masked                 3.0    100  (A = 100 there: changes nothing) 0

    sum of L: row 0 -5.875, row 1 8.2, all 2.325 over 9 trained tokens (the dropped one counts)
"""

from __future__ import annotations

import math

import pytest
import torch

from skyexp.algos.losses import Normalisers
from skyexp.algos.off_policy import (
    OFF_POLICY,
    OffPolicyEntry,
    decoupled_weight_sums,
    decoupled_weights,
)
from skyexp.config import AlgoConfig, Config
from skyexp.config.algorithm import build_algorithm
from skyexp.rl.objective import LossSpec, TokenInputs, objective

F64 = dict(dtype=torch.float64)
U = torch.tensor([[1.0, 1.25, 1.5, 0.5, 1.0], [0.75, 0.5, 1.5, 1.1, 3.0]], **F64)
W = torch.tensor([[2.0, 0.5, 1.0, 4.0, 8.0], [1.0, 2.0, 0.5, 1.0, 100.0]], **F64)
ADV = torch.tensor([[1.0] * 5, [-2.0, -2.0, -2.0, -2.0, 100.0]], **F64)
MASK = torch.tensor([[1.0] * 5, [1.0, 1.0, 1.0, 1.0, 0.0]], **F64)
NORM = Normalisers(num_tokens=9, num_seqs=2, max_len=5)


def decoupled(**algo):
    """The run's Algorithm for algo.off_policy=decoupled (clip 0.25, cap 4 unless given)."""
    kw = (
        dict(
            off_policy="decoupled",
            old_logprobs="recompute",
            clip_low=0.25,
            clip_high=0.25,
            off_policy_cap=4.0,
        )
        | algo
    )
    return build_algorithm(Config(algo=AlgoConfig(**kw)))


def run(alg, u=U, w=W, adv=ADV, mask=MASK, norm=NORM):
    """(loss, sums, d loss / d logp, weights) as an RL step computes them: the weights from
    pi_prox and pi_behav (skyexp.rl.view), the objective with pi_prox as the old policy."""
    logp = u.log().requires_grad_(True)
    prox = torch.zeros_like(u)
    behav = -w.log()
    weights = alg.is_weights(prox, behav, mask)
    x = TokenInputs(logp, prox, adv, mask, is_weights=weights)
    loss, sums = objective(x, norm, LossSpec.of(alg, 0.0))
    loss.backward()
    return loss, sums, logp.grad, weights


def test_weights_by_hand_the_cap_drops_and_exactly_at_it_keeps():
    prox, behav = torch.zeros_like(W), -W.log()
    w = decoupled_weights(prox, behav, MASK, off_policy_cap=4.0)
    want = torch.tensor([[2.0, 0.5, 1.0, 4.0, 0.0], [1.0, 2.0, 0.5, 1.0, 0.0]], **F64)
    torch.testing.assert_close(w, want, rtol=0, atol=0)
    # a weight that would overflow float32 (e^500) is dropped, never inf or NaN
    big = decoupled_weights(
        torch.tensor([[500.0, 0.0]]), torch.zeros(1, 2), torch.ones(1, 2), off_policy_cap=5.0
    )
    assert big.tolist() == [[0.0, 1.0]]
    sums = decoupled_weight_sums(w, prox, behav, MASK, off_policy_cap=4.0)
    # mean weight 12 / 9 (the dropped token as 0), one of 9 trained tokens over the cap
    assert sums == {
        "actor/off_policy_weight_mean": (12.0, 9.0),
        "actor/off_policy_capped_frac": (1.0, 9.0),
    }


def test_loss_and_gradient_by_hand():
    loss, sums, grad, _ = run(decoupled())
    assert loss.item() == pytest.approx(2.325 / 9)
    assert sums["pg"].item() == pytest.approx(2.325)
    assert sums["tokens"].item() == 9
    assert sums["clipped_high"].item() == 1 and sums["clipped_low"].item() == 1  # not the bounds
    want = torch.tensor([[-2.0, -0.625, 0.0, -2.0, 0.0], [1.5, 0.0, 1.5, 2.2, 0.0]], **F64) / 9
    torch.testing.assert_close(grad, want)


def test_the_dual_clip_bounds_the_surrogate_before_the_weight():
    # u = 4, A = -2, clip_c = 3: PPO's max(8, 2.5) = 8 is bounded by -A c = 6, then w = 0.5: 3;
    # the dual-clipped token has no gradient
    u, w = torch.tensor([[4.0]], **F64), torch.tensor([[0.5]], **F64)
    adv, mask = torch.tensor([[-2.0]], **F64), torch.ones(1, 1, **F64)
    loss, sums, grad, _ = run(decoupled(clip_c=3.0), u, w, adv, mask, Normalisers(1, 1, 1))
    assert loss.item() == pytest.approx(3.0) and sums["dual_clipped"].item() == 1
    assert grad.item() == 0.0


def test_prox_equal_to_behaviour_is_plain_ppo_bit_for_bit():
    """The weight is exp(0) = 1 exactly: the loss, the sums and the gradient are PPO's."""
    torch.manual_seed(0)
    logp0 = torch.randn(4, 7, **F64) * 0.3
    prox = logp0 + 0.3 * torch.randn(4, 7, **F64)
    adv = torch.randn(4, 1, **F64).expand(4, 7)
    mask = (torch.rand(4, 7) > 0.2).to(torch.float64)
    norm = Normalisers(float(mask.sum()), 4, 7)
    out = []
    for alg, w in (
        (decoupled(clip_c=3.0), True),
        (
            build_algorithm(Config(algo=AlgoConfig(clip_low=0.25, clip_high=0.25, clip_c=3.0))),
            False,
        ),
    ):
        logp = logp0.clone().requires_grad_(True)
        weights = alg.is_weights(prox, prox, mask) if w else None
        loss, sums = objective(
            TokenInputs(logp, prox, adv, mask, is_weights=weights), norm, LossSpec.of(alg, 0.0)
        )
        loss.backward()
        out.append((loss.detach(), sums, logp.grad))
    (l_dec, s_dec, g_dec), (l_ppo, s_ppo, g_ppo) = out
    assert torch.equal(l_dec, l_ppo) and torch.equal(g_dec, g_ppo)
    assert all(torch.equal(s_dec[k], s_ppo[k]) for k in s_ppo)
    assert (g_ppo != 0).any()


def test_registry_flags_and_binding():
    assert OFF_POLICY["auto"] == OffPolicyEntry()  # no weight of its own, no constraint
    alg = decoupled(off_policy_cap=6.0)
    assert alg.off_policy is OFF_POLICY["decoupled"] and alg.recompute_old
    assert alg.is_weights.func is decoupled_weights
    assert alg.is_weights.keywords == {"off_policy_cap": 6.0}
    assert math.isclose(AlgoConfig().off_policy_cap, 5.0) and AlgoConfig().off_policy == "auto"
