"""Token-level entropy mechanisms: which tokens the policy gradient acts on, and how.

Selected by `entropy.token_rule`, composable with the coefficient controllers of
skyexp.algos.entropy (`entropy.controller`). A rule is a pair of pure functions whose
keyword-only parameters without defaults are config keys of the same name (entropy.* for the
rule's own, algo.* for the PPO clip), bound at lookup (skyexp.config.names.bind):

  select(adv, logp, entropy, mask, *, <entropy.* params>) -> sel [N, T] bool   (or None: no
selection)
      run once per mini-batch, BEFORE the forward pass, on the sampling policy's log-probs and
      entropies, so the choice does not depend on how the mini-batch is split into micro-batches
      and rows without gradient can still skip the forward pass;
  loss(logp, old_logp, adv, sel, *, <algo.* clip params>, <entropy.* params>)
      -> (per-token loss [N, T], per-token stats), replacing the plain clipped surrogate
      (algo.ratio_max bounds the ratio of kl_cov's unclipped surrogate; the others do not take it).

Shapes: N sequences, T response positions; `adv` is the sequence advantage broadcast over its
tokens (or a per-token advantage: REINFORCE++ with the KL in the reward), `mask` 1 on tokens that
train. Departure shared by the covariance rules: the reference code selects per micro-batch with
the current policy's log-probs; here selection is over the rank's whole mini-batch with the
sampling policy's log-probs, identical on the first (on-policy) optimizer step and independent
of micro-batching. Each rank selects among its own tokens, as each GPU does in the reference code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from skyexp.algos.losses import clipped_policy_loss


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def token_covariance(adv: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token centred cross product (Cui et al., arXiv 2505.22617, eq. for Cov(log pi, A)):
    c_t = (A_t - mean(A)) * (log pi_t - mean(log pi)), means over the masked tokens; 0 elsewhere.
    Its batch mean is the covariance that, by their analysis, drives the entropy change."""
    m = mask.float()
    return (adv - _masked_mean(adv, m)) * (logp - _masked_mean(logp, m)) * m


def clip_cov_select(
    adv: torch.Tensor,
    logp: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_cov_ratio: float,
    cov_low: float,
    cov_high: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Clip-Cov (arXiv 2505.22617): among tokens with cov_low < c_t < cov_high pick
    max(1, int(clip_cov_ratio * #tokens)) at random. The paper's values: r = 2e-4, band [1, 5]
(conf/entropy/clip_cov.yaml).
    Departure: the reference code also excludes tokens the PPO clip is already cutting; those
    are known only after the forward pass, so they may be picked here (their gradient is 0
    anyway)."""
    valid = mask > 0
    cov = token_covariance(adv, logp, mask)
    cand = ((cov > cov_low) & (cov < cov_high) & valid).flatten().nonzero().squeeze(1)
    k = max(int(clip_cov_ratio * int(valid.sum())), 1)
    pick = cand[torch.randperm(cand.numel(), generator=generator)[:k]]
    sel = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
    sel[pick] = True
    return sel.view(mask.shape)


def kl_cov_select(
    adv: torch.Tensor,
    logp: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_cov_ratio: float,
) -> torch.Tensor:
    """KL-Cov (arXiv 2505.22617): the max(1, int(kl_cov_ratio * #tokens)) tokens of largest c_t.
    The paper's k = 2e-3 (their 7B recipe, `k_percent=0.2` percent; conf/entropy/kl_cov.yaml)."""
    valid = mask > 0
    n = int(valid.sum())
    sel = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
    if n == 0:
        return sel.view(mask.shape)
    cov = token_covariance(adv, logp, mask).masked_fill(~valid, -math.inf).flatten()
    sel[torch.topk(cov, max(1, int(n * kl_cov_ratio))).indices] = True
    return sel.view(mask.shape)


def high_entropy_select(
    adv: torch.Tensor,
    logp: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    *,
    top_ratio: float,
) -> torch.Tensor:
    """Wang et al., "Beyond the 80/20 rule" (arXiv 2506.01939): tokens whose entropy is at least
    the (1 - rho) quantile tau of the batch's token entropies, H_t >= tau (rho = top_ratio = 0.2).
    Ties at tau are all kept, as the paper's indicator 1[H_t >= tau] does."""
    valid = mask > 0
    vals = entropy[valid]
    if vals.numel() == 0:
        return torch.zeros_like(valid)
    k = max(1, math.ceil(top_ratio * vals.numel()))
    tau = torch.kthvalue(vals.float().cpu(), vals.numel() - k + 1).values.to(entropy.device)
    return (entropy >= tau) & valid


def plain_loss(logp, old_logp, adv, sel, *, clip_low, clip_high, clip_c):
    """The clipped surrogate of skyexp.algos.losses, untouched (sel is None)."""
    return clipped_policy_loss(logp, old_logp, adv, clip_low, clip_high, clip_c)


def clip_cov_loss(logp, old_logp, adv, sel, *, clip_low, clip_high, clip_c):
    """Clip-Cov: the clipped surrogate with the selected tokens' terms removed (value and gradient
    0, as the reference code's `* corr`). The paper's recipe widens the PPO clip to [0, 2]
    (clip_low = clip_high = 1); that is the algo preset's choice, not forced here."""
    loss, stats = clipped_policy_loss(logp, old_logp, adv, clip_low, clip_high, clip_c)
    return loss * (~sel), stats


def kl_cov_loss(logp, old_logp, adv, sel, *, ratio_max, kl_cov_coef):
    """KL-Cov: L_t = -A_t r_t for every token, plus kl_cov_coef * |log pi_t - log pi_old,t| on the
    selected ones (beta = 1 in the paper). As in the paper and its code there is no PPO clip; the
    ratio is clamped to [1/ratio_max, ratio_max] for numerical safety.
    Note: at the first (on-policy) optimizer step log pi = log pi_old, so the penalty acts only
    from the second mini-batch or epoch on, or through any mismatch between the old log-probs and
    the training forward pass (with `algo.old_logprobs=recompute` there is none on CPU)."""
    bound = math.log(ratio_max)
    log_ratio = (logp - old_logp).clamp(-bound, bound)
    loss = -adv * torch.exp(log_ratio) + sel * kl_cov_coef * (logp - old_logp).abs()
    zero = torch.zeros_like(loss).detach()
    return loss, {
        "clipped_low": zero,
        "clipped_high": zero,
        "dual_clipped": zero,
        "approx_kl": (old_logp - logp).detach(),
    }


def high_entropy_loss(logp, old_logp, adv, sel, *, clip_low, clip_high, clip_c):
    """Policy gradient only on the selected (high-entropy) tokens. The aggregation's normaliser is
    unchanged (all response tokens), as in the paper's objective (1/sum|o_i| outside the
    indicator)."""
    loss, stats = clipped_policy_loss(logp, old_logp, adv, clip_low, clip_high, clip_c)
    return loss * sel, stats


class TokenRule(NamedTuple):
    select: Callable[..., torch.Tensor] | None  # None: no selection
    # the loss that replaces PPO's clipped surrogate; None: the policy loss stays algo.policy_loss's
    loss: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]] | None
    # True when selected tokens get a gradient even with zero advantage, so rows holding them
    # must go through the forward pass.
    grads_zero_advantage: bool = False


PLAIN = TokenRule(None, None)  # no selection, and the policy loss is algo.policy_loss's
TOKEN_RULES: dict[str, TokenRule] = {
    "none": PLAIN,
    "clip_cov": TokenRule(clip_cov_select, clip_cov_loss),
    "kl_cov": TokenRule(kl_cov_select, kl_cov_loss, grads_zero_advantage=True),
    "high_entropy_tokens": TokenRule(high_entropy_select, high_entropy_loss),
}
