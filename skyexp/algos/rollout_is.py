"""Truncated importance sampling (TIS) for the sampler / trainer mismatch.

The engine that samples (vLLM: other kernels, other reduction orders, bf16 on GPUs) and the
trainer give the same tokens slightly different probabilities, so "on-policy" RL is quietly
off-policy. Yao, Liu et al. 2025 ("Your Efficient RL Framework Secretly Brings You Off-Policy RL
Training") weight each token's policy-gradient loss by

    w_t = min(pi_old(y_t) / pi_sampler(y_t), C)

where pi_old is the trainer's own policy before the update (its recomputed log-probs, which the
PPO ratio is then taken against) and pi_sampler the engine's. Truncating at C bounds the
variance the weight adds. verl (`rollout_is`) and TRL (vLLM importance-sampling correction)
offer the same, per token or per sequence. Sequence level uses
w = min(prod_t pi_old / pi_sampler, C) for every token of the sequence.

Weights are constants (no gradient flows through them); padding positions get weight 0.
"""

from __future__ import annotations

import math

import torch


def no_is_weights(trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, *,
                  rollout_is_cap: float) -> None:
    """No correction: no weights (the loss is not weighted)."""
    return None


def token_is_weights(trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, *,
                     rollout_is_cap: float) -> torch.Tensor:
    """w_t = min(exp(trainer_t - sampler_t), cap) on response tokens. Inputs [N, R]; returns [N,
    R]."""
    # clamp before exp: no overflow
    log_ratio = (trainer_logp - sampler_logp).clamp(max=math.log(rollout_is_cap))
    return torch.exp(log_ratio).detach() * mask


def sequence_is_weights(
    trainer_logp: torch.Tensor,
    sampler_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    rollout_is_cap: float,
) -> torch.Tensor:
    """w = min(exp(sum_t (trainer_t - sampler_t)), cap), the same for every token of a sequence. [N,
    R]"""
    # [N, 1]
    log_ratio = (
        ((trainer_logp - sampler_logp) * mask)
        .sum(-1, keepdim=True)
        .clamp(max=math.log(rollout_is_cap))
    )
    return torch.exp(log_ratio).detach() * mask


# (trainer log-probs, sampler log-probs, mask, *, rollout_is_cap) -> weights [N, R], or None: no
# weighting
ROLLOUT_IS = {"none": no_is_weights, "token": token_is_weights, "sequence": sequence_is_weights}


def is_weight_stats(
    weights: torch.Tensor, mask: torch.Tensor, cap: float
) -> tuple[float, float, float]:
    """(sum of weights, number of tokens at the cap, number of tokens) over mask [N, R]."""
    at_cap = (weights >= cap * (1 - 1e-6)) & (mask > 0)
    return float((weights * mask).sum()), float(at_cap.sum()), float(mask.sum())


def is_weight_sums(
    weights: torch.Tensor,
    trainer_logp: torch.Tensor,
    sampler_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    rollout_is_cap: float,
) -> dict[str, tuple[float, float]]:
    """Metric name -> (sum, tokens) over mask [N, R]: the mean truncated weight and the share of
    tokens at the cap (the log-probs are not needed: the weights say it all)."""
    w_sum, at_cap, tokens = is_weight_stats(weights, mask, rollout_is_cap)
    return {
        "rollout/is_weight_mean": (w_sum, tokens),
        "rollout/is_truncated_frac": (at_cap, tokens),
    }
