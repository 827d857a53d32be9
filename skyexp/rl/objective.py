"""The RL objective over per-token tensors: pure, no model, no logits, no distributed calls.

    loss = agg(w_IS * L_rule) - entropy_coef * agg(w_row * H) + kl_coef * agg(KL(pi || ref))

L_rule is the policy loss: with `algo.policy_loss=ppo` the token rule's (the PPO clipped surrogate
of skyexp.algos.losses unless `entropy.token_rule` replaces it), otherwise GSPO's sequence-ratio
loss or CISPO's clipped-weight loss (skyexp.algos.seq_losses, which also see the mask), w_IS the
off-policy correction's weights (`algo.off_policy`: decoupled PPO's pi_prox / pi_sampler, or the
truncated importance weights of `algo.rollout_is`; 1 without), H the current policy's token
entropy (only when the bonus is on), w_row its row's weight (AER's hard prompts 1, easy ones 0; 1
for every other controller), KL the estimator `algo.kl_estimator` against the frozen reference
(only with `algo.kl_mode=loss`). Every term is
aggregated alike (`algo.loss_agg`) with the mini-batch's global normalisers, so the loss summed
over micro-batches and ranks does not depend on how the mini-batch is split.

`LossSpec` is built once per RL step from the run's bound algorithm (skyexp.config.algorithm)
and the step's coefficients; `objective` is what the micro-batch driver (skyexp.rl.update) calls.
How token log-probs and entropies are computed (full logits for a small vocabulary, a chunked
lm-head for a large one) is the driver's business: the objective only sees tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from skyexp.algos.losses import Normalisers
from skyexp.config.algorithm import Algorithm, PolicyLoss, Select

# The detached per-token sums objective() returns, in a fixed order (the driver accumulates them).
STAT_NAMES = (
    "pg",
    "clipped_low",
    "clipped_high",
    "dual_clipped",
    "rule_selected",
    "approx_kl",
    "kl_ref",
    "tokens",
)


@dataclass(frozen=True)
class LossSpec:
    """The objective's pieces for one step: the run's bound algorithm and this step's
    coefficients."""

    # (logp, old_logp, adv, selected, mask) -> (per-token loss, per-token stats)
    policy_loss: PolicyLoss
    # the token rule's selection (adv, old_logp, entropy, mask) -> bool [N, T]
    select: Select | None
    grads_zero_advantage: bool  # selected tokens get a gradient even where A = 0
    aggregate: Callable[[torch.Tensor, torch.Tensor, Normalisers], torch.Tensor]
    kl: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # estimator (logp, ref_logp) -> [N, T]
    entropy_coef: float = 0.0  # the bonus in force this step (the controller's output)
    kl_coef: float = 0.0  # weight of the KL-to-reference loss term
    topk: int = 0  # top-K log-probs the policy loss needs (SimKO); 0: none

    @property
    def needs_entropy(self) -> bool:
        """The driver must compute the current policy's token entropies (with gradient)."""
        return self.entropy_coef > 0

    @staticmethod
    def of(algorithm: Algorithm, entropy_coef: float) -> LossSpec:
        """The step's spec: the run's policy loss, token rule, aggregation and KL estimator, the
        controller's bonus in force this step and the KL loss weight."""
        a = algorithm
        return LossSpec(
            a.policy_loss,
            a.select,
            a.grads_zero_advantage,
            a.aggregate,
            a.kl,
            entropy_coef,
            a.kl_loss_coef,
            a.topk,
        )


@dataclass(frozen=True)
class TokenInputs:
    """One micro-batch's per-token tensors, all [N, T] on the same device."""

    logp: torch.Tensor  # current policy's log-probs of the sampled tokens (with gradient)
    old_logp: torch.Tensor  # the sampling policy's
    advantages: torch.Tensor  # per token (a sequence advantage broadcast over its tokens)
    mask: torch.Tensor  # 1 on tokens that train
    # current policy's token entropies (with gradient); spec.needs_entropy
    entropy: torch.Tensor | None = None
    # frozen reference's log-probs; needed when spec.kl_coef > 0
    ref_logp: torch.Tensor | None = None
    is_weights: torch.Tensor | None = None  # truncated importance weights (algo.rollout_is)
    selected: torch.Tensor | None = None  # bool, the token rule's selection
    entropy_rows: torch.Tensor | None = None  # [N] weight of each row's entropy bonus (AER)
    # spec.topk > 0 (SimKO): current log-probs [N, T, K] of each token's K most likely tokens
    # (with gradient), sampled token is the most likely [N, T] (bool), the sampler's entropies
    topk_logp: torch.Tensor | None = None
    top1: torch.Tensor | None = None
    sampler_entropy: torch.Tensor | None = None

    def extras(self) -> dict[str, torch.Tensor] | None:
        """The keywords of a policy loss that needs more than log-probs (SimKO's)."""
        if self.topk_logp is None:
            return None
        return {"topk_logp": self.topk_logp, "top1": self.top1, "entropy": self.sampler_entropy}


def objective(
    x: TokenInputs, norm: Normalisers, spec: LossSpec
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The micro-batch's share of the mini-batch loss (a scalar with gradient) and detached sums
    over its tokens (STAT_NAMES: summed policy loss, clip counts, tokens the rule selected, k1
    KL(old || new) as verl's ppo_kl, KL to the reference, tokens). Dividing a sum by the
    mini-batch's token count gives verl's per-token metric."""
    pg, st = spec.policy_loss(x.logp, x.old_logp, x.advantages, x.selected, x.mask, x.extras())
    if x.is_weights is not None:
        pg = pg * x.is_weights
    loss = spec.aggregate(pg, x.mask, norm)
    if spec.entropy_coef > 0:
        ent = x.entropy if x.entropy_rows is None else x.entropy * x.entropy_rows[:, None]
        loss = loss - spec.entropy_coef * spec.aggregate(ent, x.mask, norm)
    kl = spec.kl(x.logp, x.ref_logp) if spec.kl_coef > 0 else torch.zeros_like(x.logp)
    if spec.kl_coef > 0:
        loss = loss + spec.kl_coef * spec.aggregate(kl, x.mask, norm)
    m = x.mask
    with torch.no_grad():
        sel = x.selected if x.selected is not None else torch.zeros_like(m)
        parts = (
            pg * m,
            st["clipped_low"] * m,
            st["clipped_high"] * m,
            st["dual_clipped"] * m,
            sel * m,
            st["approx_kl"] * m,
            kl * m,
            m,
        )
        sums = {name: p.sum().double() for name, p in zip(STAT_NAMES, parts)}
        # seq_losses
        sums.update({k: (v * m).sum().double() for k, v in st.items() if k.startswith("loss/")})
    return loss, sums


def reduce_named(
    total: dict[str, torch.Tensor] | None, part: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Key-by-key sum of two dicts of scalar tensors (total None: a copy of part)."""
    if total is None:
        return dict(part)
    return {k: total[k] + part[k] for k in total}
