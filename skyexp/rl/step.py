"""One RL step, read top to bottom as the data flow: generate and score (collect), the sampling
policy's log-probs and entropies, the reference's, advantages over the groups that train, the
entropy controller, the update (objective + driver), weight sync to the engine, metrics.

Algorithm variants are looked up by name in the registries of skyexp.algos, never branched on here.
"""

from __future__ import annotations

from typing import Any

import torch

from skyexp.algos.entropy import CONTROLLERS
from skyexp.algos.rollout_is import ROLLOUT_IS
from skyexp.algos.shaping import entropy_shaped
from skyexp.config.names import bind
from skyexp.config.schema import old_logprobs_recomputed
from skyexp.config.stages import StagePlan
from skyexp.data.difficulty import merge, tally
from skyexp.model.forward import forward_stats, sampling_view
from skyexp.model.layout import ForwardSettings
from skyexp.records import Rollout, UpdateStats
from skyexp.rl.collect import StepBatch, collect_batch, kl_coefs, kl_penalty, step_advantages
from skyexp.rl.metrics import Trained, mismatch_metrics, sample_table, step_metrics
from skyexp.rl.objective import make_loss_spec
from skyexp.rl.state import RunState, StepRecord, StepResult, Timer
from skyexp.rl.update import UpdateBatch, UpdateSettings, global_token_mean, rl_update


def rl_step(run: RunState, stage: StagePlan) -> StepResult:
    """Generate, score, update, sync: one RL step of `stage` at run.rl_step."""
    t = Timer()
    temperature = run.plan.temperature_at(stage, run.rl_step)  # the loss uses the rollout's
    with t("step"):
        batch = collect_batch(run, stage, temperature, t)  # generate, score, filter groups (dynamic sampling: repeat)
        run.solved = merge(run.solved, tally(batch.ids, batch.correct.tolist()))  # for context.drop_solved
        upd, kl_info, rewards = _update_inputs(run, stage, batch, t)
        h = _trained_entropy(run, upd)
        controller = bind(CONTROLLERS[run.cfg.entropy.controller], {"entropy": run.cfg.entropy}, "entropy.controller")
        run.entropy_coef, coef = controller(run.entropy_coef, h)  # the bonus from this step's entropy
        spec = make_loss_spec(run.cfg.algo, run.cfg.entropy, coef, kl_coefs(run.cfg.algo)[0])
        with t("update"):
            stats = rl_update(run.policy, run.opt, upd, spec, UpdateSettings.of(run.cfg, run.d.world_size, run.d.device))
        with t("sync"):
            run.engine.sync_weights(run.policy)
    metrics = _metrics(run, batch, upd, stats, t.s, {**kl_info, "actor/entropy_trained": h}, rewards)
    record = StepRecord(run.rl_step, stats.entropy, metrics["critic/score/mean"])
    return StepResult(record, metrics["batch/pass@1"], t.s["timing_s/step"], stats.skipped_updates, metrics)


def _update_inputs(run: RunState, stage: StagePlan, batch: StepBatch, t: Timer
                   ) -> tuple[UpdateBatch, dict[str, float], torch.Tensor]:
    """The update's per-row inputs: weights (truncation masking), old and reference log-probs,
    truncated-IS weights, advantages (with the KL reward penalty when algo.kl_mode=reward); the
    metrics' extra entries; the rewards the advantages used, r - beta * sum_t KL_t [G, n]."""
    a, dev, ro = run.cfg.algo, run.d.device, batch.rollout
    weights = batch.row_weights(stage.mask_truncated)  # [G*n]
    # every row of a training group enters its group's baseline (masked truncated rows too), so
    # each needs old and reference log-probs, not only the rows with weight > 0 (issue 17)
    in_groups = batch.row_weights(False)  # [G*n]
    with t("old_logp"):  # the sampler's log-probs and entropies, before any optimizer step
        old_logp, ent = sampling_view(run.policy, ro, in_groups, old_logprobs_recomputed(run.cfg), _fwd(run))
    with t("ref"):
        ref_logp = reference_logprobs(run, ro, in_groups)  # None unless a KL term is on
    is_w = (ROLLOUT_IS[a.rollout_is](old_logp, ro.logprobs, ro.response_mask, a.rollout_is_cap)  # [G*n, R]
            if a.rollout_is != "none" else None)
    kl_reward_coef = kl_coefs(a)[1]
    seq_kl = kl_penalty(a, old_logp, ref_logp, ro.response_mask).view_as(batch.rewards)  # [G, n], for critic/kl
    # [G*n], or [G*n, R] for REINFORCE++ with the KL in the reward (-beta * KL_t on each token)
    adv = step_advantages(a, batch.rewards, batch.train, old_logp, ref_logp, ro.response_mask, dev)
    e = run.cfg.entropy
    if e.adv_alpha > 0:  # Cheng et al.'s entropy-shaped advantage, per token [G*n, R]
        adv = entropy_shaped(adv, ent, ro.response_mask, adv_alpha=e.adv_alpha, adv_kappa=e.adv_kappa)
    info: dict[str, float] = {}
    if ref_logp is not None:
        info["critic/kl"] = global_token_mean(seq_kl.flatten()[:, None], weights[:, None], dev)  # per sequence, summed over tokens
        info["critic/kl_coeff"] = kl_reward_coef  # the reward penalty's weight (0 with the KL loss)
    upd = UpdateBatch(ro, adv, weights, old_logp, ent, ref_logp, is_w, stage.max_response_len)
    return upd, info, batch.rewards - kl_reward_coef * seq_kl


def _trained_entropy(run: RunState, upd: UpdateBatch) -> float:
    """The sampling policy's mean token entropy over the tokens that train (all response tokens
    when none does): what the entropy controller steers."""
    ro = upd.rollout
    trained_tokens = ro.response_mask * upd.weights[:, None]
    mask = trained_tokens if float(trained_tokens.sum()) > 0 else ro.response_mask
    return global_token_mean(upd.entropy, mask, run.d.device)


def reference_logprobs(run: RunState, ro: Rollout, rows: torch.Tensor) -> torch.Tensor | None:
    """The reference policy's log-probs [G*n, R] on the rows with rows > 0 (every row of a group
    that trains); None without a reference."""
    if run.ref is None:
        return None
    return forward_stats(run.ref, ro, (rows > 0).nonzero().squeeze(1), _fwd(run), False)[0]


def _fwd(run: RunState) -> ForwardSettings:
    return UpdateSettings.of(run.cfg, run.d.world_size, run.d.device).fwd


def _metrics(run: RunState, batch: StepBatch, upd: UpdateBatch, stats: UpdateStats, timings: dict[str, float],
             extra: dict[str, float], rewards: torch.Tensor) -> dict[str, Any]:
    cfg, dev, ro = run.cfg, run.d.device, batch.rollout
    masked = (upd.weights == 0) & batch.train.repeat_interleave(ro.n) & ro.truncated  # [G*n] trains but for truncation
    trained_tokens = ro.response_mask * upd.weights[:, None]
    extra = {**extra, "actor/skipped_updates": stats.skipped_updates, "train/max_response_len": upd.max_response_len,
             "batch/truncated_masked": global_token_mean(masked.float()[:, None], torch.ones(len(masked), 1), dev)}
    extra.update(mismatch_metrics(cfg.algo, old_logprobs_recomputed(cfg), upd.old_logprobs, ro.logprobs, trained_tokens, upd.is_weights, stats, dev))
    out = step_metrics(batch, Trained(upd.advantages, upd.weights, rewards), stats, timings, (run.stage, run.rl_step), dev, extra)
    if cfg.logger.samples_every and run.rl_step % cfg.logger.samples_every == 0:
        out["samples/completions"] = sample_table(batch, run.rl_step, cfg.logger.samples_rows)
    return out
