"""Advantage estimators over groups of samples. Each maps rewards [B, n] to advantages [B, n].

B prompts, n samples per prompt. Every estimator gives exactly zero advantage to a group
whose rewards are all equal (n >= 2): such a group carries no learning signal. The caller passes
the groups that train this step, gathered over all ranks, so batch-level statistics
(REINFORCE++) are those of the whole training batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def rloo(rewards: torch.Tensor, **_: object) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al., arXiv 2402.14740).

    A_i = r_i - 1/(n-1) * sum_{j != i} r_j  =  n/(n-1) * (r_i - mean(r)).
    Needs n >= 2 (checked at config time; raised here too).
    """
    n = rewards.shape[-1]
    if n < 2:
        raise ValueError("rloo needs at least 2 samples per prompt")
    total = rewards.sum(dim=-1, keepdim=True)  # [B, 1]
    return rewards - (total - rewards) / (n - 1)


def grpo(rewards: torch.Tensor, norm_by_std: bool = True, eps: float = 1e-6, **_: object) -> torch.Tensor:
    """GRPO group-normalised advantage (Shao et al., arXiv 2402.03300).

    A_i = (r_i - mean(r)) / (std(r) + eps), std with Bessel's correction (n-1), as verl does.
    norm_by_std=False gives Dr.GRPO's A_i = r_i - mean(r) (Liu et al., arXiv 2503.20783).
    For n = 1 the advantage is 0 (a single sample has no group baseline).
    """
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    if not norm_by_std:
        return centred
    if rewards.shape[-1] < 2:
        return torch.zeros_like(rewards)
    return centred / (rewards.std(dim=-1, keepdim=True, unbiased=True) + eps)


def dr_grpo(rewards: torch.Tensor, **kw: object) -> torch.Tensor:
    """Dr.GRPO (arXiv 2503.20783): GRPO without the std division."""
    kw.pop("norm_by_std", None)
    return grpo(rewards, norm_by_std=False, **kw)


def reinforce_pp(rewards: torch.Tensor, eps: float = 1e-6, **_: object) -> torch.Tensor:
    """REINFORCE++ (Hu, arXiv 2501.03262): normalise over the whole batch, not per group.

    n >= 2 (the paper's "REINFORCE++-baseline", its form for several samples per prompt):
        A_i = (r_i - mean_group(r)) / (std_batch(r - mean_group(r)) + eps)
    n = 1 (the original form): A_i = (r_i - mean_batch(r)) / (std_batch(r) + eps).
    std_batch is the population std over every sequence of the batch, as OpenRLHF computes it.

    Departures: statistics are over sequences; the paper whitens per token, which weights long
    responses more (with outcome rewards and no per-token KL term every token of a sequence
    carries the same value). The batch mean of group-centred values is exactly 0 in exact
    arithmetic, so it is not subtracted again: equal-reward groups stay exactly 0.
    """
    if rewards.numel() == 0:
        return rewards.clone()
    if rewards.shape[-1] == 1:
        centred = rewards - rewards.mean()
    else:
        centred = rewards - rewards.mean(dim=-1, keepdim=True)
    return centred / (centred.pow(2).mean().sqrt() + eps)


ADVANTAGES: dict[str, Callable[..., torch.Tensor]] = {
    "rloo": rloo,
    "grpo": grpo,
    "dr_grpo": dr_grpo,
    "reinforce_pp": reinforce_pp,
}

from skyexp.algos.passk import passk_best, passk_chen, pkpo  # noqa: E402  (pass@k training, issue 19)

ADVANTAGES.update({"passk_chen": passk_chen, "pkpo": pkpo, "passk_best": passk_best})
