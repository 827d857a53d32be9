"""AER (arXiv 2510.10959, skyexp.algos.entropy.aer_bonus / aer_hard_prompts): the anchored
target, the global coefficient's steps and bounds, the per-prompt allocation at its edges
(all-correct, all-wrong, exactly tau), the bonus's gradient by hand with masked tokens, and the
config's preset and checks."""

from __future__ import annotations

import pytest
import torch
from conftest import ROOT, loss_spec
from hydra import compose, initialize_config_dir

from skyexp.__main__ import register_schema
from skyexp.algos.entropy import CONTROLLERS, PROMPT_WEIGHTS, aer_bonus, aer_hard_prompts
from skyexp.algos.losses import Normalisers
from skyexp.config import AlgoConfig, ConfigError, to_typed
from skyexp.config.algorithm import build_algorithm
from skyexp.rl.objective import TokenInputs, objective
from skyexp.rl.state import Counters

KW = dict(aer_rho=0.5, delta=0.01, coef_min=0.0, coef_max=0.025)


def compose_cfg(overrides):
    register_schema()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_target_is_anchored_at_the_first_entropy():
    # anchor H_0 = 0.4, rho 0.5: target 0.2. Below it the coefficient rises by delta (the step's
    # own coefficient is in force), above it it falls, and it stays in [c_min, c_max]
    coef, forces = 0.0, []
    for _ in range(4):
        coef, f = aer_bonus(coef, 0.1, 0.4, **KW)
        forces.append(f)
    assert forces == pytest.approx([0.0, 0.01, 0.02, 0.025]) and coef == pytest.approx(0.025)
    coef, f = aer_bonus(coef, 0.3, 0.4, **KW)  # above 0.2: falls, in force what it was
    assert (coef, f) == (pytest.approx(0.015), pytest.approx(0.025))
    assert aer_bonus(0.0, 0.3, 0.4, **KW) == (0.0, 0.0)  # stays at c_min
    # exactly at the target: falls (as adaptive's)
    assert aer_bonus(0.01, 0.2, 0.4, **KW)[0] == pytest.approx(0.0)
    # the same entropy is below one anchor's target and above another's
    assert aer_bonus(0.0, 0.15, 0.4, **KW)[0] == pytest.approx(0.01)
    assert aer_bonus(0.01, 0.15, 0.2, **KW)[0] == pytest.approx(0.0)
    # no anchor yet: the target is rho x this step's entropy, which lies above it
    assert aer_bonus(0.01, 0.15, -1.0, **KW)[0] == pytest.approx(0.0)


def test_controller_holds_entropy_in_a_band_below_the_start():
    """Toy dynamics a bonus raises: H_{k+1} = H_k - 0.002 + 0.5 alpha_k. From H_0 = 0.3 the
    entropy falls to the target 0.15 and stays near it, the coefficient inside its bounds."""
    h, h0, coef, hs = 0.3, 0.3, 0.0, []
    kw = dict(aer_rho=0.5, delta=1e-4, coef_min=0.0, coef_max=1e-2)
    for _ in range(3000):
        coef, alpha = aer_bonus(coef, h, h0, **kw)
        assert 0.0 <= alpha <= 1e-2
        h = h - 0.002 + 0.5 * alpha
        hs.append(h)
    tail = hs[-1000:]
    assert abs(sum(tail) / len(tail) - 0.15) < 0.02


def test_hard_prompts_at_the_edges():
    correct = torch.tensor(
        [[1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.float32
    )
    # accuracies 1 (easy), 0 (hard), 0.5 (exactly tau: hard), 0.25 (hard), 0.75 (easy)
    w = aer_hard_prompts(correct, aer_tau=0.5)
    assert w.shape == (20,)
    assert w.view(5, 4)[:, 0].tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    assert (w.view(5, 4) == w.view(5, 4)[:, :1]).all()  # one weight per group
    assert aer_hard_prompts(correct, aer_tau=0.0).view(5, 4)[:, 0].tolist() == [0, 1, 0, 0, 0]
    assert aer_hard_prompts(correct, aer_tau=1.0).sum() == 20  # every prompt


def test_bonus_gradient_by_hand_with_row_weights_and_a_masked_token():
    """Two rows of two tokens, row 0 hard (w 1), row 1 easy (w 0); token (0, 1) masked.
    Policy loss 0 (A = 0, r = 1). token-mean over the 3 trained tokens, coef 0.3:
        loss = -0.3 * (1*H00 + 0*H10 + 0*H11) / 3,   dloss/dH = [[-0.1, 0], [0, 0]]."""
    ent = torch.tensor([[0.7, 9.0], [0.5, 0.2]], dtype=torch.float64, requires_grad=True)
    logp = torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    x = TokenInputs(
        logp,
        logp.detach(),
        torch.zeros(2, 2, dtype=torch.float64),
        mask,
        entropy=ent,
        entropy_rows=torch.tensor([1.0, 0.0], dtype=torch.float64),
    )
    loss, _ = objective(x, Normalisers(3, 2, 2), loss_spec(AlgoConfig(), coef=0.3))
    loss.backward()
    assert loss.item() == pytest.approx(-0.3 * 0.7 / 3)
    assert ent.grad.flatten().tolist() == pytest.approx([-0.1, 0.0, 0.0, 0.0])
    # all rows weighted 1 is the plain bonus
    ent2 = ent.detach().clone().requires_grad_(True)
    x1 = TokenInputs(
        logp,
        logp.detach(),
        torch.zeros(2, 2, dtype=torch.float64),
        mask,
        entropy=ent2,
        entropy_rows=torch.ones(2, dtype=torch.float64),
    )
    x0 = TokenInputs(
        logp, logp.detach(), torch.zeros(2, 2, dtype=torch.float64), mask, entropy=ent2
    )
    spec = loss_spec(AlgoConfig(), coef=0.3)
    l1 = objective(x1, Normalisers(3, 2, 2), spec)[0]
    l0 = objective(x0, Normalisers(3, 2, 2), spec)[0]
    assert l1.item() == pytest.approx(l0.item())


def test_preset_registry_and_checks_name_the_keys():
    assert CONTROLLERS["aer"] is aer_bonus and PROMPT_WEIGHTS["aer"] is aer_hard_prompts
    c = to_typed(compose_cfg(["entropy=aer"]))
    e = c.entropy
    assert (e.controller, e.aer_rho, e.aer_tau, e.coef_max) == ("aer", 0.8, 0.5, 0.01)
    alg = build_algorithm(c)
    assert alg.entropy_rows is not None
    assert alg.entropy_rows(torch.tensor([[1.0, 1.0], [0.0, 1.0]])).tolist() == [0, 0, 1, 1]
    assert alg.controller(0.0, 0.05, 0.1)[0] == pytest.approx(5e-4)  # 0.05 < 0.8 x 0.1
    assert build_algorithm(to_typed(compose_cfg([]))).entropy_rows is None
    # composes with the policy losses and a token rule
    for o in (["algo=ce_gppo"], ["entropy.token_rule=clip_cov"], ["algo=grpo"]):
        build_algorithm(to_typed(compose_cfg(["entropy=aer", *o])))
    for bad, key in (
        (["entropy.aer_rho=0"], r"entropy\.aer_rho"),
        (["entropy.aer_tau=1.5"], r"entropy\.aer_tau"),
        (["entropy.aer_tau=-0.1"], r"entropy\.aer_tau"),
        (["entropy.coef_max=0"], r"entropy\.coef_max"),
        (["entropy.coef_min=0.1"], r"entropy\.coef_min"),
    ):
        with pytest.raises(ConfigError, match=key):
            to_typed(compose_cfg(["entropy=aer", *bad]))


def test_anchor_is_in_the_checkpointed_counters():
    c = Counters(entropy_anchor=0.31)
    from dataclasses import asdict

    assert Counters.of(asdict(c)).entropy_anchor == 0.31
    old = asdict(Counters())
    del old["entropy_anchor"]  # a checkpoint from before the field: not measured yet
    assert Counters.of(old).entropy_anchor == -1.0
