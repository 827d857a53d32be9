"""Every registered advantage estimator in large groups (n = 56 ... 128), against exact rational
arithmetic (fractions) where an exact value exists, with common reward offsets up to 1e7.

Issue 25: passk_chen's variance as E[x^2] - mu^2 cancelled to <= 0 once the share of k-subsets
without a correct sample fell below ~1e-16, and the advantages came out 0 / -inf.
tests/test_passk.py
enumerates every subset, so it stops at n = 8; these cases are the ones enumeration cannot reach.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from conftest import estimator

from skyexp.algos.advantages import ADVANTAGES
from skyexp.algos.passk import passk_best, passk_chen, pkpo


def _sqrt_ratio(num: Fraction, var: Fraction) -> float:
    """num / sqrt(var) as a float, from exact rationals (each rounded once before the sqrt)."""
    return float(num) / math.sqrt(float(var)) if num else 0.0


def comb(a: int, b: int) -> int:
    return math.comb(a, b) if 0 <= b <= a else 0


def exact_chen(r: list[float], k: int) -> list[float]:
    """Chen et al.'s advantages in exact arithmetic, by the sorted-position sums (equal to the
    subset enumeration, tests/test_passk.py): mu and the population variance over the C(n, k)
    subset maxima, a sample's mean over the subsets holding it."""
    n = len(r)
    order = sorted(range(n), key=lambda i: r[i])
    x = [Fraction(r[i]) for i in order]
    total, held_den = math.comb(n, k), math.comb(n - 1, k - 1)
    w = [Fraction(math.comb(j, k - 1), total) for j in range(n)]
    mu = sum(wj * xj for wj, xj in zip(w, x))
    var = sum(wj * (xj - mu) ** 2 for wj, xj in zip(w, x))
    out = [0.0] * n
    for p in range(n):
        s = comb(p, k - 1) * x[p] + sum(comb(j - 1, k - 2) * x[j] for j in range(p + 1, n))
        out[order[p]] = _sqrt_ratio(s / held_den - mu, var) if var else 0.0
    return out


def closed_chen(n: int, c: int, k: int) -> tuple[float, float]:
    """The binary closed forms of passk_chen's docstring (A_pos, A_neg), exact until the sqrt."""
    mu = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    var = mu * (1 - mu)
    pos = 1 - mu
    neg = 1 - mu - Fraction(math.comb(n - c - 1, k - 1), math.comb(n - 1, k - 1))
    return _sqrt_ratio(pos, var), _sqrt_ratio(neg, var)


def exact_pkpo(r: list[float], k: int) -> list[float]:
    """PKPO's n / C(n, k) * sum over k-subsets S holding i of (max_S - max_{S minus i}), exactly:
    by sorted position p, C(p, k-1) x_p - sum_{j < p} C(j, k-2) x_j."""
    n = len(r)
    order = sorted(range(n), key=lambda i: r[i])
    x = [Fraction(r[i]) for i in order]
    out = [0.0] * n
    for p in range(n):
        s = comb(p, k - 1) * x[p] - sum(comb(j, k - 2) * x[j] for j in range(p))
        out[order[p]] = float(n * s / math.comb(n, k))
    return out


def binary(n: int, c: int, seed: int) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    return [1.0 if i < c else 0.0 for i in torch.randperm(n, generator=g).tolist()]


def close(got: torch.Tensor, want: list[float], rtol: float = 1e-9) -> bool:
    """Element-wise relative closeness, so tiny advantages are checked at their own scale, plus
    1e-12 of the group's largest (an exact 0 among ties comes out as a rounding residue of the
    tied positions' weights, ~1e-16 of the group's scale)."""
    w = torch.tensor(want, dtype=torch.float64)
    return bool(((got.double() - w).abs() <= rtol * w.abs() + 1e-12 * w.abs().max()).all())


# the issue's cases (1 - mu below 1e-16), then a spread of (n, k, c)
ISSUE_CASES = [(56, 26, 30), (80, 20, 58), (128, 32, 88)]
SPREAD = [
    (n, k, c)
    for n in (64, 128)
    for k in (1, 2, n // 4, n // 2, n - 1)
    for c in (1, n // 8, n // 2, n - k, n - 2)
]


@pytest.mark.parametrize("n,k,c", ISSUE_CASES + SPREAD)
def test_chen_binary_equals_exact_rationals(n, k, c):
    r = binary(n, c, seed=n + 7 * k + c)
    got = passk_chen(torch.tensor([r], dtype=torch.float64), passk_k=k)[0]
    assert torch.isfinite(got).all()
    assert close(got, exact_chen(r, k))
    pos, neg = (
        closed_chen(n, c, k) if c <= n - k else (0.0, 0.0)
    )  # c > n - k: every subset holds a 1
    want = [pos if x == 1.0 else neg for x in r]
    assert close(got, want, rtol=1e-8)


def test_chen_issue_case_values_in_float32():
    """n = 56, k = 26, c = 30: exact advantages +1.2e-8 / -1.4e-8 (the audit's numbers); float32
    rewards in, float32 advantages out, finite and within float32 rounding of the exact values."""
    r = binary(56, 30, seed=3)
    got = passk_chen(torch.tensor([r]), passk_k=26)[0]
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    correct = torch.tensor(r) == 1.0
    assert ((got[correct] > 1.1e-8) & (got[correct] < 1.3e-8)).all()  # the audit's +1.2e-8
    assert ((got[~correct] > -1.5e-8) & (got[~correct] < -1.3e-8)).all()  # and -1.4e-8
    pos, neg = closed_chen(56, 30, 26)
    assert close(got, [pos if x == 1.0 else neg for x in r], rtol=1e-6)


@pytest.mark.parametrize("offset", [0.0, 1.0, 1e3, 1e7])
@pytest.mark.parametrize("n,k", [(64, 2), (64, 16), (128, 32), (128, 100)])
def test_real_rewards_with_offsets_equal_exact_rationals(n, k, offset):
    g = torch.Generator().manual_seed(n + k)
    base = torch.randint(0, 5, (n,), generator=g).double() * 0.25  # ties, 5 levels
    r = (base + offset).tolist()
    rows = torch.tensor([r], dtype=torch.float64)
    assert close(passk_chen(rows, passk_k=k)[0], exact_chen(r, k), rtol=1e-8)
    assert close(pkpo(rows, passk_k=k)[0], exact_pkpo(r, k), rtol=1e-8)


@pytest.mark.parametrize(
    "n,k,c", [(56, 26, 30), (128, 32, 88), (128, 64, 1), (64, 2, 63), (64, 63, 1)]
)
def test_pkpo_binary_equals_closed_form(n, k, c):
    """A_correct = k C(n-c, k-1) / C(n-1, k-1) (exact integers), A_wrong = 0."""
    r = binary(n, c, seed=c)
    got = pkpo(torch.tensor([r], dtype=torch.float64), passk_k=k)[0]
    a = float(Fraction(k * math.comb(n - c, k - 1), math.comb(n - 1, k - 1)))
    assert close(got, [a if x == 1.0 else 0.0 for x in r])
    assert close(got, exact_pkpo(r, k))


def _estimators(n: int) -> list[tuple[str, int]]:
    """Every registered estimator with each k the config check allows at this n (k only matters
    for the pass@k ones; passk_chen needs k < n, passk_best is pass@n)."""
    ks = {
        "passk_chen": [1, 2, n // 4, n // 2, n - 1],
        "pkpo": [1, 2, n // 4, n // 2, n],
        "passk_best": [n],
    }
    return [(name, k) for name in sorted(ADVANTAGES) for k in ks.get(name, [1])]


@pytest.mark.parametrize("n", [64, 128])
def test_every_registered_estimator_is_finite_and_zero_on_flat_groups(n):
    """Binary groups at every c, real rewards with an offset of 1e7, and flat groups: each
    estimator's advantages are finite, and exactly 0 where the group is flat."""
    g = torch.Generator().manual_seed(n)
    cs = list(range(0, n + 1, max(1, n // 16))) + [1, n - 1]
    binary_rows = torch.tensor([binary(n, c, seed=c) for c in cs])
    real_rows = 1e7 + torch.rand(4, n, generator=g, dtype=torch.float64)
    flat = torch.full((2, n), 0.7)
    for name, k in _estimators(n):
        fn = estimator(name, passk_k=k)
        for rows in (binary_rows, real_rows, flat):
            adv = fn(rows)
            assert torch.isfinite(adv).all(), f"{name} k={k} n={n}: non-finite advantages"
        assert (fn(flat) == 0).all(), f"{name} k={k}: a flat group has signal"
        assert (fn(binary_rows[:1]) == 0).all() and (fn(binary_rows[-3:-2]) == 0).all(), (
            f"{name} k={k}: c = 0 or n"
        )


def test_passk_best_large_group():
    r = [0.0] * 127 + [1.0]
    got = passk_best(torch.tensor([r]))[0]
    assert got[-1] == 1.0 and (got[:-1] == 0).all()
