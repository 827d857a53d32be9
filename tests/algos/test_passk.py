"""Pass@k advantages (skyexp.algos.passk) against the enumeration of every k-subset of a group,
GSPO / CISPO against hand-computed values, and entropy-shaped advantages."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from skyexp.algos.advantages import ADVANTAGES, grpo, rloo
from skyexp.algos.passk import passk_best, passk_chen, pkpo
from skyexp.algos.seq_losses import cispo_loss, gspo_loss, gspo_token_loss, seq_log_ratio
from skyexp.algos.shaping import entropy_shaped


def brute_chen(r: list[float], k: int) -> list[float]:
    """Chen et al.'s definition written out: every k-subset's reward is its max, normalised by the
    mean and population std over all k-subsets; a sample's advantage is the mean over its
    subsets."""
    subsets = list(itertools.combinations(range(len(r)), k))
    vals = [max(r[i] for i in s) for s in subsets]
    mu = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / len(vals))
    if sd == 0:
        return [0.0] * len(r)
    return [
        sum((v - mu) / sd for s, v in zip(subsets, vals) if i in s) / math.comb(len(r) - 1, k - 1)
        for i in range(len(r))
    ]


def brute_pkpo(r: list[float], k: int) -> list[float]:
    """PKPO's s^(loo-1) times n: n / C(n, k) * sum over k-subsets S holding i of (max_S - max_{S
    minus i})."""
    n = len(r)
    out = []
    for i in range(n):
        tot = 0.0
        for s in itertools.combinations(range(n), k):
            if i in s:
                rest = [r[j] for j in s if j != i]
                tot += max(r[j] for j in s) - (max(rest) if rest else 0.0)
        out.append(n * tot / math.comb(n, k))
    return out


def binary(n: int, c: int, seed: int = 0) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    return [1.0 if i < c else 0.0 for i in torch.randperm(n, generator=g).tolist()]


CASES = [(n, c, k) for n in (2, 4, 5, 8) for c in range(n + 1) for k in range(1, n + 1)]


@pytest.mark.parametrize("n,c,k", CASES)
def test_chen_equals_subset_enumeration(n, c, k):
    r = binary(n, c, seed=n * 31 + c)
    got = passk_chen(torch.tensor([r]), passk_k=k)[0]
    assert torch.allclose(
        got.double(), torch.tensor(brute_chen(r, k), dtype=torch.float64), atol=1e-5
    )


@pytest.mark.parametrize("n,c,k", CASES)
def test_pkpo_equals_subset_enumeration(n, c, k):
    r = binary(n, c, seed=n * 17 + c)
    got = pkpo(torch.tensor([r]), passk_k=k)[0]
    want = brute_pkpo(r, k) if k > 1 else rloo(torch.tensor([r]))[0].tolist()
    assert torch.allclose(got.double(), torch.tensor(want, dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_real_valued_rewards_with_ties_equal_enumeration(k):
    r = [0.3, -1.0, 0.3, 2.5, 0.0, 1.25]
    rows = torch.tensor([r, r[::-1]])
    assert torch.allclose(
        passk_chen(rows, passk_k=k)[0].double(),
        torch.tensor(brute_chen(r, k), dtype=torch.float64),
        atol=1e-5,
    )
    assert torch.allclose(passk_chen(rows, passk_k=k)[1], passk_chen(rows, passk_k=k)[0].flip(0))
    if k > 1:
        assert torch.allclose(
            pkpo(rows, passk_k=k)[0].double(),
            torch.tensor(brute_pkpo(r, k), dtype=torch.float64),
            atol=1e-5,
        )


def test_chen_closed_forms_by_hand():
    """n = 4, c = 1, k = 2: mu = 1 - C(3,2)/C(4,2) = 1/2, sigma = 1/2; A_pos = (1 - 1/2)/(1/2) = 1;
    A_neg = (1 - 1/2 - C(2,1)/C(3,1)) / (1/2) = (1/2 - 2/3) * 2 = -1/3."""
    got = passk_chen(torch.tensor([[0.0, 1.0, 0.0, 0.0]]), passk_k=2)
    assert torch.allclose(got, torch.tensor([[-1 / 3, 1.0, -1 / 3, -1 / 3]]))


def test_pkpo_binary_closed_form_by_hand():
    """n = 4, c = 2, k = 2: a correct sample is the only correct one in C(2,1) = 2 of its C(3,1) = 3
    pairs: A = k * 2/3 = 4/3; a wrong sample never changes a subset's max: 0."""
    got = pkpo(torch.tensor([[1.0, 0.0, 1.0, 0.0]]), passk_k=2)
    assert torch.allclose(got, torch.tensor([[4 / 3, 0.0, 4 / 3, 0.0]]))


def test_k1_is_the_plain_estimator():
    torch.manual_seed(0)
    r = (torch.rand(6, 8) > 0.5).float()
    pop = (r - r.mean(-1, keepdim=True)) / r.std(-1, keepdim=True, unbiased=False)
    assert torch.allclose(
        passk_chen(r, passk_k=1), torch.nan_to_num(pop, nan=0.0), atol=1e-6
    )  # GRPO, population std
    assert torch.allclose(
        passk_chen(r, passk_k=1),
        grpo(r, norm_by_std=True, adv_eps=1e-6)
        * r.std(-1, keepdim=True)
        / r.std(-1, keepdim=True, unbiased=False).clamp(min=1e-12),
        atol=1e-4,
    )
    assert torch.equal(pkpo(r, passk_k=1), rloo(r))


def test_equal_groups_and_saturated_groups_are_exactly_zero():
    r = torch.tensor(
        [[0.7] * 6, [1.0] * 6, [0.0] * 6, [1, 1, 1, 1, 0, 1.0]]
    )  # last: c = 5 > n - k for k = 2
    for fn in (lambda x: passk_chen(x, passk_k=2), lambda x: pkpo(x, passk_k=3), passk_best):
        out = fn(r)
        assert torch.equal(out[:3], torch.zeros(3, 6))
    assert torch.equal(passk_chen(r, passk_k=2)[3], torch.zeros(6))


def test_best_of_group_by_hand_and_as_pkpo_at_k_equals_n():
    r = torch.tensor([[0.2, 0.9, 0.5, 0.1], [1.0, 0.0, 1.0, 0.0]])
    assert torch.allclose(
        passk_best(r), torch.tensor([[0.0, 0.4, 0.0, 0.0], [0.0] * 4])
    )  # 0.9 - 0.5; a tie: 0
    assert torch.allclose(pkpo(r, passk_k=4), 4 * passk_best(r))


def test_registered_with_k_bound_by_name():
    from conftest import algorithm

    r = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    assert torch.allclose(
        algorithm(advantage="passk_chen", passk_k=2, n=4).advantage(r), passk_chen(r, passk_k=2)
    )
    assert set(ADVANTAGES) >= {"passk_chen", "pkpo", "passk_best"}
    assert torch.allclose(
        algorithm(advantage="grpo", norm_by_std=False).advantage(r),
        grpo(r, norm_by_std=False, adv_eps=1e-6),
    )


# -- GSPO and CISPO ---------------------------------------------------------------------------


def test_gspo_hand_values():
    """Row 0: log-ratios (0.1, 0.3) over two tokens, mean 0.2: s = e^0.2 = 1.2214 > 1 + 0.2, A = 1:
    clipped, L = -1.2 on both tokens. Row 1: one token, log-ratio -0.1: s = 0.9048, A = -2 (inside
    the
    range): L = 2 * 0.9048 = 1.8097; its padding token does not enter the mean."""
    logp = torch.tensor([[0.1, 0.3], [-0.1, 5.0]])
    old = torch.zeros(2, 2)
    adv = torch.tensor([[1.0, 1.0], [-2.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, st = gspo_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.2)
    assert torch.allclose(loss, torch.tensor([[-1.2, -1.2], [1.8097, 1.8097]]), atol=1e-4)
    assert st["clipped_high"][0].tolist() == [1.0, 1.0] and st["clipped_low"].sum() == 0


def test_gspo_gradient_is_the_mean_token_gradient_times_s():
    """grad L_i = -A s_i mean_t grad log pi_t (inside the clip range): d/d logp_t = -A s / |y|."""
    logp = torch.tensor([[0.02, -0.04, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, _ = gspo_loss(
        logp, torch.zeros(1, 3), torch.full((1, 3), 0.5), mask, clip_low=0.2, clip_high=0.2
    )
    (loss[:, 0]).sum().backward()
    s = math.exp(-0.01)
    assert torch.allclose(logp.grad, torch.tensor([[-0.5 * s / 2, -0.5 * s / 2, 0.0]]), atol=1e-6)


def test_gspo_token_equals_gspo_with_sequence_advantages():
    """Same value; with the row's loss averaged over its tokens (seq-mean-token-mean) the same
    gradient."""
    torch.manual_seed(1)
    old = torch.randn(3, 5) * 0.1
    mask = torch.tensor([[1.0] * 5, [1.0, 1, 1, 0, 0], [1.0, 0, 0, 0, 0]])
    adv = torch.tensor([1.0, -0.5, 2.0])[:, None].expand(3, 5)
    grads = []
    for fn in (gspo_loss, gspo_token_loss):
        logp = (
            old + 0.05 * torch.randn(3, 5, generator=torch.Generator().manual_seed(2))
        ).requires_grad_(True)
        loss, _ = fn(logp, old, adv, mask, clip_low=0.2, clip_high=0.2)
        ((loss * mask).sum(-1) / mask.sum(-1)).sum().backward()
        grads.append((loss.detach(), logp.grad))
    assert torch.allclose(grads[0][0], grads[1][0]) and torch.allclose(
        grads[0][1], grads[1][1], atol=1e-6
    )


def test_cispo_hand_values_and_gradient():
    """r = (e^0.5, e^-0.5, 1) = (1.6487, 0.6065, 1), range [0, 1.28] (clip_low 1, clip_high 0.28),
    A = (1, -1, 2): weights (1.28, 0.6065, 1). The reported value is the paper's objective
    -A w log pi (verl's and TRL's actor/pg_loss): log pi = (0.5, -0.5, 0) -> (-0.64, -0.3033, 0).
    Every gradient is -A w (the clipped first token keeps its gradient, unlike PPO's)."""
    logp = torch.tensor([[0.5, -0.5, 0.0]], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    loss, st = cispo_loss(
        logp, torch.zeros(1, 3), adv, torch.ones(1, 3), clip_low=1.0, clip_high=0.28
    )
    w = torch.tensor([[1.28, math.exp(-0.5), 1.0]])
    assert torch.allclose(loss, torch.tensor([[-0.64, -0.5 * math.exp(-0.5), 0.0]]), atol=1e-6)
    loss.sum().backward()
    assert torch.allclose(logp.grad, -adv * w, atol=1e-5)
    assert st["clipped_high"].tolist() == [[1.0, 0.0, 0.0]]


def test_cispo_gradient_is_bit_identical_to_the_ratio_form():
    """Issue 25 changed the reported value only: -A sg(w) log pi has the gradient of the former
    -A sg(w) pi / sg(pi), bit for bit (random logits through a log-softmax, 3 x 7 tokens)."""
    g = torch.Generator().manual_seed(0)
    logits, old = torch.randn(3, 7, 5, generator=g), torch.randn(3, 7, generator=g) * 0.3 - 1.5
    adv, ids = torch.randn(3, 7, generator=g), torch.randint(0, 5, (3, 7), generator=g)
    grads = []
    for form in ("objective", "ratio"):
        z = logits.clone().requires_grad_(True)
        logp = z.log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)
        if form == "objective":
            loss, _ = cispo_loss(logp, old, adv, torch.ones(3, 7), clip_low=1.0, clip_high=0.28)
        else:
            w = torch.exp(logp - old).detach().clamp(0.0, 1.28)
            loss = -adv * w * torch.exp(logp - logp.detach())
        loss.sum().backward()
        grads.append(z.grad)
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("fn", [gspo_loss, gspo_token_loss])
@pytest.mark.parametrize("log_s,adv", [(math.log(20.0), -1.0), (math.log(0.05), 1.0)])
def test_gspo_unclipped_branch_keeps_the_papers_gradient(fn, log_s, adv):
    """s = 20 with A < 0 and s = 0.05 with A > 0 lie on PPO-style max's unclipped branch:
    L = -A s, gradient -A s / |y| on each token. The former clamp of the mean log-ratio to +-log 10
    made both gradients 0 (issue 25)."""
    logp = torch.tensor([[log_s - 0.1, log_s + 0.1, 7.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, _ = fn(
        logp, torch.zeros(1, 3), torch.full((1, 3), adv), mask, clip_low=3e-4, clip_high=4e-4
    )
    s = math.exp(log_s)
    assert loss[0, 0].item() == pytest.approx(-adv * s, rel=1e-5)
    ((loss * mask).sum(-1) / mask.sum(-1)).sum().backward()  # seq-mean-token-mean
    assert torch.allclose(logp.grad, torch.tensor([[-adv * s / 2, -adv * s / 2, 0.0]]), rtol=1e-5)


def test_gspo_ratio_capped_only_above_at_e20():
    """A mean log-ratio of 30 is capped at 20 (exp stays finite; verl caps at 10); -30 is not
    capped (exp underflows harmlessly)."""
    mask = torch.ones(2, 1)
    ratio = seq_log_ratio(torch.tensor([[30.0], [-30.0]]), torch.zeros(2, 1), mask)
    assert ratio.tolist() == [[20.0], [-30.0]]
    loss, _ = gspo_loss(
        torch.tensor([[30.0]]),
        torch.zeros(1, 1),
        torch.full((1, 1), -1.0),
        torch.ones(1, 1),
        clip_low=0.2,
        clip_high=0.2,
    )
    assert torch.isfinite(loss).all() and loss.item() == pytest.approx(math.exp(20.0), rel=1e-5)


# -- entropy-shaped advantages ----------------------------------------------------------------


def test_entropy_shaped_hand_values():
    """alpha 0.4, kappa 2. A = 1, H = (0.5, 3): min(0.2, 0.5) = 0.2, min(1.2, 0.5) = 0.5 -> 1.2,
    1.5.
    A = -1, H = (0.5, 3): -1 + 0.2 = -0.8, -1 + 0.5 = -0.5. A = 0 stays 0; padding is 0."""
    adv = torch.tensor([1.0, -1.0, 0.0])
    ent = torch.tensor([[0.5, 3.0], [0.5, 3.0], [2.0, 2.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    out = entropy_shaped(adv, ent, mask, adv_alpha=0.4, adv_kappa=2.0)
    assert torch.allclose(out, torch.tensor([[1.2, 1.5], [-0.8, -0.5], [0.0, 0.0]]))
    assert not out.requires_grad
