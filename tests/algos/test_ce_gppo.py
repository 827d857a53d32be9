"""CE-GPPO (arXiv 2509.20712, skyexp.algos.seq_losses.ce_gppo_loss) against hand-computed values
and gradients: the four clip regions, tokens exactly at the bounds, masked tokens, beta = 0 as
PPO's gradient, and the config's preset and checks."""

from __future__ import annotations

import pytest
import torch
from conftest import ROOT
from hydra import compose, initialize_config_dir

from skyexp.__main__ import register_schema
from skyexp.algos.losses import AGGREGATIONS, Normalisers, clipped_policy_loss
from skyexp.algos.seq_losses import POLICY_LOSSES, ce_gppo_loss, loss_metrics
from skyexp.config import ConfigError, to_typed
from skyexp.config.algorithm import build_algorithm

LOW, HIGH = 0.2, 0.28


def compose_cfg(overrides):
    register_schema()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _run(ratios, advs, b1=0.5, b2=1.0, mask=None, agg=None, clip_c=0.0):
    """loss [1, T], its gradient d(sum of the masked loss)/d logp [T], the stats."""
    r = torch.tensor([ratios], dtype=torch.float64)
    old = torch.zeros_like(r)
    logp = torch.log(r).requires_grad_(True)
    adv = torch.tensor([advs], dtype=torch.float64)
    m = torch.ones_like(r) if mask is None else torch.tensor([mask], dtype=torch.float64)
    loss, st = ce_gppo_loss(
        logp, old, adv, m, clip_low=LOW, clip_high=HIGH, clip_c=clip_c, ce_beta1=b1, ce_beta2=b2
    )
    total = (loss * m).sum() if agg is None else agg(loss, m)
    total.backward()
    return loss.detach()[0], logp.grad[0], st


def test_hand_values_and_gradients_in_each_region():
    # (r, A): inside; below with A < 0 (beta1); above with A > 0 (beta2); below with A > 0 and
    # above with A < 0 (PPO's unclipped side: -A r); A = 0
    ratios = [1.1, 0.5, 2.0, 0.5, 2.0, 3.0]
    advs = [2.0, -1.0, 1.5, 1.0, -1.0, 0.0]
    loss, grad, st = _run(ratios, advs, b1=0.5, b2=1.0)
    # values: -A r | -b1 (1 - low) A | -b2 (1 + high) A | -A r | -A r | 0
    want_loss = [-2.2, 0.5 * 0.8 * 1.0, -1.0 * 1.28 * 1.5, -0.5, 2.0, 0.0]
    # gradients wrt log pi: -A r | -b1 (1 - low) A | -b2 (1 + high) A | -A r | -A r | 0
    want_grad = [-2.2, 0.4, -1.92, -0.5, 2.0, 0.0]
    assert loss.tolist() == pytest.approx(want_loss)
    assert grad.tolist() == pytest.approx(want_grad)
    assert st["clipped_low"][0].tolist() == [0, 1, 0, 0, 0, 0]
    assert st["clipped_high"][0].tolist() == [0, 0, 1, 0, 0, 0]
    assert st["loss/ce_gppo_clipped"][0].tolist() == [0, 1, 1, 0, 0, 0]


def test_tokens_exactly_at_the_bounds_are_ppos():
    # r exactly 1 - low (A < 0) and 1 + high (A > 0): the regions are strict, so PPO's surrogate,
    # whose gradient there is -A r = -A (bound), whatever beta
    lo, hi = 1.0 - LOW, 1.0 + HIGH
    for b1, b2 in ((0.0, 0.0), (0.5, 1.0), (3.0, 3.0)):
        loss, grad, st = _run([lo, hi], [-1.0, 2.0], b1=b1, b2=b2)
        assert loss.tolist() == pytest.approx([lo, -2.0 * hi])
        assert grad.tolist() == pytest.approx([lo, -2.0 * hi])
        assert st["clipped_low"].sum() == 0 and st["clipped_high"].sum() == 0
    # just past the bounds the gradient is beta times the same bound value
    eps = 1e-9
    _, grad, _ = _run([lo - eps, hi + eps], [-1.0, 2.0], b1=0.5, b2=3.0)
    assert grad.tolist() == pytest.approx([0.5 * lo, -3.0 * 2.0 * hi])


def test_beta_zero_is_ppos_gradient_and_beta_one_ppos_values():
    torch.manual_seed(0)
    logp0 = torch.randn(4, 9, dtype=torch.float64) * 0.5
    old = logp0 + 0.4 * torch.randn(4, 9, dtype=torch.float64)
    adv = torch.randn(4, 1, dtype=torch.float64).expand(4, 9)
    mask = torch.ones(4, 9, dtype=torch.float64)

    def grads(fn):
        logp = logp0.clone().requires_grad_(True)
        loss, _ = fn(logp)
        loss.sum().backward()
        return loss.detach(), logp.grad

    ppo_l, ppo_g = grads(lambda lp: clipped_policy_loss(lp, old, adv, LOW, HIGH))
    _, g0 = grads(
        lambda lp: ce_gppo_loss(
            lp, old, adv, mask, clip_low=LOW, clip_high=HIGH, clip_c=0.0, ce_beta1=0.0, ce_beta2=0.0
        )
    )
    l1, g1 = grads(
        lambda lp: ce_gppo_loss(
            lp, old, adv, mask, clip_low=LOW, clip_high=HIGH, clip_c=0.0, ce_beta1=1.0, ce_beta2=1.0
        )
    )
    assert torch.allclose(g0, ppo_g)
    assert torch.allclose(l1, ppo_l)
    # the restored gradient is nonzero exactly on PPO's clipped tokens
    r = torch.exp(logp0 - old)
    clipped = ((r < 1 - LOW) & (adv < 0)) | ((r > 1 + HIGH) & (adv > 0))
    assert clipped.any() and (ppo_g[clipped] == 0).all() and (g1[clipped] != 0).all()


def test_masked_tokens_get_no_gradient_under_every_aggregation():
    # a masked token in the beta1 region and one in the beta2 region: zero gradient
    norm = Normalisers(num_tokens=2.0, num_seqs=1.0, max_len=4)
    for name, agg in AGGREGATIONS.items():
        _, grad, _ = _run(
            [0.5, 2.0, 0.5, 2.0],
            [-1.0, 1.0, -1.0, 1.0],
            mask=[1, 1, 0, 0],
            agg=lambda loss, m, agg=agg: agg(loss, m, norm),
        )
        assert grad[2:].tolist() == [0.0, 0.0], name
        assert (grad[:2] != 0).all(), name


def test_underflowing_ratio_stays_finite():
    logp = torch.tensor([[-200.0, 0.0]], requires_grad=True)
    old = torch.zeros(1, 2)
    adv = torch.tensor([[-1.0, 1.0]])
    loss, _ = ce_gppo_loss(
        logp,
        old,
        adv,
        torch.ones(1, 2),
        clip_low=LOW,
        clip_high=HIGH,
        clip_c=0.0,
        ce_beta1=0.5,
        ce_beta2=1.0,
    )
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logp.grad).all()
    assert logp.grad[0, 0].item() == pytest.approx(0.5 * (1 - LOW))


def test_dual_clip_as_the_authors_code():
    # c = 3: an A < 0 token at r = 5 (PPO's unclipped side) is bounded at -A c with no gradient;
    # at r = 2 it is not; the beta1 region (r < 0.8, A < 0) lies below -A c and keeps its
    # gradient; A > 0 tokens are never dual-clipped
    loss, grad, st = _run([5.0, 2.0, 0.5, 5.0], [-1.0, -1.0, -1.0, 1.0], clip_c=3.0)
    assert loss.tolist() == pytest.approx([3.0, 2.0, 0.5 * 0.8, -1.0 * 1.28])
    assert grad.tolist() == pytest.approx([0.0, 2.0, 0.4, -1.28])
    assert st["dual_clipped"][0].tolist() == [1, 0, 0, 0]
    # the same tokens without it: -A r
    loss0, grad0, st0 = _run([5.0, 2.0], [-1.0, -1.0], clip_c=0.0)
    assert loss0.tolist() == pytest.approx([5.0, 2.0]) and grad0.tolist() == pytest.approx(
        [5.0, 2.0]
    )
    assert st0["dual_clipped"].sum() == 0


def test_clipfrac_metric():
    _, _, st = _run([0.5, 2.0, 1.0, 1.0], [-1.0, 1.0, 1.0, 1.0])
    sums = {k: float(v.sum()) for k, v in st.items() if k.startswith("loss/")}
    assert loss_metrics(sums, 4.0) == {"actor/ce_gppo_clipfrac": 0.5}


def test_preset_registry_and_checks_name_the_keys():
    assert POLICY_LOSSES["ce_gppo"].fn is ce_gppo_loss
    c = to_typed(compose_cfg(["algo=ce_gppo"]))
    # the values of the authors' 1.5B launch script
    assert (c.algo.policy_loss, c.algo.ce_beta1, c.algo.ce_beta2) == ("ce_gppo", 0.5, 1.0)
    assert (c.algo.clip_low, c.algo.clip_high, c.algo.clip_c) == (0.2, 0.2, 10.0)
    assert (c.algo.advantage, c.algo.filter_groups) == ("grpo", "mixed_accuracy")
    assert (c.algo.batch_size, c.algo.mini_batches) == (32, 8)  # their 128 / 16
    build_algorithm(c)  # binds clip_low, clip_high, ce_beta1, ce_beta2 from algo.*
    # composes with the entropy controller and the aggregations
    for o in (["entropy=adaptive"], ["algo.loss_agg=seq-mean-token-sum-norm"]):
        build_algorithm(to_typed(compose_cfg(["algo=ce_gppo", *o])))
    for bad, key in (
        (["entropy.token_rule=clip_cov"], r"entropy\.token_rule"),  # replaces the surrogate
        (["entropy.token_rule=high_entropy_tokens"], r"entropy\.token_rule"),
        (["algo.clip_c=0.5"], r"algo\.clip_c"),
        (["algo.ce_beta1=-0.1"], r"algo\.ce_beta1"),
        (["algo.ce_beta2=-1"], r"algo\.ce_beta2"),
    ):
        with pytest.raises(ConfigError, match=key):
            to_typed(compose_cfg(["algo=ce_gppo", *bad]))
