"""The step's advantages over the groups that train, and the rewards and KL they used.

The KL of the sampler to the reference is computed once per step here (per token, then summed
per sequence): it is the reward penalty of `algo.kl_mode=reward` (r - beta * sum_t KL_t,
Ahmadian et al. 2402.14740; or -beta * KL_t on each token for an estimator with a token-level
form, REINFORCE++, arXiv 2501.03262) and the `critic/kl` metric. Sequence-level estimators see
the groups of every rank gathered, so batch-level statistics are global; token-level returns are
whitened with statistics reduced over every rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from skyexp.algos.advantages import whiten
from skyexp.config.algorithm import Algorithm
from skyexp.distributed import all_gather_objects, all_reduce_sum


@dataclass(frozen=True)
class Advantages:
    """What the advantages were computed from, for the update and the metrics."""

    # [G*n] one per sequence, or [G*n, R] one per token; 0 on rows that do not train
    advantages: torch.Tensor
    # [G, n] the rewards used: r - beta * sum_t KL_t (r without a reward penalty)
    rewards: torch.Tensor
    # [G, n] sum_t KL_t of the sampler to the reference; None without a reference
    seq_kl: torch.Tensor | None


def kl_tokens(
    alg: Algorithm, logp: torch.Tensor, ref_logp: torch.Tensor | None, mask: torch.Tensor
) -> torch.Tensor:
    """Per-token KL of the sampler to the reference, KL_t on response tokens [G*n, R] (0 elsewhere,
    and everywhere when no reference is loaded)."""
    if ref_logp is None:
        return torch.zeros_like(mask)
    return alg.kl(logp, ref_logp) * mask


def step_advantages(
    alg: Algorithm,
    rewards: torch.Tensor,
    train: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    mask: torch.Tensor,
    device: torch.device,
) -> Advantages:
    """The step's advantages for this rank's rows, with the KL penalty (if in the reward)
    subtracted from the scalar reward, or charged per token by an estimator's token-level form
    (alg.token_returns). rewards [G, n], train [G], logp / ref_logp / mask [G*n, R]; logp and
    ref_logp must be there for every row of a training group, masked or not: each enters its
    group's baseline."""
    token_kl = kl_tokens(alg, logp, ref_logp, mask)  # [G*n, R]
    seq_kl = token_kl.sum(-1).view_as(rewards)  # [G, n]
    used = rewards - alg.kl_reward_coef * seq_kl
    if alg.token_returns is not None:
        adv = token_advantages(alg, rewards, token_kl, mask, train, device)
    else:
        adv = group_advantages(alg, used, train, device)
    return Advantages(adv, used, seq_kl if ref_logp is not None else None)


def token_advantages(
    alg: Algorithm,
    rewards: torch.Tensor,
    token_kl: torch.Tensor,
    mask: torch.Tensor,
    train: torch.Tensor,
    device: torch.device,
) -> torch.Tensor:
    """alg.token_returns on this rank's training groups, whitened with the mean and std over the
    response tokens of the training groups of every rank; [G*n, R], 0 on rows of groups that do
    not train. Groups never straddle ranks, so only the statistics are reduced."""
    rows = train.repeat_interleave(rewards.shape[1])  # [G*n]
    # [rows, R]
    g = alg.token_returns(rewards[train], token_kl[rows], mask[rows], alg.kl_reward_coef).double()
    m = mask[rows].double()
    total, count = all_reduce_sum([float((g * m).sum()), float(m.sum())], device).tolist()
    mean = total / max(count, 1.0)
    var = float(all_reduce_sum([float(((g - mean).pow(2) * m).sum())], device)[0]) / max(count, 1.0)
    adv = torch.zeros_like(mask)
    adv[rows] = whiten(g, m, mean, var**0.5, alg.adv_eps).to(adv.dtype)
    return adv


def group_advantages(
    alg: Algorithm, rewards: torch.Tensor, train: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """alg.advantage over the groups that train on every rank (gathered, so batch-level
    statistics are global), returned for this rank's rows [G*n]; 0 for groups that do not train."""
    mine = rewards[train]
    everyone = all_gather_objects(mine)
    adv = torch.zeros_like(rewards)
    if sum(x.shape[0] for x in everyone) == 0:
        return adv.flatten()
    adv_all = alg.advantage(torch.cat(everyone))
    start = sum(x.shape[0] for x in everyone[: _rank(len(everyone))])
    adv[train] = adv_all[start : start + mine.shape[0]]
    return adv.flatten()


def _rank(world: int) -> int:
    import torch.distributed as dist

    return dist.get_rank() if world > 1 else 0
