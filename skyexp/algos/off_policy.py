"""Off-policy correction of the policy loss, chosen by `algo.off_policy`.

Three policies meet in an RL step: pi_behav, the sampler that generated the batch (its log-probs
are the rollout's: the engine's numerics, and in an asynchronous loop weights k versions old);
pi_prox, the trainer's current weights before this step's update (log-probs recomputed once, no
gradient: `algo.old_logprobs=recompute`); and pi_theta, the policy being optimised. A mode says
which of the first two PPO's ratio is taken against and which importance weight multiplies each
token's policy loss. In terms of the keys that existed before it:

  algo.off_policy  ratio against    weight on each token's loss        old_logprobs / rollout_is
  auto (default)   as old_logprobs  as rollout_is                      any (today's keys: every
                                                                       preset runs as before)
  behaviour        pi_behav         none                               rollout (auto on hf) / none
  tis              pi_prox          min(pi_prox / pi_behav, rollout_is_cap),
                                    per token or per sequence          recompute / token|sequence
  decoupled        pi_prox          pi_prox / pi_behav, 0 above cap    recompute / none

`auto` with recompute and rollout_is=none is the one combination no name covers: PPO against
pi_prox with no weight (what verl's synchronous trainer does by default; exact when the sampler is
the trainer's own model). `behaviour` is AReaL's setting without recomputation
(recompute_logprob=false): the sampler's log-probs are the old policy. The checks
(skyexp.config.checks) read each entry's flags, not its name.

Decoupled PPO (Fu et al., "AReaL", arXiv 2505.24298, sec. 5, Eq. 5):

    J(theta) = E_{a_t ~ pi_behav} [ sum_t min( u_t^behav A_t,
                                   (pi_prox / pi_behav) clip(u_t, 1 - eps, 1 + eps) A_t ) ]
             = E [ sum_t (pi_prox / pi_behav) min( u_t A_t, clip(u_t, 1 - eps, 1 + eps) A_t ) ],

u_t = pi_theta / pi_prox, u_t^behav = pi_theta / pi_behav = (pi_prox / pi_behav) u_t; the weight
is positive, so it factors out of the min. As a per-token loss (skyexp's sign):

    L_t = w_t max(-A_t u_t, -A_t clip(u_t, 1 - clip_low, 1 + clip_high)),
    w_t = sg(pi_prox / pi_behav) if pi_prox / pi_behav <= C else 0,      C = algo.off_policy_cap.

The trust region is centred on a recent policy (pi_prox) rather than on a stale sampler, and the
gap between sampler and pi_prox is corrected by the weight instead of being clipped: the paper's
argument is that clipping against pi_behav pulls pi_theta back towards an old version.
With pi_prox = pi_behav the weight is exactly 1 and L_t is PPO's, bit for bit.

What was read where: the equation in two independent third-party quotations of the paper's
sec. 5.2 / Eq. 5, one in each of the two forms above (the paper's PDF itself was not reachable
from the machine this was written on), which agree with AReaL's documentation
(docs/en/best_practices/algo_perf.md: the factored form, the weight named behave_imp_weight);
the cap in AReaL's code (ppo_actor_loss_fn, `behav_imp_weight_cap`): tokens whose weight exceeds
it get weight 0 and stay in the token-mean's denominator, the cap must be > 1, its default is None
(no cap), and the dual clip is applied before the weight; AReaL's documentation recommends a cap
of 5. Neither quotation of the paper's equation has a cap.

Departures:
- The cap is on by default, C = 5 (AReaL's recommended value, not its code's default). In a
  synchronous run the weight is only the sampler/trainer gap (1 up to rounding for the hf engine,
  which runs the trainer's own model; close to 1 for vLLM), so C = 5 does not bind there; with
  stale samples it drops the tokens the sampler gave less than a fifth of pi_prox's probability,
  the unbounded weights that issue 30 cites as collapsing entropy at staleness 3
  (tinker-cookbook#822). A cap near 1 would drop tokens that a few updates legitimately up-weight;
  no cap leaves a single token's weight unbounded.
- Past the cap a token is dropped (weight 0), as AReaL's code does, not truncated to C: truncation
  is `tis`. A dropped token keeps its place in the loss's normalisers, as in AReaL.
- Clip ranges are asymmetric (algo.clip_low / clip_high, DAPO's clip-higher) and the dual clip
  (algo.clip_c) applies inside the surrogate before the weight, as in AReaL's code; the paper has
  one eps. The policy loss can be any per-token one (ppo, cispo, ce_gppo, a token rule), its ratio
  taken against pi_prox; sequence-ratio losses (gspo, gspo_token) are refused at validation, since
  a per-token weight would re-enter the token-level noise their sequence ratio removes.
- The weight multiplies the policy term only; the entropy bonus and the KL-to-reference term are
  not weighted (as with `tis`). Aggregation is `algo.loss_agg` (the paper writes a sum over
  tokens; AReaL takes the token mean).
- pi_prox is the weights at the start of the RL step for every epoch and mini-batch of its update,
  as AReaL recomputes it once per training step.

Shapes: N sequences, R response positions; `mask` is 1 on response tokens. Weights carry no
gradient; padding gets weight 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch


def decoupled_weights(
    prox_logp: torch.Tensor,  # [N, R] pi_prox: the trainer's log-probs before the update
    behav_logp: torch.Tensor,  # [N, R] pi_behav: the sampler's
    mask: torch.Tensor,  # [N, R] 1 on response tokens
    *,
    off_policy_cap: float,
) -> torch.Tensor:
    """w_t = pi_prox / pi_behav where it is at most off_policy_cap, 0 where it is above; [N, R].
    Compared and exponentiated in log space, so no ratio overflows."""
    log_w = (prox_logp - behav_logp).detach()
    bound = math.log(off_policy_cap)
    w = torch.exp(log_w.clamp(max=bound))
    return torch.where(log_w <= bound, w, torch.zeros_like(w)) * mask


def decoupled_weight_sums(
    weights: torch.Tensor,  # [N, R] decoupled_weights' output
    prox_logp: torch.Tensor,  # [N, R]
    behav_logp: torch.Tensor,  # [N, R]
    mask: torch.Tensor,  # [N, R] 1 on the tokens that train
    *,
    off_policy_cap: float,
) -> dict[str, tuple[float, float]]:
    """Metric name -> (sum, tokens) over mask: the mean weight the loss used (dropped tokens as 0)
    and the share of tokens the cap dropped (pi_prox / pi_behav > off_policy_cap; AReaL's
    behave_imp_weight and behave_mask)."""
    m = mask > 0
    capped = ((prox_logp - behav_logp) > math.log(off_policy_cap)) & m
    tokens = float(m.sum())
    return {
        "actor/off_policy_weight_mean": (float((weights * mask).sum()), tokens),
        "actor/off_policy_capped_frac": (float(capped.sum()), tokens),
    }


class OffPolicyEntry(NamedTuple):
    """A mode of algo.off_policy: its weights and what it needs of the other keys (read by the
    checks, skyexp.config.checks, as PolicyLossEntry's flags are)."""

    # (prox, behav, mask, *, config values) -> weights [N, R]; None: algo.rollout_is's
    weights: Callable[..., torch.Tensor] | None = None
    # (weights, prox, behav, mask, *, config values) -> {metric: (sum, tokens)}; None: rollout_is's
    sums: Callable[..., dict[str, tuple[float, float]]] | None = None
    # the ratio against pi_prox (True: the trainer recomputes), pi_behav (False), either (None)
    prox: bool | None = None
    # algo.rollout_is must be token | sequence (True), none (False), either (None)
    rollout_is: bool | None = None
    # a weight per token, which a sequence-ratio loss (GSPO) cannot take
    per_token: bool = False


OFF_POLICY: dict[str, OffPolicyEntry] = {
    "auto": OffPolicyEntry(),
    "behaviour": OffPolicyEntry(prox=False, rollout_is=False),
    "tis": OffPolicyEntry(prox=True, rollout_is=True),
    "decoupled": OffPolicyEntry(
        decoupled_weights, decoupled_weight_sums, prox=True, rollout_is=False, per_token=True
    ),
}
