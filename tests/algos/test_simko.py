"""SimKO (arXiv 2510.14807, skyexp.algos.simko) against hand-computed values and gradients: the
high-entropy quantile (a token exactly at it is not above), the top-K boost on correct rows, the
top-1 penalty on wrong ones, tokens exactly at and past the clip bounds, all-correct and
all-wrong groups (A = 0), masked tokens, alpha = 0 and lambda = 1 as PPO, the chunked head's
top-K gradient, and the config's preset and checks."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import ROOT
from hydra import compose, initialize_config_dir

from skyexp.__main__ import register_schema
from skyexp.algos.losses import clipped_policy_loss
from skyexp.algos.seq_losses import POLICY_LOSSES, loss_metrics
from skyexp.algos.simko import row_quantile, simko_loss
from skyexp.config import ConfigError, to_typed
from skyexp.config.algorithm import build_algorithm
from skyexp.model.head import chunked_topk_stats, plain_token_stats, plain_topk

D = torch.float64
# one row of five tokens; tau 0.5: sorted 0.1 0.2 0.5 0.8 0.9, the quantile is 0.5, so tokens 1
# (0.9) and 3 (0.8) are high-entropy and token 2 (exactly 0.5) is not
ENT = torch.tensor([[0.1, 0.9, 0.5, 0.8, 0.2]], dtype=D)
TOP1 = torch.tensor([[True, False, True, True, False]])
KW = dict(clip_low=0.25, clip_high=0.25, simko_alpha=0.1, simko_lambda=1.1, simko_tau=0.5)


def compose_cfg(overrides):
    register_schema()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _run(ratios, adv, mask=None, ent=ENT, top1=TOP1, **kw):
    """(loss [T], d sum(masked loss) / d logp [T], d ... / d topk_logp [T, K=2], stats)."""
    r = torch.tensor([ratios], dtype=D)
    logp = torch.log(r).requires_grad_(True)
    top = torch.log(torch.tensor([[[0.5, 0.2]] * r.shape[1]], dtype=D)).requires_grad_(True)
    m = torch.ones_like(r) if mask is None else torch.tensor([mask], dtype=D)
    a = torch.full_like(r, adv) if isinstance(adv, float) else torch.tensor([adv], dtype=D)
    loss, st = simko_loss(
        logp, torch.zeros_like(r), a, m, topk_logp=top, top1=top1, entropy=ent, **{**KW, **kw}
    )
    (loss * m).sum().backward()
    return loss.detach()[0], logp.grad[0], top.grad[0], st


def test_row_quantile_is_torchs_over_the_masked_tokens():
    torch.manual_seed(0)
    x = torch.rand(4, 7, dtype=D)
    mask = (torch.rand(4, 7) > 0.3).to(D)
    mask[0] = 1.0
    mask[3] = 0.0
    for q in (0.0, 0.5, 0.8, 1.0):
        got = row_quantile(x, mask, q)
        for i in range(3):
            want = torch.quantile(x[i][mask[i].bool()], q)
            assert got[i, 0].item() == pytest.approx(want.item())
        assert math.isinf(got[3, 0].item())  # a row without tokens: nothing lies above


def test_correct_row_spreads_a_share_alpha_over_the_top_k_at_high_entropy_tokens():
    loss, g, gt, st = _run([1.0] * 5, 1.0)
    assert loss.tolist() == pytest.approx([-1.0] * 5)  # rho's value is r
    # d/dlogp: -A r (1 - alpha w); d/dlogp(c_k): -A r alpha w / K = -0.05 on tokens 1 and 3
    assert g.tolist() == pytest.approx([-1.0, -0.9, -1.0, -0.9, -1.0])
    assert gt.flatten().tolist() == pytest.approx([0, 0, -0.05, -0.05, 0, 0, -0.05, -0.05, 0, 0])
    assert st["loss/simko_boosted"][0].tolist() == [0, 1, 0, 1, 0]
    assert st["loss/simko_penalised"].sum() == 0


def test_wrong_row_penalises_the_top1_at_high_entropy_tokens():
    # high-entropy tokens 1, 3; top-1 at 0, 2, 3: only token 3 gets lambda A
    loss, g, gt, st = _run([1.0] * 5, -1.0)
    assert loss.tolist() == pytest.approx([1.0, 1.0, 1.0, 1.1, 1.0])
    assert g.tolist() == pytest.approx([1.0, 1.0, 1.0, 1.1, 1.0])
    assert (gt == 0).all()  # no boost on a wrong answer
    assert st["loss/simko_penalised"][0].tolist() == [0, 0, 0, 1, 0]


def test_tokens_at_and_past_the_clip_bounds():
    # correct, token 1 high-entropy: r = 1.25 exactly at 1 + clip_high keeps its gradient,
    # r = 1.5 past it has none (PPO's clip on rho); wrong, token 3 penalised: r = 0.75 at
    # 1 - clip_low keeps -lambda A r, r = 0.5 past it none
    _, g, gt, st = _run([1.0, 1.25, 1.0, 1.0, 1.0], 1.0)
    assert g[1].item() == pytest.approx(-0.9 * 1.25) and gt[1].tolist() == pytest.approx(
        [-0.05 * 1.25] * 2
    )
    loss, g, gt, st = _run([1.0, 1.5, 1.0, 1.0, 1.0], 1.0)
    assert loss[1].item() == pytest.approx(-1.25) and g[1] == 0 and (gt[1] == 0).all()
    assert st["clipped_high"][0].tolist() == [0, 1, 0, 0, 0]
    _, g, _, _ = _run([1.0, 1.0, 1.0, 0.75, 1.0], -1.0)
    assert g[3].item() == pytest.approx(1.1 * 0.75)
    loss, g, _, st = _run([1.0, 1.0, 1.0, 0.5, 1.0], -1.0)
    assert loss[3].item() == pytest.approx(1.1 * 0.75) and g[3] == 0
    assert st["clipped_low"][0].tolist() == [0, 0, 0, 1, 0]


def test_all_correct_and_all_wrong_groups_have_no_gradient():
    # a group baseline gives every sample of a single-outcome group A = 0
    loss, g, gt, st = _run([1.3, 0.7, 1.0, 1.0, 1.0], 0.0)
    assert (loss == 0).all() and (g == 0).all() and (gt == 0).all()
    assert st["loss/simko_boosted"].sum() == 0 and st["loss/simko_penalised"].sum() == 0


def test_masked_tokens_change_nothing_not_even_the_quantile():
    # a sixth token, masked, with extreme entropy: the quantile and every gradient stay the same
    ent = torch.cat([ENT, torch.tensor([[50.0]], dtype=D)], 1)
    top1 = torch.cat([TOP1, torch.tensor([[True]])], 1)
    _, g, gt, st = _run([1.0] * 6, [1.0] * 5 + [7.0], mask=[1, 1, 1, 1, 1, 0], ent=ent, top1=top1)
    assert g[:5].tolist() == pytest.approx([-1.0, -0.9, -1.0, -0.9, -1.0]) and g[5] == 0
    assert (gt[5] == 0).all() and st["loss/simko_boosted"][0, 5] == 0


def test_alpha_zero_and_lambda_one_is_ppo():
    torch.manual_seed(1)
    lp0 = 0.4 * torch.randn(3, 6, dtype=D)
    old = lp0 + 0.3 * torch.randn(3, 6, dtype=D)
    adv = torch.randn(3, 1, dtype=D).expand(3, 6)
    lp = lp0.clone().requires_grad_(True)
    loss, _ = simko_loss(
        lp,
        old,
        adv,
        torch.ones(3, 6, dtype=D),
        clip_low=0.2,
        clip_high=0.2,
        simko_alpha=0.0,
        simko_lambda=1.0,
        simko_tau=0.5,
        topk_logp=torch.zeros(3, 6, 2, dtype=D),
        top1=torch.ones(3, 6).bool(),
        entropy=torch.rand(3, 6, dtype=D),
    )
    loss.sum().backward()
    lp2 = lp0.clone().requires_grad_(True)
    ppo, _ = clipped_policy_loss(lp2, old, adv, 0.2, 0.2)
    ppo.sum().backward()
    assert torch.allclose(loss, ppo) and torch.allclose(lp.grad, lp2.grad)


def test_chunked_top_k_matches_full_logits_in_value_and_gradient():
    torch.manual_seed(2)
    m, h, v, k = 11, 6, 17, 3
    hid = torch.randn(m, h, dtype=torch.float32, requires_grad=True)
    w = torch.randn(v, h, dtype=torch.float32, requires_grad=True)
    ids = torch.randint(0, v, (m,))
    ids[:4] = (hid.detach() @ w.detach().t() / 0.9).argmax(-1)[:4]  # some samples are the top-1
    cg = torch.randn(m, k, dtype=torch.float32)
    lg, eg = torch.randn(m, dtype=torch.float32), torch.randn(m, dtype=torch.float32)

    def grads(fn):
        hid.grad = w.grad = None
        lp, ent, top, top1 = fn()
        ((lp * lg).sum() + (ent * eg).sum() + (top * cg).sum()).backward()
        return lp.detach(), top.detach(), top1, hid.grad.clone(), w.grad.clone()

    def plain():
        z = torch.log_softmax((hid @ w.t()) / 0.9, -1)
        lp, ent = plain_token_stats(hid, w, None, ids, 0.9, True)
        return (lp, ent, *plain_topk(z, ids, k))

    want = grads(plain)
    for chunk in (4, m):
        got = grads(lambda c=chunk: chunked_topk_stats(hid, w, None, ids, 0.9, c, True, k))
        for a, b in zip(got, want):
            assert torch.allclose(a, b, atol=1e-5) if a.is_floating_point() else torch.equal(a, b)
    assert want[2][:4].all()


def test_metrics_preset_registry_and_checks_name_the_keys():
    _, _, _, st = _run([1.0] * 5, [1.0, 1.0, -1.0, -1.0, 1.0])
    sums = {k: float(v.sum()) for k, v in st.items() if k.startswith("loss/")}
    assert loss_metrics(sums, 5.0) == {
        "actor/simko_boost_frac": 0.2,
        "actor/simko_penalty_frac": 0.2,
    }
    assert POLICY_LOSSES["simko"].fn is simko_loss and POLICY_LOSSES["simko"].topk
    c = to_typed(compose_cfg(["algo=simko"]))
    a = c.algo
    assert (a.policy_loss, a.simko_k, a.simko_alpha, a.simko_lambda, a.simko_tau) == (
        "simko",
        3,
        0.01,
        1.1,
        0.8,
    )
    assert build_algorithm(c).topk == 3 and build_algorithm(to_typed(compose_cfg([]))).topk == 0
    for o in (["entropy=adaptive"], ["entropy=aer"], ["algo.loss_agg=seq-mean-token-mean"]):
        build_algorithm(to_typed(compose_cfg(["algo=simko", *o])))
    for bad, key in (
        (["entropy.token_rule=clip_cov"], r"entropy\.token_rule"),  # replaces the surrogate
        (["algo.clip_c=3"], r"algo\.clip_c"),
        (["algo.simko_k=0"], r"algo\.simko_k"),
        (["algo.simko_alpha=1.5"], r"algo\.simko_alpha"),
        (["algo.simko_lambda=0"], r"algo\.simko_lambda"),
        (["algo.simko_tau=1.2"], r"algo\.simko_tau"),
        (["trainer.sp_size=2", "trainer.padding_free=true"], r"trainer\.sp_size"),
    ):
        with pytest.raises(ConfigError, match=key):
            to_typed(compose_cfg(["algo=simko", *bad]))
