"""Policy losses other than PPO's per-token clipped surrogate, chosen by `algo.policy_loss`
(and PPO's own, `ppo`, which a token rule of skyexp.algos.token_rules may replace). Each is

  loss(logp, old_logp, adv, mask, *, clip_low, clip_high) -> (per-token loss [N, T], stats)

with the stats of skyexp.algos.losses.clipped_policy_loss (clipped_low, clipped_high,
dual_clipped, approx_kl; per token, detached), plus their own `loss/*` diagnostics (per token,
to be summed over the masked tokens; `loss_metrics` turns the sums into metrics). Unlike the token
rules these take the mask: GSPO's
ratio is a mean over each row's response tokens. A row is never split between micro-batches or
ranks, so the per-row mean is the same however a mini-batch is split. The per-token loss is then
aggregated like any other (`algo.loss_agg`).

Shapes: N sequences, T response positions; `adv` [N, T] is the sequence advantage broadcast over
its tokens (or a per-token advantage); `mask` [N, T] is 1 on tokens that train.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from skyexp.algos.losses import LOG_RATIO_CAP, clipped_policy_loss
from skyexp.algos.simko import simko_loss


def _stats(
    ratio: torch.Tensor,
    adv: torch.Tensor,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {
            "clipped_low": ((ratio < 1.0 - clip_low) & (adv < 0)).float(),
            "clipped_high": ((ratio > 1.0 + clip_high) & (adv > 0)).float(),
            "dual_clipped": torch.zeros_like(ratio),
            "approx_kl": (old_logp - logp).detach(),
        }


def seq_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean_t (log pi - log pi_old) over each row's masked tokens [N, 1] (0 for a row without any),
    capped above at LOG_RATIO_CAP = 20 so that exp stays finite (the guard of PPO's ratio,
    skyexp.algos.losses; verl caps GSPO's at 10). No lower bound: exp underflows to 0 harmlessly."""
    m = mask.to(logp.dtype)
    mean = ((logp - old_logp) * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1)
    return mean.clamp(max=LOG_RATIO_CAP)


def _clipped(
    ratio: torch.Tensor, adv: torch.Tensor, clip_low: float, clip_high: float
) -> torch.Tensor:
    return torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high))


def gspo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO (Zheng et al., arXiv 2507.18071): one importance ratio per sequence,
        s_i = exp(mean_t (log pi(y_i,t) - log pi_old(y_i,t))),
        L_i = max(-A_i s_i, -A_i clip(s_i, 1 - clip_low, 1 + clip_high)),
    put on each of the row's tokens, and aggregated as the paper's mean over sequences of L_i
    (`algo.loss_agg=seq-mean-token-mean`, enforced by the config check). The paper's ranges are
    tiny (3e-4 and 4e-4) because the ratio is a per-token geometric mean. On the unclipped branch
    (s > 1 + clip_high with A < 0, s < 1 - clip_low with A > 0) the gradient is the paper's,
    -A_i s_i grad mean_t log pi. Departures: the mean log-ratio is capped at 20 (s <= e^20 ~ 4.9e8),
    only so that exp stays finite: beyond it an A < 0 row's gradient is 0 (PPO's guard; verl caps
    at 10); A is read per token, so a per-token advantage is accepted too (the paper's A is per
    sequence)."""
    ratio = torch.exp(seq_log_ratio(logp, old_logp, mask)).expand_as(logp)
    st = _stats(ratio, adv, logp, old_logp, clip_low, clip_high)
    st.update(_seq_diagnostics(ratio.detach(), mask, clip_low, clip_high))
    return _clipped(ratio, adv, clip_low, clip_high), st


def _seq_diagnostics(
    s: torch.Tensor, mask: torch.Tensor, clip_low: float, clip_high: float
) -> dict[str, torch.Tensor]:
    """GSPO's own clip statistics, per token [N, T] so that the caller's masked token sums give
    per-sequence sums: each row's value is spread as value / (its masked tokens) over them.
    `s` [N, T]: the sequence ratio broadcast over the row's tokens (detached)."""
    with torch.no_grad():
        m = mask.to(s.dtype)
        w = m / m.sum(-1, keepdim=True).clamp(min=1)  # sums to 1 over each row that trains
        out = (s < 1.0 - clip_low) | (s > 1.0 + clip_high)
        return {
            "loss/gspo_seqs": w,
            "loss/gspo_seq_clipped": out.to(s.dtype) * w,
            "loss/gspo_ratio": s * w,
            "loss/gspo_ratio_sq": s * s * w,
        }


def gspo_token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO-token (arXiv 2507.18071, sec. 4.3): the ratio per token
        s_i,t = sg[s_i] * pi(y_i,t) / sg[pi(y_i,t)],
    whose value is s_i and whose gradient is s_i grad log pi(y_i,t); clipped like gspo_loss, with
    the same cap of s_i (only above, at e^20) and the same mean over sequences. With the same
    advantage on every token of a row it gives GSPO's gradient (the paper's remark; tested);
    per-token advantages (entropy shaping) then act token by token."""
    s = torch.exp(seq_log_ratio(logp, old_logp, mask)).detach()
    ratio = s * torch.exp(logp - logp.detach())
    st = _stats(ratio, adv, logp, old_logp, clip_low, clip_high)
    st.update(_seq_diagnostics(s.expand_as(logp), mask, clip_low, clip_high))
    return _clipped(ratio, adv, clip_low, clip_high), st


def cispo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CISPO (MiniMax, arXiv 2506.13585): clip the importance weight, not the update,
        L_t = -sg(clip(r_t, 1 - clip_low, 1 + clip_high)) * A_t * log pi(y_t),  r_t = pi / pi_old,
    so every token keeps its gradient, -clip(r_t) A_t grad log pi. The per-token value is the
    paper's objective, -A_t sg(clip(r_t)) log pi(y_t), as verl and TRL report it in actor/pg_loss
    (issue 25: it was -A_t clip(r_t), with the same gradient). The paper sets no lower bound in
    practice (clip_low = 1: the weight is at least 0). The ratio is only used detached and clipped,
    so no guard can take a token's gradient away. Departure: the paper's optional token mask M_t is
    not used. clipped_low / clipped_high count the tokens whose weight is clipped (either sign of
    A)."""
    with torch.no_grad():
        ratio = torch.exp((logp - old_logp).clamp(max=20.0))  # e^20: only keeps exp finite
        weight = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = -adv * weight * logp
    st = _stats(ratio, adv, logp, old_logp, clip_low, clip_high)
    st["clipped_low"] = (ratio < 1.0 - clip_low).float()
    st["clipped_high"] = (ratio > 1.0 + clip_high).float()
    st["loss/cispo_clipped"] = st["clipped_low"] + st["clipped_high"]
    return loss, st


def ce_gppo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    clip_c: float,
    ce_beta1: float,
    ce_beta2: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CE-GPPO (Su et al., arXiv 2509.20712): PPO's per-token surrogate, except that the tokens
    PPO's clip silences keep a bounded, scaled gradient through a stop-gradient form. With
    r_t = pi / pi_old and sg the stop-gradient,
        L_t = -beta1 (1 - clip_low)  * A_t * r_t / sg(r_t)   if r_t < 1 - clip_low and A_t < 0
        L_t = -beta2 (1 + clip_high) * A_t * r_t / sg(r_t)   if r_t > 1 + clip_high and A_t > 0
        L_t = -A_t r_t                                       otherwise
    ("otherwise" is PPO's max(-A r, -A clip(r)) exactly: outside those two regions the unclipped
    branch is the larger one), then, with clip_c > 1, the dual clip of A < 0 tokens:
    L_t = min(L_t, -A_t clip_c). r / sg(r) has the value 1 and the gradient grad log pi, so a
    clipped token's gradient is -beta (bound) A grad log pi, bounded however far r has moved.
    beta1 (`algo.ce_beta1`) scales the negative-advantage low-probability tokens below the range
    (exploitation: entropy falls), beta2 (`algo.ce_beta2`) the positive-advantage ones above it
    (exploration: entropy rises); beta1 = beta2 = 0 gives PPO's gradient, beta = 1 PPO's loss
    values. Tokens exactly at a bound are PPO's (the regions are strict).

    Checked against (issue 27): the authors' code, Kwai-Klear/CE-GPPO,
    verl/trainer/ppo/core_algos.py `compute_gppo_loss_general_beta` (also printed in their
    README), which is the three cases above and the dual clip, case for case. The paper's own
    text (arXiv PDF) could not be read from here; the formula rests on that code. Values read
    from the authors' launch scripts (recipe/dapo/*_gppo_v1_*.sh), not from the paper's text:
    beta1 = 0.5 (1.5B) / 0.75 (7B), beta2 = 1; clip_low = clip_high = 0.2; dual clip c = 10;
    GRPO advantages, token-mean, no KL, no entropy bonus, groups filtered by accuracy (DAPO's
    dynamic sampling), lr 1e-6. Departures: (1) their launch scripts also add 0.1 x the NLL of
    the correct responses (`positive_loss_coeff`, a Klear-Reasoner term that is not CE-GPPO's
    loss): not here; (2) their code asserts a dual clip (c > 1) always; here clip_c = 0 turns it
    off; (3) r / sg(r) is computed as exp(log pi - sg(log pi)) and the log-ratio is capped at
    LOG_RATIO_CAP = 20 (skyexp.algos.losses), so nothing overflows where r is extreme (their code
    divides by the detached ratio). The stats are PPO's: clipped_low / clipped_high count exactly
    the tokens whose gradient CE-GPPO rescales (`actor/pg_clipfrac_low|high`), dual_clipped the
    dual clip's, and `loss/ce_gppo_clipped` the rescaled tokens."""
    ratio = torch.exp((logp - old_logp).clamp(max=LOG_RATIO_CAP))
    unit = torch.exp(logp - logp.detach())  # value 1, gradient grad log pi
    with torch.no_grad():
        low = (ratio < 1.0 - clip_low) & (adv < 0)
        high = (ratio > 1.0 + clip_high) & (adv > 0)
    loss = torch.where(
        low,
        -ce_beta1 * (1.0 - clip_low) * adv * unit,
        torch.where(high, -ce_beta2 * (1.0 + clip_high) * adv * unit, -adv * ratio),
    )
    dual = torch.zeros_like(low)
    if clip_c > 1.0:
        dual = (adv < 0) & (loss > -adv * clip_c)
        loss = torch.where(dual, -adv * clip_c, loss)
    st = _stats(ratio, adv, logp, old_logp, clip_low, clip_high)
    st["dual_clipped"] = dual.detach().float()
    st["loss/ce_gppo_clipped"] = st["clipped_low"] + st["clipped_high"]
    return loss, st


def loss_metrics(sums: dict[str, float], trained_tokens: float) -> dict[str, float]:
    """The loss-specific diagnostics from the masked token sums of the `loss/*` stats above
    (summed over micro-batches, mini-batches, epochs and ranks):
      actor/gspo_seq_clipfrac   share of trained sequences whose ratio s_i lies outside
                                [1 - clip_low, 1 + clip_high] (either side, either sign of A)
      actor/gspo_ratio_mean, actor/gspo_ratio_std   of s_i over the trained sequences
      actor/cispo_clipfrac      share of trained tokens whose IS weight clip(r_t) was clipped
      actor/ce_gppo_clipfrac    share of trained tokens outside the clip range whose gradient
                                CE-GPPO keeps, scaled by ce_beta1 / ce_beta2
      actor/simko_boost_frac, actor/simko_penalty_frac   shares of trained tokens whose gradient
                                SimKO spreads over the top-K / whose top-1 it penalises
    Empty for the losses without any (ppo)."""
    out: dict[str, float] = {}
    if "loss/gspo_seqs" in sums:
        n = max(sums["loss/gspo_seqs"], 1e-12)
        mean = sums["loss/gspo_ratio"] / n
        out["actor/gspo_seq_clipfrac"] = sums["loss/gspo_seq_clipped"] / n
        out["actor/gspo_ratio_mean"] = mean
        out["actor/gspo_ratio_std"] = max(sums["loss/gspo_ratio_sq"] / n - mean * mean, 0.0) ** 0.5
    if "loss/cispo_clipped" in sums:
        out["actor/cispo_clipfrac"] = sums["loss/cispo_clipped"] / max(trained_tokens, 1.0)
    if "loss/ce_gppo_clipped" in sums:
        out["actor/ce_gppo_clipfrac"] = sums["loss/ce_gppo_clipped"] / max(trained_tokens, 1.0)
    if "loss/simko_boosted" in sums:
        out["actor/simko_boost_frac"] = sums["loss/simko_boosted"] / max(trained_tokens, 1.0)
        out["actor/simko_penalty_frac"] = sums["loss/simko_penalised"] / max(trained_tokens, 1.0)
    return out


def ppo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    clip_c: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's per-token clipped surrogate (skyexp.algos.losses.clipped_policy_loss, dual clip with
    clip_c > 1); the mask is not needed. An `entropy.token_rule` with a loss of its own replaces
    it."""
    return clipped_policy_loss(logp, old_logp, adv, clip_low, clip_high, clip_c)


class PolicyLossEntry(NamedTuple):
    """A registered policy loss and what it needs of the rest of the config (checked at config
    validation, skyexp.config.checks), as skyexp.algos.advantages.Estimator does for estimators."""

    fn: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]  # config values by keyword
    # PPO's per-token surrogate: a token rule that replaces the surrogate (entropy.token_rule)
    # applies to it only
    ppo_surrogate: bool = False
    # takes the dual clip of A < 0 tokens (algo.clip_c)
    dual_clip: bool = False
    # takes each token's top-K log-probs (K = algo.simko_k), top-1 flag and the sampler's
    # entropies as keywords topk_logp, top1, entropy (SimKO); not under sequence parallelism
    topk: bool = False
    # one ratio per sequence (GSPO): the paper's mean over sequences (algo.loss_agg), and the
    # trainer's old log-probs whenever the sampler is not its own model (algo.old_logprobs)
    sequence_ratio: bool = False


POLICY_LOSSES: dict[str, PolicyLossEntry] = {
    "ppo": PolicyLossEntry(ppo_loss, ppo_surrogate=True, dual_clip=True),
    "gspo": PolicyLossEntry(gspo_loss, sequence_ratio=True),
    "gspo_token": PolicyLossEntry(gspo_token_loss, sequence_ratio=True),
    "cispo": PolicyLossEntry(cispo_loss),
    "ce_gppo": PolicyLossEntry(ce_gppo_loss, dual_clip=True),
    "simko": PolicyLossEntry(simko_loss, topk=True),
}
