"""SimKO, Simple Pass@K Optimization (Peng et al., arXiv 2510.14807): a per-token policy loss that
works against the concentration of probability on the top-1 candidate, chosen by
`algo.policy_loss=simko` (registered in skyexp.algos.seq_losses.POLICY_LOSSES).

Besides PPO's inputs it needs, at every response token, the current policy's log-probs of its K
most likely tokens (`algo.simko_k`; skyexp.model.forward.token_topk_stats computes them a chunk
of tokens at a time, so memory stays flat at a 152k vocabulary), whether the sampled token is the
most likely one, and the sampler's token entropies.
"""

from __future__ import annotations

import torch

from skyexp.algos.losses import LOG_RATIO_CAP


def row_quantile(x: torch.Tensor, mask: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile of each row's masked values, linear interpolation as torch.quantile:
    x, mask [N, T] -> [N, 1]. A row with no masked value gets +inf (no token lies above it)."""
    m = mask.bool()
    n = m.sum(-1, keepdim=True)
    v = torch.where(m, x, torch.full_like(x, float("inf"))).sort(-1).values
    pos = q * (n - 1).clamp(min=0).to(x.dtype)
    lo = pos.floor().long().clamp(max=x.shape[-1] - 1)
    hi = pos.ceil().long().clamp(max=x.shape[-1] - 1)
    vlo, vhi = v.gather(-1, lo), v.gather(-1, hi)
    frac = pos - lo.to(x.dtype)
    out = torch.where(hi > lo, vlo + frac * (vhi - vlo), vlo)
    return torch.where(n > 0, out, torch.full_like(out, float("inf")))


def simko_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    simko_alpha: float,
    simko_lambda: float,
    simko_tau: float,
    topk_logp: torch.Tensor | None = None,
    top1: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SimKO (arXiv 2510.14807) per token. With r = pi(y_t) / pi_old(y_t), the K candidates c_k of
    `topk_logp` [N, T, K], sg the stop-gradient and w_t = 1[H_t > q_tau(H of its row)] (the
    row's high-entropy tokens, `simko_tau` the quantile, H the sampler's `entropy` [N, T]):

      A_t > 0 (correct):  rho = (1 - alpha w) r + (alpha w / K) sum_k sg(r) pi(c_k) / sg(pi(c_k))
      A_t < 0 (wrong):    rho = r, and A_t <- lambda A_t where w_t and y_t is the top-1 (`top1`)
      L_t = max(-A_t rho, -A_t clip(rho, 1 - clip_low, 1 + clip_high))

    rho's value is r, so the loss values are PPO's; its gradient on a correct high-entropy token
    is r [(1 - alpha) grad log pi(y) + (alpha / K) sum_k grad log pi(c_k)]: a share alpha of the
    update moves to the top-K candidates (probability spread over them instead of gathered on
    one), while on a wrong answer the top-1 tokens at its high-entropy positions are pushed down
    lambda times harder. PPO's clip acts on rho as on r.

    Checked against the authors' code (CLR-Lab/SimKO, verl/trainer/ppo/core_algos.py
    `compute_policy_loss_simko` and dp_actor.py): their top_i term (sg(r) / sg(r_k)) r_k is
    sg(r) pi(c_k) / sg(pi(c_k)), the old top-K log-probs cancelling, as here. Values read from
    their launch scripts and code, not from the paper's text (which could not be read from here):
    K = 3 (`top_k`), alpha = 0.01 (`mix_topk_coef`), tau = 0.8 (`tau`), lambda = 1.1 (a literal
    in their loss), GRPO advantages, clip 0.2, no KL. Departures: (1) correct / wrong is the sign
    of the token's advantage (theirs: reward 1 for the boost, a negative advantage sum for the
    penalty); with a 0/1 accuracy reward and a group baseline they differ only on all-correct
    groups, whose advantage is 0 and gradient nothing either way; (2) the entropies are the
    sampler's (theirs: the current policy's, detached), the same on the first mini-batch of the
    first epoch; (3) the candidates are the current policy's top K at every token, the sampled
    one included when it is among them (as theirs); (4) the log-ratio is capped at
    LOG_RATIO_CAP = 20 as in PPO. A masked token changes nothing, also not its row's quantile.
    Stats: PPO's clip counts on rho, `loss/simko_boosted` (tokens whose gradient is spread) and
    `loss/simko_penalised` (top-1 tokens penalised lambda times)."""
    ratio = torch.exp((logp - old_logp).clamp(max=LOG_RATIO_CAP))
    with torch.no_grad():
        high = (entropy > row_quantile(entropy, mask, simko_tau)) & mask.bool()
        boost = high & (adv > 0)
        penal = high & (adv < 0) & top1
    k = topk_logp.shape[-1]
    spread = ratio.detach() * torch.exp(topk_logp - topk_logp.detach()).sum(-1) / k
    a = simko_alpha * boost.to(ratio.dtype)
    rho = torch.where(boost, (1.0 - a) * ratio + a * spread, ratio)
    adv = torch.where(penal, simko_lambda * adv, adv)
    loss = torch.maximum(-adv * rho, -adv * rho.clamp(1.0 - clip_low, 1.0 + clip_high))
    with torch.no_grad():
        st = {
            "clipped_low": ((rho < 1.0 - clip_low) & (adv < 0)).float(),
            "clipped_high": ((rho > 1.0 + clip_high) & (adv > 0)).float(),
            "dual_clipped": torch.zeros_like(ratio),
            "approx_kl": (old_logp - logp).detach(),
            "loss/simko_boosted": boost.float(),
            "loss/simko_penalised": penal.float(),
        }
    return loss, st
