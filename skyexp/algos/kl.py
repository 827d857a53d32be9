"""KL estimators between the policy and a reference, per token (Schulman, "Approximating KL
divergence", 2020). Inputs are log-probs of the sampled tokens, [..., T]; output has the same shape.
With log_ratio = logp - ref_logp (samples drawn from the policy):
  k1 = log_ratio                          unbiased, high variance, can be negative
  k2 = log_ratio**2 / 2                   biased, low variance
  k3 = exp(-log_ratio) - 1 + log_ratio    unbiased, low variance, >= 0 (GRPO's choice)
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return logp - ref_logp


def k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logp - ref_logp) ** 2


def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    # Clamp the exponent: a token the reference finds far likelier would overflow exp.
    log_ratio = (logp - ref_logp).clamp(-20.0, 20.0)
    return torch.exp(-log_ratio) - 1 + log_ratio


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": k1,
    "k2": k2,
    "k3": k3,
}
