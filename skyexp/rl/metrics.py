"""Per-step metrics under stable, verl-compatible names (see DESIGN.md), summed over ranks.

Generation metrics (score, lengths, solve shares, reward terms) cover every sample the step
generated; advantage metrics cover the rows that train; actor/* come from the update.
"""

from __future__ import annotations

from typing import Any

import torch

from skyexp.algos.rollout_is import is_weight_stats
from skyexp.config import AlgoConfig
from skyexp.distributed import all_reduce_max, all_reduce_sum
from skyexp.records import UpdateStats
from skyexp.rl.collect import StepBatch
from skyexp.rl.update import global_token_mean
from skyexp.tracking import Table


def step_metrics(
    batch: StepBatch,
    adv: torch.Tensor,  # [G*n] advantages (0 on rows that do not train), or [G*n, R] per token
    weights: torch.Tensor,  # [G*n] 1 on rows that train
    stats: UpdateStats,
    timings: dict[str, float],
    stage: int,
    rl_step: int,
    device: torch.device,
    extra: dict[str, float] | None = None,
) -> dict[str, Any]:
    ro = batch.rollout
    lengths = ro.response_lengths.float()  # [G*n]
    solved = batch.correct.sum(-1)  # [G]
    n = batch.correct.shape[1]
    tr = weights > 0
    # issue 17: per-token advantages [G*n, R] are summarised over the trained rows' response tokens
    adv_tr = adv[tr] if adv.dim() == 1 else adv[tr][ro.response_mask[tr] > 0]
    terms = sorted(batch.terms)
    local = [
        batch.rewards.sum().item(), batch.rewards.numel(), lengths.sum().item(), ro.truncated.float().sum().item(),
        (solved == 0).sum().item(), (solved == n).sum().item(), batch.correct.shape[0], batch.kept.sum().item(),
        batch.train.sum().item(), batch.statuses.count("timeout"), batch.statuses.count("error"),
        sum(x is None for x in batch.extracted), batch.correct.sum().item(),
        adv_tr.sum().item(), adv_tr.pow(2).sum().item(), adv_tr.numel(),
        *[batch.terms[k].sum().item() for k in terms],
    ]
    g = all_reduce_sum(local, device).tolist()
    samples, groups, trained = g[1], g[6], max(g[15], 1.0)
    adv_mean = g[13] / trained
    step_time = timings.get("timing_s/step", 0.0)
    out: dict[str, Any] = {
        "train/rl_step": rl_step,
        "train/stage": stage,
        "rollout/temperature": ro.temperature,
        "critic/score/mean": g[0] / samples,
        "critic/advantages/mean": adv_mean,
        "critic/advantages/std": max(g[14] / trained - adv_mean**2, 0.0) ** 0.5,
        "critic/advantages/max": all_reduce_max(float(adv_tr.max()) if adv_tr.numel() else -float("inf"), device),
        "critic/advantages/min": -all_reduce_max(-float(adv_tr.min()) if adv_tr.numel() else -float("inf"), device),
        "response_length/mean": g[2] / samples,
        "response_length/max": all_reduce_max(float(lengths.max()), device),
        "response_length/clip_ratio": g[3] / samples,
        "batch/solve_none": g[4] / groups,
        "batch/solve_all": g[5] / groups,
        "batch/kept_groups": g[7] / groups,
        "batch/train_groups": g[8],
        "batch/gen_batches": batch.gen_batches,
        "batch/pass@1": g[12] / samples,  # share of correct samples (the accuracy term alone)
        "reward/timeouts": g[9],
        "reward/errors": g[10],
        "reward/no_answer": g[11] / samples,
        **{f"reward/{k}/mean": g[16 + i] / samples for i, k in enumerate(terms)},
        "actor/entropy": stats.entropy,
        "actor/entropy_coeff": stats.entropy_coef,
        "actor/pg_loss": stats.pg_loss,
        "actor/pg_clipfrac": stats.clipfrac_low + stats.clipfrac_high,
        "actor/pg_clipfrac_low": stats.clipfrac_low,
        "actor/pg_clipfrac_high": stats.clipfrac_high,
        "actor/pg_clipfrac_lower": stats.dualclip_frac,  # verl's name: the dual-clip share
        "actor/token_rule_frac": stats.rule_frac,
        "actor/ppo_kl": stats.ppo_kl,
        "actor/grad_norm": stats.grad_norm,
        "actor/optimizer_steps": stats.optimizer_steps,
        "perf/throughput": (g[2] / step_time) if step_time else 0.0,  # response tokens / s, all ranks
        **timings,
        **(extra or {}),
    }
    if stats.kl_ref is not None:
        out["actor/kl_loss"] = stats.kl_ref
    if stats.entropy_hist is not None:
        out["actor/entropy_hist"] = stats.entropy_hist
    return out


SAMPLE_COLUMNS = ["rl_step", "prompt", "completion", "answer", "extracted", "reward", "correct", "length", "truncated"]


def sample_table(batch: StepBatch, rl_step: int, rows: int) -> Table:
    """Up to `rows` of this rank's samples, one from each group in turn (first samples first), so
    the table shows several prompts before it repeats one."""
    n = batch.rollout.n
    groups = len(batch.prompts)
    order = [g * n + j for j in range(n) for g in range(groups)][:rows]
    lengths = batch.rollout.response_lengths.tolist()
    out = []
    for r in order:
        g, j = divmod(r, n)
        out.append([rl_step, batch.prompts[g], batch.texts[r], batch.answers[g], batch.extracted[r],
                    float(batch.rewards[g, j]), bool(batch.correct[g, j] > 0), int(lengths[r]), bool(batch.rollout.truncated[r])])
    return Table(SAMPLE_COLUMNS, out)


def mismatch_metrics(
    a: AlgoConfig,
    old_logp: torch.Tensor,  # [G*n, R] the old-policy log-probs the update used
    sampler_logp: torch.Tensor,  # [G*n, R] the engine's sampling log-probs
    trained: torch.Tensor,  # [G*n, R] 1 on tokens that train
    is_w: torch.Tensor | None,  # [G*n, R] truncated-IS weights; None without the correction
    stats: UpdateStats,
    device: torch.device,
) -> dict[str, float]:
    """How far the trainer's log-probs are from the sampler's (vLLM vs FSDP numerics), all ranks:
    over every trained token when the trainer recomputed them, else over the first mini-batch the
    update forwarded (UpdateStats). Plus the truncated-IS weights when the correction is on."""
    if a.old_logprobs == "recompute":
        diff = (old_logp - sampler_logp).abs()
        gap = diff * trained
        out = {"rollout/logprob_diff": global_token_mean(diff, trained, device),
               "rollout/logprob_diff_max": all_reduce_max(float(gap.max()) if gap.numel() else 0.0, device)}
    else:
        out = {"rollout/logprob_diff": stats.sampler_logprob_diff, "rollout/logprob_diff_max": stats.sampler_logprob_diff_max}
    if a.rollout_is != "none" and is_w is not None:
        w_sum, at_cap, tokens = all_reduce_sum(list(is_weight_stats(is_w, trained, a.rollout_is_cap)), device).tolist()
        out["rollout/is_weight_mean"] = w_sum / max(tokens, 1.0)
        out["rollout/is_truncated_frac"] = at_cap / max(tokens, 1.0)
    return out
