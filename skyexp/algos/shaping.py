"""Advantage shaping from the sampler's token entropies.

Composable with every advantage estimator, entropy controller and token rule (`entropy.adv_alpha`).
"""

from __future__ import annotations

import torch


def entropy_shaped(
    adv: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    *,
    adv_alpha: float,
    adv_kappa: float,
) -> torch.Tensor:
    """Entropy-shaped advantage (Cheng et al., "Reasoning with Exploration: An Entropy
    Perspective", arXiv 2506.14758, eq. for psi):

        A'_t = A_t + min(alpha * sg(H_t), |A_t| / kappa)

    adv [N] (a sequence advantage, broadcast over its tokens) or [N, T]; entropy, mask [N, T].
    Returns [N, T], 0 off the mask. With kappa > 1 the term is below |A_t|, so it never flips the
    sign of an advantage, and a zero advantage (an equal-reward group) stays exactly 0.
    Departure: H_t is the entropy of the policy that sampled the batch, fixed for every epoch and
    mini-batch of the update (the paper's is the current policy's, the same on the first,
    on-policy, optimizer step).
    """
    a = adv[:, None].expand_as(mask) if adv.dim() == 1 else adv
    bonus = torch.minimum(adv_alpha * entropy.detach().to(a.dtype), a.abs() / adv_kappa)
    return (a + bonus) * mask
