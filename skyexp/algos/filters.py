"""Group filters: which prompt groups enter the policy update.

Each maps (rewards [B, n] total reward, correct [B, n] 1/0 correctness) to keep [B] bool.
DAPO dynamic sampling (arXiv 2503.14476) repeats generation until enough groups pass the filter;
that loop lives in skyexp.rl.collect, the decision per group lives here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def keep_all(rewards: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    return torch.ones(rewards.shape[0], dtype=torch.bool, device=rewards.device)


def zero_variance(rewards: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Drop groups whose total rewards are all equal: their advantage is 0 under every
    group-baseline
    estimator, so they only dilute the token-mean (Skywork-OR1 rejection sampling, arXiv 2505.22312,
    whose release drops groups with rewards all 0 or all 1). With shaped rewards (length terms) a
    group of all-correct answers of different lengths still carries signal and is kept."""
    return (rewards.max(dim=-1).values - rewards.min(dim=-1).values) > 0


def mixed_accuracy(rewards: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Keep groups solved by some but not all samples, 0 < accuracy < 1: DAPO's dynamic-sampling
    criterion (filter metric `acc`, arXiv 2503.14476) and DeepScaleR's. Unlike zero_variance it
    drops an all-correct group even when length shaping makes its rewards differ."""
    acc = correct.float().mean(dim=-1)
    return (acc > 0) & (acc < 1)


def accuracy_band(
    rewards: torch.Tensor, correct: torch.Tensor, *, filter_low: float, filter_high: float
) -> torch.Tensor:
    """Keep groups with filter_low <= accuracy <= filter_high (PRIME's online prompt filter,
    arXiv 2502.01456, band [0.2, 0.8]: the algo.filter_low / algo.filter_high defaults)."""
    acc = correct.float().mean(dim=-1)
    return (acc >= filter_low) & (acc <= filter_high)


FILTERS: dict[str, Callable[..., torch.Tensor]] = {
    "none": keep_all,
    "zero_variance": zero_variance,
    "mixed_accuracy": mixed_accuracy,
    "accuracy_band": accuracy_band,
}
