"""Token log-probs, the clipped policy-gradient surrogate, and loss aggregation modes.

Shapes: N sequences, T response positions, V vocabulary. `mask` is 1 on response tokens that
count (generated tokens, including EOS), 0 on padding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# exp() guard of the clipped surrogate: the log-ratio is capped here (r <= e^20 ~ 4.9e8), as verl
# does
LOG_RATIO_CAP = 20.0


def token_logprobs(
    logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0, chunk: int = 4096
) -> torch.Tensor:
    """log pi(ids | context) under softmax(logits / temperature).

    logits [N, T, V], ids [N, T] -> [N, T] float32. The temperature is the one the rollout
    sampled with, so training and sampling see the same distribution. Rows are processed in
    chunks so the float32 log-softmax never holds more than `chunk` x V values at once.
    """
    flat = logits.reshape(-1, logits.shape[-1])
    flat_ids = ids.reshape(-1)
    out = torch.empty(flat_ids.shape, dtype=torch.float32, device=logits.device)
    for s in range(0, flat.shape[0], chunk):
        z = flat[s : s + chunk].float() / temperature
        out[s : s + chunk] = z.gather(-1, flat_ids[s : s + chunk, None]).squeeze(
            -1
        ) - torch.logsumexp(z, dim=-1)
    return out.view(ids.shape)


def clipped_policy_loss(
    logp: torch.Tensor,  # [N, T] current policy
    old_logp: torch.Tensor,  # [N, T] policy that sampled (or its recomputation)
    advantages: torch.Tensor,  # [N, T] (a sequence advantage broadcast over its tokens)
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate per token (Schulman et al., arXiv 1707.06347).

    L = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)),  r = exp(logp - old_logp).
    Separate low/high ranges are DAPO's clip-higher (arXiv 2503.14476). With clip_c > 1, dual
    clip (Ye et al., arXiv 1912.09729) bounds the loss of negative-advantage tokens by -A clip_c.
    Numerical safety changes no value or gradient that this objective defines, but one: the
    log-ratio is capped at LOG_RATIO_CAP = 20 before exp (verl clamps at +-20), so an A < 0 token
    with r > e^20 ~ 4.9e8 and no dual clip gets loss -A e^20 and gradient 0 where PPO's would be
    -A r. Without the cap, exp would overflow to inf and 0 * inf = NaN (in the loss of a
    zero-advantage token, or in the backward pass of a clipped one). There is no lower cap:
    exp(-large) underflows to 0 harmlessly, and an A > 0 token at small r keeps its gradient
    -A r (as TRL and verl; e.g. r = 0.05: loss -0.05 A, gradient -0.05 A). A bound on the
    ratio of A < 0 tokens is the dual clip's job (clip_c; DAPO's recipes use c = 10).
    Returns per-token loss [N, T] and per-token stats (detached): clipped_low, clipped_high (the
    PPO clip is active), dual_clipped (the dual clip is active; verl's pg_clipfrac_lower),
    approx_kl.
    """
    ratio = torch.exp((logp - old_logp).clamp(max=LOG_RATIO_CAP))
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(loss_unclipped, loss_clipped)
    dual = torch.zeros_like(loss, dtype=torch.bool)
    if clip_c > 1.0:
        dual = (advantages < 0) & (loss > -advantages * clip_c)
        loss = torch.where(dual, -advantages * clip_c, loss)
    with torch.no_grad():
        stats = {
            "clipped_low": ((ratio < 1.0 - clip_low) & (advantages < 0)).float(),
            "clipped_high": ((ratio > 1.0 + clip_high) & (advantages > 0)).float(),
            "dual_clipped": dual.float(),
            # k1 estimate of KL(old || new) on the sampled tokens, as verl's actor/ppo_kl.
            "approx_kl": (old_logp - logp).detach(),
        }
    return loss, stats


# Aggregations reduce a per-token loss [N, T] to a scalar. Each takes the normalisers of the
# WHOLE mini-batch (over micro-batches and ranks), so summing the per-micro-batch values gives
# the same loss and gradient however the mini-batch is split.


@dataclass(frozen=True)
class Normalisers:
    """A mini-batch's global counts (over its micro-batches and every rank)."""

    num_tokens: float  # tokens that train
    num_seqs: float  # sequences that train
    max_len: int  # the response-length cap (Dr.GRPO's constant)


def token_mean(loss: torch.Tensor, mask: torch.Tensor, norm: Normalisers) -> torch.Tensor:
    """sum over all tokens / total tokens in the mini-batch (DAPO; verl's default)."""
    return (loss * mask).sum() / max(norm.num_tokens, 1.0)


def seq_mean_token_mean(loss: torch.Tensor, mask: torch.Tensor, norm: Normalisers) -> torch.Tensor:
    """mean over sequences of each sequence's token mean (original GRPO; favours short answers)."""
    per_seq = (loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_seq.sum() / max(norm.num_seqs, 1.0)


def seq_mean_token_sum(loss: torch.Tensor, mask: torch.Tensor, norm: Normalisers) -> torch.Tensor:
    """mean over sequences of each sequence's token sum."""
    return (loss * mask).sum() / max(norm.num_seqs, 1.0)


def seq_mean_token_sum_norm(
    loss: torch.Tensor, mask: torch.Tensor, norm: Normalisers
) -> torch.Tensor:
    """Dr.GRPO (arXiv 2503.20783): token sums divided by a constant (the response-length cap)
    rather than each sequence's length, removing the length bias."""
    return (loss * mask).sum() / (max(norm.num_seqs, 1.0) * max(norm.max_len, 1))


AGGREGATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, Normalisers], torch.Tensor]] = {
    "token-mean": token_mean,
    "seq-mean-token-mean": seq_mean_token_mean,
    "seq-mean-token-sum": seq_mean_token_sum,
    "seq-mean-token-sum-norm": seq_mean_token_sum_norm,
}
