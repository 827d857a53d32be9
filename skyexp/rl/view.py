"""The sampler's view of a step's batch, built in one function: which rows train, the old-policy
log-probs and token entropies, the reference's log-probs, and the off-policy correction's weights.

Every row of a training group enters its group's baseline (masked truncated rows too), so each
needs old and reference log-probs, not only the rows with weight > 0 (issue 17).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from skyexp.config.stages import StagePlan
from skyexp.model.forward import forward_stats, sampling_view
from skyexp.records import Rollout
from skyexp.rl.collect import StepBatch
from skyexp.rl.state import Run, Timer


@dataclass(frozen=True)
class SamplerView:
    """Per-row and per-token inputs of the advantages and the update, all [G*n] or [G*n, R]."""

    weights: torch.Tensor  # [G*n] 1 on rows that train (0: filtered, or masked as truncated)
    in_groups: torch.Tensor  # [G*n] 1 on every row of a group that trains
    # [G*n, R] the sampler's (or the trainer's, algo.old_logprobs=recompute)
    old_logprobs: torch.Tensor
    entropy: torch.Tensor  # [G*n, R] the sampling policy's token entropies
    ref_logprobs: torch.Tensor | None  # [G*n, R] the reference's; None without a KL term
    # [G*n, R] the off-policy correction's weights (algo.off_policy / algo.rollout_is); None: none
    is_weights: torch.Tensor | None


def build_view(run: Run, stage: StagePlan, batch: StepBatch, t: Timer) -> SamplerView:
    """The step's SamplerView: old log-probs and entropies before any optimizer step (timed as
    old_logp), the reference's log-probs (timed as ref), the weights of the off-policy correction
    (algo.off_policy: pi_prox / pi_sampler for decoupled, algo.rollout_is's for tis)."""
    ro, alg = batch.rollout, run.algorithm
    in_groups = batch.row_weights(False)  # [G*n]
    with t("old_logp"):
        old_logp, ent = sampling_view(
            run.policy, ro, in_groups, alg.recompute_old, run.settings.fwd
        )
    with t("ref"):
        ref_logp = reference_logprobs(run, ro, in_groups)
    is_w = alg.is_weights(old_logp, ro.logprobs, ro.response_mask)  # [G*n, R] or None
    return SamplerView(
        batch.row_weights(stage.mask_truncated), in_groups, old_logp, ent, ref_logp, is_w
    )


def reference_logprobs(run: Run, ro: Rollout, rows: torch.Tensor) -> torch.Tensor | None:
    """The reference policy's log-probs [G*n, R] on the rows with rows > 0 (every row of a group
    that trains); None without a reference."""
    if run.live.ref is None:
        return None
    return forward_stats(
        run.live.ref, ro, (rows > 0).nonzero().squeeze(1), run.settings.fwd, False
    )[0]
