"""One RL step, read top to bottom as the data flow: generate and score (collect), the sampler's
view of the batch (old and reference log-probs, entropies, IS weights, row weights), advantages
(with the rewards and KL they used), the entropy controller, the update (objective + driver),
weight sync to the engine, metrics.

`rl_step` is the synchronous step: its halves `generate` and `train` are also what the
asynchronous loop (skyexp.rl.async_loop) runs, on the batch a generator made earlier.

Every algorithmic piece is the run's bound Algorithm (skyexp.config.algorithm): nothing here
reads an algorithm's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from skyexp.config.stages import StagePlan
from skyexp.data.difficulty import merge, tally
from skyexp.records import UpdateStats
from skyexp.rl.advantage import Advantages, step_advantages
from skyexp.rl.collect import StepBatch, collect_batch
from skyexp.rl.metrics import Generated, Trained, mismatch_metrics, sample_table, summarise
from skyexp.rl.objective import LossSpec
from skyexp.rl.state import Run, StepRecord, StepResult, Timer
from skyexp.rl.update import UpdateBatch, global_token_mean, rl_update
from skyexp.rl.view import SamplerView, build_view


def rl_step(run: Run, stage: StagePlan) -> StepResult:
    """Generate, score, update, sync: one RL step of `stage` at run.counters.rl_step."""
    t = Timer()
    with t("step"):
        batch = generate(run, stage, t)
        done = train(run, stage, batch, t)
        with t("sync"):
            run.engine.sync_weights(run.policy)
    return step_result(run, done, t.s)


def generate(run: Run, stage: StagePlan, t: Timer) -> StepBatch:
    """The generation half of a synchronous step: this rank's batch of the current step."""
    # the loss uses the rollout's
    temperature = run.plan.temperature_at(stage, run.counters.rl_step)
    # generate, score, filter groups (dynamic sampling: repeat)
    batch = collect_batch(run, stage, temperature, t)
    received(run, batch)
    return batch


def received(run: Run, batch: StepBatch) -> None:
    """A batch reached the trainer: its pass counts join the stage's (for context.drop_solved)."""
    run.live.solved = merge(run.live.solved, tally(batch.ids, batch.correct.tolist()))


@dataclass(frozen=True)
class Updated:
    """What the training half of a step made of its batch (the metrics read all of it)."""

    batch: StepBatch
    view: SamplerView
    upd: UpdateBatch
    adv: Advantages
    stats: UpdateStats
    entropy: float  # the sampling policy's entropy over the trained tokens (the controller's)


def train(run: Run, stage: StagePlan, batch: StepBatch, t: Timer) -> Updated:
    """The training half of a step, whoever generated the batch: the sampler's view, advantages,
    the entropy controller, the update."""
    alg = run.algorithm
    view = build_view(run, stage, batch, t)
    mask = batch.rollout.response_mask
    adv = step_advantages(
        alg,
        batch.rewards,
        batch.train,
        view.old_logprobs,
        view.ref_logprobs,
        mask,
        run.d.device,
    )
    # [G*n], or [G*n, R] per token (REINFORCE++ with the KL in the reward, entropy shaping)
    advantages = (
        alg.shape(adv.advantages, view.entropy, mask)
        if alg.shape is not None
        else adv.advantages
    )
    upd = UpdateBatch(
        batch.rollout,
        advantages,
        view.weights,
        view.old_logprobs,
        view.entropy,
        view.ref_logprobs,
        view.is_weights,
        stage.max_response_len,
        alg.entropy_rows(batch.correct) if alg.entropy_rows is not None else None,
    )
    h = _trained_entropy(run, upd)
    if run.counters.entropy_anchor < 0:  # the first RL step's: AER's anchor
        run.counters.entropy_anchor = h
    # the bonus from this step's entropy
    run.counters.entropy_coef, coef = alg.controller(
        run.counters.entropy_coef, h, run.counters.entropy_anchor
    )
    with t("update"):
        stats = rl_update(run.policy, run.opt, upd, LossSpec.of(alg, coef), run.settings)
    return Updated(batch, view, upd, adv, stats, h)


def step_result(
    run: Run, done: Updated, timings: dict[str, float], extra: dict[str, Any] | None = None
) -> StepResult:
    """The step's typed result and metrics (`extra`: more metrics, e.g. the asynchronous
    loop's)."""
    metrics, gen = _metrics(
        run, done.batch, done.view, done.upd, done.adv, done.stats, timings, done.entropy
    )
    if done.upd.entropy_rows is not None:  # AER: share of the trained rows whose prompt is hard
        metrics["actor/aer_hard_frac"] = global_token_mean(
            done.upd.entropy_rows[:, None], done.upd.weights[:, None], run.d.device
        )
    metrics.update(extra or {})
    record = StepRecord(run.counters.rl_step, done.stats.entropy, gen.score)
    return StepResult(
        record, gen.pass1, timings["timing_s/step"], done.stats.skipped_updates, metrics
    )


def _trained_entropy(run: Run, upd: UpdateBatch) -> float:
    """The sampling policy's mean token entropy over the tokens that train (all response tokens
    when none does): what the entropy controller steers."""
    ro = upd.rollout
    trained_tokens = ro.response_mask * upd.weights[:, None]
    mask = trained_tokens if float(trained_tokens.sum()) > 0 else ro.response_mask
    return global_token_mean(upd.entropy, mask, run.d.device)


def _metrics(
    run: Run,
    batch: StepBatch,
    view: SamplerView,
    upd: UpdateBatch,
    adv: Advantages,
    stats: UpdateStats,
    timings: dict[str, float],
    h: float,
) -> tuple[dict[str, Any], Generated]:
    cfg, dev, ro = run.cfg, run.d.device, batch.rollout
    # [G*n] trains but for truncation
    masked = (upd.weights == 0) & batch.train.repeat_interleave(ro.n) & ro.truncated
    trained_tokens = ro.response_mask * upd.weights[:, None]
    extra: dict[str, Any] = {}
    if adv.seq_kl is not None:  # per sequence, summed over tokens
        extra["critic/kl"] = global_token_mean(
            adv.seq_kl.flatten()[:, None], upd.weights[:, None], dev
        )
        # the reward penalty's weight (0 with the KL loss)
        extra["critic/kl_coeff"] = run.algorithm.kl_reward_coef
    extra.update(
        {
            "actor/entropy_trained": h,
            "actor/skipped_updates": stats.skipped_updates,
            "train/max_response_len": upd.max_response_len,
            "batch/truncated_masked": global_token_mean(
                masked.float()[:, None], torch.ones(len(masked), 1), dev
            ),
        }
    )
    extra.update(
        mismatch_metrics(
            run.algorithm.recompute_old,
            run.algorithm.weight_sums,
            view.old_logprobs,
            ro.logprobs,
            trained_tokens,
            view.is_weights,
            stats,
            dev,
        )
    )
    c = run.counters
    if cfg.logger.samples_every and c.rl_step % cfg.logger.samples_every == 0:
        extra["samples/completions"] = sample_table(batch, c.rl_step, cfg.logger.samples_rows)
    return summarise(
        batch,
        Trained(upd.advantages, upd.weights, adv.rewards),
        stats,
        timings,
        (c.stage, c.rl_step),
        dev,
        extra,
    )
