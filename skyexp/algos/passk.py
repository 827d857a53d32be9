"""Pass@k training: advantage estimators for the pass@k (max@k) objective of a group. Each maps
rewards [B, n] to advantages [B, n], as skyexp.algos.advantages does, and is registered there.

The objective of a prompt is max@k = E[max(r_1..r_k)] over k samples (pass@k for 0/1 rewards).
A group of n >= k samples holds C(n, k) k-subsets; every estimator here is an average over all of
them, computed in closed form from the group's rewards sorted ascending (r_(0) <= ... <= r_(n-1)):
the max of a subset is its element of highest sorted position, so

  mean over k-subsets of max        = sum_j C(j, k-1) r_(j) / C(n, k)
  sum over k-subsets holding p of max = C(p, k-1) r_(p) + sum_{j > p} C(j-1, k-2) r_(j)
  sum over (k-1)-subsets of the others of max = sum_{j < p} C(j, k-2) r_(j) + sum_{j > p} C(j-1,
k-2) r_(j)

(ties do not matter: tied values give the same max whichever of them counts as the highest).
tests/algos/test_passk.py checks each estimator against the enumeration of every subset.
"""

from __future__ import annotations

import functools
import math

import torch


def _ratio(num: int, den: int) -> float:
    """num / den for (possibly huge) integers, correctly rounded: no float of a binomial that may
    overflow (C(1024, 512) ~ 4e306) and no rounding of the two before they are divided."""
    return num / den if num else 0.0


def _comb(a: int, b: int) -> int:
    return math.comb(a, b) if 0 <= b <= a else 0


def _check(n: int, k: int) -> None:
    if n < 2 or not 1 <= k <= n:
        raise ValueError(f"pass@k advantages need 1 <= algo.passk_k <= n and n >= 2 (k={k}, n={n})")


@functools.lru_cache(maxsize=16)
def _weights(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised binomial weights over sorted positions, float64, each entry an exact integer
    ratio rounded once:
      mean [n]       C(j, k-1) / C(n, k): the subset-max mean's (they sum to 1);
      held [n, n]    row p: the mean over the k-subsets holding p, / C(n-1, k-1);
      gain [n, n]    row p: (the sum over k-subsets holding p) - (the sum over (k-1)-subsets of the
                     other samples), / C(n, k). Both sums weigh every j > p by C(j-1, k-2); that
                     part cancels exactly here, in the integers, instead of in floats (pkpo).
    Cached: a run calls these with the same (n, k) every step (n = 128: 0.07 s on the 2-core
    build machine)."""
    total, held_den = _comb(n, k), _comb(n - 1, k - 1)
    mean = torch.tensor([_ratio(_comb(j, k - 1), total) for j in range(n)], dtype=torch.float64)
    held = torch.zeros(n, n, dtype=torch.float64)
    gain = torch.zeros(n, n, dtype=torch.float64)
    for p in range(n):
        held[p, p] = _ratio(_comb(p, k - 1), held_den)
        gain[p, p] = _ratio(_comb(p, k - 1), total)
        for j in range(p):
            gain[p, j] = -_ratio(_comb(j, k - 2), total)
        for j in range(p + 1, n):
            held[p, j] = _ratio(_comb(j - 1, k - 2), held_den)
    return mean, held, gain


def _sorted_gaps(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each group's rewards sorted ascending, minus the group's max (float64, all <= 0), and the
    permutation that sorted them. Every quantity here is shift-invariant, and measuring from the
    max keeps what matters (the small gaps of a nearly flat set of subset maxima, a common reward
    offset) out of a cancellation between two numbers near the max."""
    r, perm = rewards.double().sort(dim=-1, stable=True)
    return r - r[..., -1:], perm


def _unsort(values: torch.Tensor, perm: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(values).scatter_(-1, perm, values).to(like.dtype)


def passk_chen(rewards: torch.Tensor, *, passk_k: int) -> torch.Tensor:
    """Analytic pass@k advantages (Chen et al., arXiv 2508.10751, "Pass@k Training").

    The group's C(n, k) k-subsets each get the reward max over the subset, normalised as GRPO does
    over the subsets: A_S = (max_S r - mu) / sigma with mu, sigma the mean and population std over
    all k-subsets; a sample's advantage is the mean of A_S over the subsets holding it. For 0/1
    rewards with c correct of n (their closed forms):
        mu = 1 - C(n-c, k) / C(n, k),  sigma = sqrt(mu (1 - mu)),
        A_pos = (1 - mu) / sigma,      A_neg = (1 - mu - C(n-c-1, k-1) / C(n-1, k-1)) / sigma.
    k = 1 is GRPO with the population std (no eps). Departures: any real rewards are accepted (the
    same subset average, by the sorted-position sums of the module docstring); groups where every
    k-subset has the same max (sigma = 0: all rewards equal, or c > n - k) get exactly 0, where the
    closed form divides by zero.

    Numerics (issue 25): everything is computed in float64 on the gaps to the group's max, and the
    variance as sum_j w_j (x_j - mu)^2, non-negative by construction. The textbook E[x^2] - mu^2
    cancels to <= 0 once 1 - mu (the share of k-subsets without a correct sample) falls below
    ~1e-16 (n = 56, k = 26, c = 30: exact A = +1.2e-8 / -1.4e-8), which gave 0 / -inf. Advantages
    here are accurate to a few ulps relative for every n, k the config accepts
    (tests/algos/test_passk_large.py: exact rational arithmetic up to n = 128, offsets up to 1e7). A
    group
    whose variance underflows float64 (a share of non-max subsets below ~1e-308; its advantages
    would be ~1e-154, 0 in float32) gets exactly 0.
    """
    n, k = rewards.shape[-1], passk_k
    _check(n, k)
    d, perm = _sorted_gaps(rewards)
    mean_w, held_w, _ = _weights(n, k)
    mu = (d * mean_w).sum(-1, keepdim=True)  # [B, 1] (mu - max)
    var = ((d - mu).pow(2) * mean_w).sum(-1, keepdim=True)  # over sorted positions = over subsets
    held = d @ held_w.T  # [B, n] mean over the subsets holding each sample (- max)
    # every subset max equal
    flat = (d[..., k - 1 : k] == 0) | (var <= torch.finfo(torch.float64).tiny)
    adv = ((held - mu) / var.sqrt().masked_fill(flat, 1.0)).masked_fill(flat, 0.0)
    return _unsort(adv, perm, rewards)


def pkpo(rewards: torch.Tensor, *, passk_k: int) -> torch.Tensor:
    """PKPO: unbiased pass@k / max@k gradient weights (Walder and Karkhanis, arXiv 2505.15201),
    their lowest-variance form s^(loo-1), scaled by n:

        A_i = n / C(n, k) * sum_{|S| = k, i in S} (max_S r - max_{S minus i} r)

    so that mean_i A_i grad log pi(y_i) is an unbiased estimate of grad max@k (for 0/1 rewards
    pass@k), the scale at which mean_i A_i grad log pi is pass@1's for RLOO. For 0/1 rewards with
    c correct of n: A_correct = k C(n-c, k-1) / C(n-1, k-1) (the share of subsets in which it is
    the only correct sample, times k) and A_wrong = 0 (a wrong sample never changes a subset's max).
    The baseline max over S minus i does not depend on sample i, so the estimate stays unbiased.
    Departure: k = 1 has no (k-1)-subset to take a baseline from; there the leave-one-out form
    s^(loo) is used, which is RLOO exactly.
    """
    n, k = rewards.shape[-1], passk_k
    _check(n, k)
    if k == 1:  # RLOO, exactly 0 for equal-reward groups (float rounding of the sums leaves ~1e-7)
        equal = rewards.amax(-1, keepdim=True) == rewards.amin(-1, keepdim=True)
        return (rewards - (rewards.sum(-1, keepdim=True) - rewards) / (n - 1)).masked_fill(
            equal, 0.0
        )
    d, perm = _sorted_gaps(rewards)
    _, _, gain_w = _weights(n, k)  # rows sum to 0 (hockey stick), so the gaps give the same sums
    adv = (d @ gain_w.T) * n
    equal = d[..., :1] == 0  # exactly 0 (the sums round differently for e.g. 0.7)
    return _unsort(adv.masked_fill(equal, 0.0), perm, rewards)


def passk_best(rewards: torch.Tensor) -> torch.Tensor:
    """Best-of-group pass@n advantage (Tang et al., arXiv 2503.19595; verl's `grpo_passk`):
    A_i = max_j r_j - max_{j != i} r_j, the leave-one-out control variate of the max of the whole
    group (k = n): the best sample gets the margin to the second best, every other sample 0.
    It equals pkpo with passk_k = n divided by n.
    """
    n = rewards.shape[-1]
    _check(n, n)
    top2 = rewards.topk(2, dim=-1).values  # [B, 2]
    best = rewards.argmax(dim=-1, keepdim=True)
    return torch.zeros_like(rewards).scatter_(-1, best, top2[..., :1] - top2[..., 1:])
