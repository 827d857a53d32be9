"""Per-step metrics under stable, verl-compatible names (docs/design.md lists them and how they
map to verl's), summed over ranks.

Generation metrics (score, rewards, lengths, solve shares, reward terms) cover every sample the
step generated; advantage metrics cover the rows that train; actor/* come from the update.
"""

from __future__ import annotations

from typing import Any

import torch

from skyexp.algos.rollout_is import is_weight_stats
from skyexp.config import AlgoConfig
from skyexp.distributed import all_reduce_max, all_reduce_max_list, all_reduce_sum
from skyexp.records import UpdateStats
from skyexp.rl.collect import StepBatch
from skyexp.rl.update import global_token_mean
from skyexp.tracking import Table

RESPONSE_TOKEN_SECTIONS = ("gen", "reward")  # timing_per_token_ms over response tokens; the rest over all tokens
PER_TOKEN_SECTIONS = (*RESPONSE_TOKEN_SECTIONS, "old_logp", "ref", "update")


def _extremes(named: dict[str, torch.Tensor], device: torch.device) -> dict[str, float]:
    """{name/max, name/min} of each local tensor over all ranks, in one collective (an empty tensor
    contributes nothing; with nothing anywhere the max is -inf, the min +inf)."""
    inf = float("inf")
    local = [v for x in named.values() for v in ((float(x.max()), -float(x.min())) if x.numel() else (-inf, -inf))]
    g = all_reduce_max_list(local, device)
    out = {}
    for i, name in enumerate(named):
        out[f"{name}/max"], out[f"{name}/min"] = g[2 * i], -g[2 * i + 1]
    return out


def _per_token_ms(timings: dict[str, float], response_tokens: float, all_tokens: float) -> dict[str, float]:
    """verl's timing_per_token_ms/<section>: generation and scoring per response token, the passes
    over whole sequences (old log-probs, reference, update) per prompt + response token."""
    out = {}
    for name in PER_TOKEN_SECTIONS:
        tokens = response_tokens if name in RESPONSE_TOKEN_SECTIONS else all_tokens
        if f"timing_s/{name}" in timings and tokens > 0:
            out[f"timing_per_token_ms/{name}"] = timings[f"timing_s/{name}"] * 1000 / tokens
    return out


def step_metrics(
    batch: StepBatch,
    adv: torch.Tensor,  # [G*n] advantages (0 on rows that do not train)
    weights: torch.Tensor,  # [G*n] 1 on rows that train
    stats: UpdateStats,
    timings: dict[str, float],
    stage: int,
    rl_step: int,
    device: torch.device,
    extra: dict[str, float] | None = None,
    rewards: torch.Tensor | None = None,  # [G, n] rewards the advantages used (after a KL penalty); default batch.rewards
) -> dict[str, Any]:
    ro = batch.rollout
    lengths = ro.response_lengths.float()  # [G*n]
    prompt_lengths = ro.attention_mask[:, : ro.prompt_len].sum(-1).float()  # [G*n]
    rewards = batch.rewards if rewards is None else rewards
    solved = batch.correct.sum(-1)  # [G]
    n = batch.correct.shape[1]
    tr = weights > 0
    terms = sorted(batch.terms)
    local = [
        batch.rewards.sum().item(), batch.rewards.numel(), lengths.sum().item(), ro.truncated.float().sum().item(),
        (solved == 0).sum().item(), (solved == n).sum().item(), batch.correct.shape[0], batch.kept.sum().item(),
        batch.train.sum().item(), batch.statuses.count("timeout"), batch.statuses.count("error"),
        sum(x is None for x in batch.extracted), batch.correct.sum().item(),
        adv[tr].sum().item(), adv[tr].pow(2).sum().item(), tr.sum().item(), rewards.sum().item(), prompt_lengths.sum().item(),
        *[batch.terms[k].sum().item() for k in terms],
    ]
    g = all_reduce_sum(local, device).tolist()
    samples, groups, trained = g[1], g[6], max(g[15], 1.0)
    adv_mean = g[13] / trained
    step_time = timings.get("timing_s/step", 0.0)
    ext = _extremes({"critic/score": batch.rewards.flatten(), "critic/rewards": rewards.flatten(),
                     "critic/advantages": adv[tr], "response_length": lengths, "prompt_length": prompt_lengths}, device)
    out: dict[str, Any] = {
        "train/rl_step": rl_step,
        "train/stage": stage,
        "rollout/temperature": ro.temperature,
        "critic/score/mean": g[0] / samples,
        "critic/rewards/mean": g[16] / samples,
        "critic/advantages/mean": adv_mean,
        "critic/advantages/std": max(g[14] / trained - adv_mean**2, 0.0) ** 0.5,
        **ext,
        "response_length/mean": g[2] / samples,
        "response_length/clip_ratio": g[3] / samples,
        "prompt_length/mean": g[17] / samples,
        "batch/solve_none": g[4] / groups,
        "batch/solve_all": g[5] / groups,
        "batch/kept_groups": g[7] / groups,
        "batch/train_groups": g[8],
        "batch/gen_batches": batch.gen_batches,
        "batch/pass@1": g[12] / samples,  # share of correct samples (the accuracy term alone)
        "reward/timeouts": g[9],
        "reward/errors": g[10],
        "reward/no_answer": g[11] / samples,
        **{f"reward/{k}/mean": g[18 + i] / samples for i, k in enumerate(terms)},
        **_actor_metrics(stats),
        "perf/throughput": (g[2] / step_time) if step_time else 0.0,  # response tokens / s, all ranks
        "perf/total_num_tokens": g[2] + g[17],  # prompt + response tokens, all ranks (verl's)
        **_per_token_ms(timings, g[2], g[2] + g[17]),
        **timings,
        **(extra or {}),
    }
    if stats.entropy_hist is not None:
        out["actor/entropy_hist"] = stats.entropy_hist
    return out


def _actor_metrics(stats: UpdateStats) -> dict[str, float]:
    out = {
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
    }
    if stats.kl_ref is not None:
        out["actor/kl_loss"] = stats.kl_ref
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
