"""Advantage estimators over groups of samples. Each of ADVANTAGES maps rewards [B, n] to
advantages [B, n].

B prompts, n samples per prompt. Every estimator of ADVANTAGES gives exactly zero advantage to a
group whose rewards are all equal (n >= 2; for reinforce_pp with n = 1, to a batch whose rewards
are all equal): such a group carries no learning signal. Exactly, also in float32, where the
group mean of equal non-dyadic rewards (1.2, 0.7) is off by a rounding error that a division by
the group's std would blow up to O(0.1): such groups are set to 0 explicitly. The caller passes
the groups that train this step, gathered over all ranks, so batch-level statistics
(REINFORCE++) are those of the whole training batch.

TOKEN_RETURNS holds estimators with a token-level form, used when the KL penalty is in the
reward (`algo.kl_mode=reward`): REINFORCE++ puts -beta*KL_t on each token (see
reinforce_pp_returns).
Their per-token returns are whitened over the tokens of the whole training batch (whiten).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from skyexp.algos.passk import passk_best, passk_chen, pkpo  # pass@k training (issue 19)


def equal_groups(rewards: torch.Tensor) -> torch.Tensor:
    """[B, 1] True where every reward of the group equals its first (the group carries no
    signal)."""
    return (rewards == rewards[..., :1]).all(dim=-1, keepdim=True)


def centred(rewards: torch.Tensor) -> torch.Tensor:
    """r_i - mean(r) per group [B, n], exactly 0 for equal-reward groups (float rounding of the mean
    otherwise leaves ~1e-7 there)."""
    return (rewards - rewards.mean(dim=-1, keepdim=True)).masked_fill(equal_groups(rewards), 0.0)


def rloo(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al., arXiv 2402.14740).

    A_i = r_i - 1/(n-1) * sum_{j != i} r_j  =  n/(n-1) * (r_i - mean(r)).
    Needs n >= 2 (checked at config time; raised here too). Equal-reward groups: exactly 0.
    """
    n = rewards.shape[-1]
    if n < 2:
        raise ValueError("rloo needs at least 2 samples per prompt")
    total = rewards.sum(dim=-1, keepdim=True)  # [B, 1]
    return (rewards - (total - rewards) / (n - 1)).masked_fill(equal_groups(rewards), 0.0)


def grpo(rewards: torch.Tensor, *, norm_by_std: bool, adv_eps: float) -> torch.Tensor:
    """GRPO group-normalised advantage (Shao et al., arXiv 2402.03300).

    A_i = (r_i - mean(r)) / (std(r) + adv_eps), std with Bessel's correction (n-1), as verl does.
    norm_by_std=False gives Dr.GRPO's A_i = r_i - mean(r) (Liu et al., arXiv 2503.20783).
    For n = 1 the advantage is 0 (a single sample has no group baseline). Equal-reward groups get
    exactly 0: the formula as written gives rounding_error / (std + eps) there in float32, e.g.
    0.106 for n = 8 rewards of 1.2.
    """
    c = centred(rewards)
    if not norm_by_std:
        return c
    if rewards.shape[-1] < 2:
        return torch.zeros_like(rewards)
    return c / (rewards.std(dim=-1, keepdim=True, unbiased=True) + adv_eps)


def dr_grpo(rewards: torch.Tensor) -> torch.Tensor:
    """Dr.GRPO (arXiv 2503.20783): GRPO without the std division, A_i = r_i - mean(r)."""
    return centred(rewards)


def reinforce_pp(rewards: torch.Tensor, *, adv_eps: float) -> torch.Tensor:
    """REINFORCE++ (Hu, arXiv 2501.03262), sequence-level form: normalise over the whole batch,
    not per group.

    n >= 2 (the paper's "REINFORCE++-baseline", its form for several samples per prompt):
        A_i = (r_i - mean_group(r)) / (std_batch(r - mean_group(r)) + adv_eps)
    n = 1 (the original form): A_i = (r_i - mean_batch(r)) / (std_batch(r) + adv_eps).
    std_batch is the population std over every sequence of the batch, as OpenRLHF computes it.

    With the KL penalty in the reward (`algo.kl_mode=reward`) `algo.advantage=reinforce_pp` uses
    the paper's token-level form instead (TOKEN_RETURNS: reinforce_pp_returns, then whiten);
    this function serves it otherwise, and always as `reinforce_pp_seq`.
    Departures: statistics are over sequences, not tokens (the paper whitens per token, which
    weights long responses more; with outcome rewards and no per-token KL term every token of a
    sequence carries the same return). Under `reinforce_pp_seq` a KL penalty in the reward is
    r - beta * sum_t KL_t, one value for the whole sequence, where the paper charges -beta*KL_t
    to each token's return-to-go. The batch mean of group-centred values is exactly 0 in exact
    arithmetic, so it is not subtracted again: equal-reward groups stay exactly 0.
    """
    if rewards.numel() == 0:
        return rewards.clone()
    c = (
        centred(rewards.reshape(1, -1)).view_as(rewards)
        if rewards.shape[-1] == 1
        else centred(rewards)
    )
    return c / (c.pow(2).mean().sqrt() + adv_eps)


def reinforce_pp_returns(
    rewards: torch.Tensor, token_kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """REINFORCE++ token returns before whitening (Hu, arXiv 2501.03262, sec. 3; OpenRLHF's
    `reinforce_baseline` with the KL in the reward).

    rewards [B, n] outcome rewards; token_kl [B*n, T] per-token KL estimates (e.g. k1 =
    log pi - log pi_ref); mask [B*n, T] 1 on response tokens. Per token
        r_t = -beta * KL_t + [t = last response token] * R',   G_t = sum_{s >= t} r_s  (gamma = 1)
    with R' = R - mean_group(R) for n >= 2 (REINFORCE++-baseline; exactly 0 for equal-reward
    groups) and R' = R for n = 1 (the whitening removes the batch mean). Returns G [B*n, T], 0 off
    the mask. Whitening over the batch's tokens (whiten) turns G into the advantage.
    """
    n = rewards.shape[-1]
    final = (centred(rewards) if n >= 2 else rewards).reshape(-1)  # [B*n]
    m = mask.to(token_kl.dtype)
    r = -kl_coef * token_kl * m
    # [B*n] last response token (padding: masked below)
    last = m.shape[-1] - 1 - m.flip(-1).argmax(-1)
    r = r.scatter_add(-1, last[:, None], final[:, None].to(r.dtype))
    return r.flip(-1).cumsum(-1).flip(-1) * m


def whiten(
    x: torch.Tensor, mask: torch.Tensor, mean: float, std: float, eps: float = 1e-6
) -> torch.Tensor:
    """(x - mean) / (std + eps) on the mask, 0 elsewhere: x [N, T]. mean and std are the
    population statistics of x over the masked tokens of the whole training batch (every rank)."""
    return (x - mean) / (std + eps) * mask


def masked_mean_std(x: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """Population mean and std of x [N, T] over the tokens where mask is 1 (0, 0 when none)."""
    count = float(mask.sum())
    if count == 0:
        return 0.0, 0.0
    mean = float((x * mask).sum()) / count
    return mean, (float(((x - mean).pow(2) * mask).sum()) / count) ** 0.5


def reinforce_pp_tokens(
    rewards: torch.Tensor,
    token_kl: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    eps: float = 1e-6,
) -> torch.Tensor:
    """REINFORCE++ per-token advantages [B*n, T] of one process's whole batch (Hu, arXiv
    2501.03262):
    A_t = (G_t - mean(G)) / (std(G) + eps), mean and population std over every response token of
    the batch, G from reinforce_pp_returns. The training step does the same with statistics over
    every rank (skyexp.rl.collect). Unlike the estimators of ADVANTAGES, an equal-reward group is
    not 0 here: the token mean is subtracted from every token, as in the paper and OpenRLHF (with
    beta > 0 no group is without signal anyway: each token carries its own KL charge)."""
    g = reinforce_pp_returns(rewards, token_kl, mask, kl_coef)
    mean, std = masked_mean_std(g.double(), mask)
    return whiten(g, mask, mean, std, eps)


class Estimator(NamedTuple):
    """A registered advantage estimator and what it needs of a group (checked against every
    stage's n at config validation, skyexp.config.stages)."""

    fn: Callable[..., torch.Tensor]  # rewards [B, n] -> advantages [B, n]; config values by keyword
    min_n: int = 1  # samples per prompt it needs
    # the largest algo.passk_k it takes at n samples, and why (None: it reads no k)
    max_k: Callable[[int], tuple[int, str]] | None = None


def _k_at_most_n(n: int) -> tuple[int, str]:
    return n, "is more than the samples per prompt"


def _k_below_n(n: int) -> tuple[int, str]:
    return n - 1, (
        "must be below the samples per prompt: k = n leaves one k-subset per group and every "
        "advantage is 0 (use k < n, or algo.advantage=passk_best for pass@n)"
    )


# Registered estimators take their config values as keyword-only parameters named as the algo.*
# keys (norm_by_std, adv_eps, passk_k), bound by skyexp.config.algorithm.build_algorithm.
ADVANTAGES: dict[str, Estimator] = {
    "rloo": Estimator(rloo, min_n=2),  # the leave-one-out baseline needs another sample
    "grpo": Estimator(grpo),
    "dr_grpo": Estimator(dr_grpo),
    "reinforce_pp": Estimator(reinforce_pp),
    # sequence-level also with the KL in the reward (an ablation; see reinforce_pp's docstring)
    "reinforce_pp_seq": Estimator(reinforce_pp),
    "passk_chen": Estimator(passk_chen, min_n=2, max_k=_k_below_n),
    "pkpo": Estimator(pkpo, min_n=2, max_k=_k_at_most_n),
    "passk_best": Estimator(passk_best, min_n=2),  # pass@n: reads no k
}

# Token-level forms, used instead of ADVANTAGES[name] when the KL penalty is in the reward.
TOKEN_RETURNS: dict[
    str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]
] = {
    "reinforce_pp": reinforce_pp_returns,
}
