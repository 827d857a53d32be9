"""Per-step metrics under stable, verl-compatible names (docs/design.md lists them and how they
map to verl's), summed over ranks.

Generation metrics (score, rewards, lengths, solve shares, reward terms) cover every sample the
step generated; advantage metrics cover the rows that train; actor/* come from the update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from skyexp.config.algorithm import WeightSums
from skyexp.distributed import all_reduce_max, all_reduce_max_list, all_reduce_sum
from skyexp.records import UpdateStats
from skyexp.rl.collect import StepBatch
from skyexp.rl.update import global_token_mean
from skyexp.tracking import Table

# timing_per_token_ms over response tokens; the rest over all tokens
RESPONSE_TOKEN_SECTIONS = ("gen", "reward")
PER_TOKEN_SECTIONS = (*RESPONSE_TOKEN_SECTIONS, "old_logp", "ref", "update")


def _extremes(named: dict[str, torch.Tensor], device: torch.device) -> dict[str, float]:
    """{name/max, name/min} of each local tensor over all ranks, in one collective (an empty tensor
    contributes nothing; with nothing anywhere the max is -inf, the min +inf)."""
    inf = float("inf")
    local = [
        v
        for x in named.values()
        for v in ((float(x.max()), -float(x.min())) if x.numel() else (-inf, -inf))
    ]
    g = all_reduce_max_list(local, device)
    out = {}
    for i, name in enumerate(named):
        out[f"{name}/max"], out[f"{name}/min"] = g[2 * i], -g[2 * i + 1]
    return out


def _per_token_ms(
    timings: dict[str, float], response_tokens: float, all_tokens: float
) -> dict[str, float]:
    """verl's timing_per_token_ms/<section>: generation and scoring per response token, the passes
    over whole sequences (old log-probs, reference, update) per prompt + response token."""
    out = {}
    for name in PER_TOKEN_SECTIONS:
        tokens = response_tokens if name in RESPONSE_TOKEN_SECTIONS else all_tokens
        if f"timing_s/{name}" in timings and tokens > 0:
            out[f"timing_per_token_ms/{name}"] = timings[f"timing_s/{name}"] * 1000 / tokens
    return out


@dataclass(frozen=True)
class Trained:
    """What the update trained on, as the metrics summarise it."""

    advantages: torch.Tensor  # [G*n] (0 on rows that do not train), or [G*n, R] per token
    weights: torch.Tensor  # [G*n] 1 on rows that train
    # [G, n] the rewards the advantages used (after a KL penalty); None: the batch's
    rewards: torch.Tensor | None = None


def _local_sums(batch: StepBatch, t: Trained) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """This rank's sums and counts under their names, and the tensors whose extremes are logged."""
    ro = batch.rollout
    lengths = ro.response_lengths.float()  # [G*n]
    prompt_lengths = ro.attention_mask[:, : ro.prompt_len].sum(-1).float()  # [G*n]
    rewards = batch.rewards if t.rewards is None else t.rewards
    solved, n, tr = batch.correct.sum(-1), batch.correct.shape[1], t.weights > 0  # [G], n, [G*n]
    # per-token advantages [G*n, R] are summarised over the trained rows' response tokens
    adv = (
        t.advantages[tr] if t.advantages.dim() == 1 else t.advantages[tr][ro.response_mask[tr] > 0]
    )
    sums = {
        "score": batch.rewards.sum().item(),
        "samples": batch.rewards.numel(),
        "rewards": rewards.sum().item(),
        "response_tokens": lengths.sum().item(),
        "prompt_tokens": prompt_lengths.sum().item(),
        "truncated": ro.truncated.float().sum().item(),
        "solve_none": (solved == 0).sum().item(),
        "solve_all": (solved == n).sum().item(),
        "groups": batch.correct.shape[0],
        "kept": batch.kept.sum().item(),
        "train_groups": batch.train.sum().item(),
        "timeouts": batch.statuses.count("timeout"),
        "errors": batch.statuses.count("error"),
        "no_answer": sum(x is None for x in batch.extracted),
        "correct": batch.correct.sum().item(),
        "adv": adv.sum().item(),
        "adv_sq": adv.pow(2).sum().item(),
        "adv_n": adv.numel(),
        **{f"term/{k}": batch.terms[k].sum().item() for k in sorted(batch.terms)},
    }
    extremes = {
        "critic/score": batch.rewards.flatten(),
        "critic/rewards": rewards.flatten(),
        "critic/advantages": adv,
        "response_length": lengths,
        "prompt_length": prompt_lengths,
    }
    return sums, extremes


@dataclass(frozen=True)
class Generated:
    """What the loop reads of a step's generation, over every sample of every rank."""

    score: float  # mean weighted reward (critic/score/mean)
    pass1: float  # share of correct samples (batch/pass@1)


def step_metrics(
    batch: StepBatch,
    trained: Trained,
    stats: UpdateStats,
    timings: dict[str, float],
    position: tuple[int, int],
    device: torch.device,
    extra: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The step's metrics, all ranks (summarise's, without the typed part)."""
    return summarise(batch, trained, stats, timings, position, device, extra)[0]


def summarise(batch: StepBatch, trained: Trained, stats: UpdateStats, timings: dict[str, float],
              position: tuple[int, int], device: torch.device, extra: dict[str, float] | None = None
              ) -> tuple[dict[str, Any], Generated]:
    """The step's metrics, all ranks: generation (every sample), advantages (rows that train),
    actor/* (the update), timings; and the typed generation summary. position = (stage, RL step)."""
    local, extremes = _local_sums(batch, trained)
    g = dict(zip(local, all_reduce_sum(list(local.values()), device).tolist()))
    samples, groups, adv_n = g["samples"], g["groups"], max(g["adv_n"], 1.0)
    gen = Generated(score=g["score"] / samples, pass1=g["correct"] / samples)
    adv_mean = g["adv"] / adv_n
    step_time = timings.get("timing_s/step", 0.0)
    out: dict[str, Any] = {
        "train/rl_step": position[1],
        "train/stage": position[0],
        "rollout/temperature": batch.rollout.temperature,
        "critic/score/mean": gen.score,
        "critic/rewards/mean": g["rewards"] / samples,
        "critic/advantages/mean": adv_mean,
        "critic/advantages/std": max(g["adv_sq"] / adv_n - adv_mean**2, 0.0) ** 0.5,
        **_extremes(extremes, device),
        "response_length/mean": g["response_tokens"] / samples,
        "response_length/clip_ratio": g["truncated"] / samples,
        "prompt_length/mean": g["prompt_tokens"] / samples,
        **{f"batch/{k}": g[k] / groups for k in ("solve_none", "solve_all")},
        "batch/kept_groups": g["kept"] / groups,
        "batch/train_groups": g["train_groups"],
        "batch/gen_batches": batch.gen_batches,
        "batch/pass@1": gen.pass1,  # share of correct samples (the accuracy term alone)
        "reward/timeouts": g["timeouts"],
        "reward/errors": g["errors"],
        "reward/no_answer": g["no_answer"] / samples,
        **{f"reward/{k[5:]}/mean": v / samples for k, v in g.items() if k.startswith("term/")},
        **_actor_metrics(stats),
        # response tokens / s, all ranks
        "perf/throughput": (g["response_tokens"] / step_time) if step_time else 0.0,
        # prompt + response tokens, all ranks (verl's)
        "perf/total_num_tokens": g["response_tokens"] + g["prompt_tokens"],
        **_per_token_ms(timings, g["response_tokens"], g["response_tokens"] + g["prompt_tokens"]),
        **timings,
        **(extra or {}),
    }
    if stats.entropy_hist is not None:
        out["actor/entropy_hist"] = stats.entropy_hist
    return out, gen


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
        **stats.loss_stats,  # GSPO's sequence clip share and ratio, CISPO's clipped weights
    }
    if stats.kl_ref is not None:
        out["actor/kl_loss"] = stats.kl_ref
    return out


SAMPLE_COLUMNS = [
    "rl_step",
    "prompt",
    "completion",
    "answer",
    "extracted",
    "reward",
    "correct",
    "length",
    "truncated",
]


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
        out.append(
            [
                rl_step,
                batch.prompts[g],
                batch.texts[r],
                batch.answers[g],
                batch.extracted[r],
                float(batch.rewards[g, j]),
                bool(batch.correct[g, j] > 0),
                int(lengths[r]),
                bool(batch.rollout.truncated[r]),
            ]
        )
    return Table(SAMPLE_COLUMNS, out)


def mismatch_metrics(
    recomputed: bool,  # the trainer recomputed the old log-probs (algo.old_logprobs=recompute)
    weight_sums: WeightSums,  # the correction's metric sums (Algorithm.weight_sums)
    old_logp: torch.Tensor,  # [G*n, R] the old-policy log-probs the update used
    sampler_logp: torch.Tensor,  # [G*n, R] the engine's sampling log-probs
    trained: torch.Tensor,  # [G*n, R] 1 on tokens that train
    is_w: torch.Tensor | None,  # [G*n, R] the correction's weights; None without one
    stats: UpdateStats,
    device: torch.device,
) -> dict[str, float]:
    """How far the trainer's log-probs are from the sampler's (vLLM vs FSDP numerics, or the
    sampler's staleness), all ranks: over every trained token when the trainer recomputed them,
    else over the first mini-batch the update forwarded (UpdateStats). Plus the correction's own
    metrics when it weighs the loss: rollout/is_weight_mean, rollout/is_truncated_frac (tis) or
    actor/off_policy_weight_mean, actor/off_policy_capped_frac (decoupled), over trained tokens."""
    if recomputed:
        diff = (old_logp - sampler_logp).abs()
        gap = diff * trained
        out = {
            "rollout/logprob_diff": global_token_mean(diff, trained, device),
            "rollout/logprob_diff_max": all_reduce_max(
                float(gap.max()) if gap.numel() else 0.0, device
            ),
        }
    else:
        out = {
            "rollout/logprob_diff": stats.sampler_logprob_diff,
            "rollout/logprob_diff_max": stats.sampler_logprob_diff_max,
        }
    if is_w is not None:
        sums = weight_sums(is_w, old_logp, sampler_logp, trained)
        tot = all_reduce_sum([v for pair in sums.values() for v in pair], device).tolist()
        for i, name in enumerate(sums):
            out[name] = tot[2 * i] / max(tot[2 * i + 1], 1.0)
    return out
