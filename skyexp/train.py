"""The trainer: set up once, run the stages (SFT warm-up, then the RL stages of the context
schedule), evaluate before, during (eval.every) and after RL, and write plots and summary.json.

The RL step reads top to bottom as the data flow in DESIGN.md; algorithm variants are looked up
by name in the registries of skyexp.algos, never branched on here.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from skyexp import checkpoint, distributed, models, plots
from skyexp.algos.entropy import CONTROLLERS
from skyexp.algos.rollout_is import ROLLOUT_IS
from skyexp.checkpoint import export_hf
from skyexp.config import Config, ConfigError, check_world
from skyexp.config.stages import (
    StagePlan,
    masks_truncated,
    plan_stages,
    temperature_at,
    total_steps,
)
from skyexp.data import load_task
from skyexp.data.difficulty import Counts, merge, tally
from skyexp.evaluation.benchmarks import load_problems
from skyexp.evaluation.estimators import EvalResult
from skyexp.evaluation.runner import eval_due, eval_template, run_eval, write_records
from skyexp.rewards import build_reward
from skyexp.rl import lifecycle, sft
from skyexp.rl.collect import collect_batch, group_advantages, kl_coefs, kl_penalty
from skyexp.rl.lifecycle import RLState
from skyexp.rl.metrics import mismatch_metrics, sample_table, step_metrics
from skyexp.rl.update import forward_stats, global_token_mean, rl_update, sampling_view
from skyexp.rollout import engine_for
from skyexp.tracking import LinePlot, git_commit, make_logger

log = logging.getLogger("skyexp")


@dataclass
class Run:
    """Everything the stages share. Mutable counters live here and nowhere else."""

    cfg: Config
    d: distributed.Dist
    run_dir: Path
    tokenizer: Any
    policy: torch.nn.Module
    engine: Any
    reward: Any
    logger: Any
    global_step: int = 0
    rl_step: int = 0
    entropy_coef: float = 0.0  # the entropy controller's state
    ref: torch.nn.Module | None = None  # frozen reference policy, loaded only when a KL term is on
    history: list[dict[str, float]] = field(default_factory=list)
    solved: Counts = field(default_factory=dict)  # this stage, this rank: prompt id -> (correct, samples)
    eval_problems: list = field(default_factory=list)  # for eval.every

    def log(self, metrics: dict[str, Any]) -> None:
        self.logger.log(metrics, self.global_step)
        self.global_step += 1

    def algo_state(self) -> dict[str, float]:
        """Algorithm state a checkpoint must carry besides model, optimizer and data position."""
        return {"entropy_coef": self.entropy_coef}

    def load_algo_state(self, state: dict[str, float]) -> None:
        self.entropy_coef = float(state["entropy_coef"])


class Timer:
    def __init__(self) -> None:
        self.s: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        yield
        self.s[f"timing_s/{name}"] = self.s.get(f"timing_s/{name}", 0.0) + time.perf_counter() - t


def rl_step(run: Run, stage: StagePlan, rl: RLState) -> dict[str, Any]:
    cfg, t, dev, mb, share = run.cfg, Timer(), run.d.device, run.cfg.trainer.micro_batch_size, run.cfg.trainer.share_prompts
    a, e = cfg.algo, cfg.entropy
    stage = replace(stage, temperature=temperature_at(cfg, stage, run.rl_step))  # the loss uses the rollout's
    with t("step"):
        batch = collect_batch(run, stage, rl.sampler, t)  # generate, score, filter groups (dynamic sampling: repeat)
        run.solved = merge(run.solved, tally(batch.ids, batch.correct.tolist()))  # for context.drop_solved
        ro, weights = batch.rollout, batch.row_weights(masks_truncated(cfg, stage))  # [G*n]
        with t("old_logp"):  # the sampler's log-probs and entropies, before any optimizer step
            old_logp, ent = sampling_view(run.policy, ro, weights, a.old_logprobs == "recompute", mb, dev, share)
        with t("ref"):
            ref_logp = reference_logprobs(run, ro, weights)  # None unless a KL term is on
        is_w = (ROLLOUT_IS[a.rollout_is](old_logp, ro.logprobs, ro.response_mask, a.rollout_is_cap)  # [G*n, R]
                if a.rollout_is != "none" else None)
        kl_loss_coef, kl_reward_coef = kl_coefs(a)
        seq_kl = kl_penalty(a, old_logp, ref_logp, ro.response_mask).view_as(batch.rewards)  # [G, n]
        adv = group_advantages(a, batch.rewards - kl_reward_coef * seq_kl, batch.train, dev)  # [G*n]
        trained_tokens = ro.response_mask * weights[:, None]
        h = global_token_mean(ent, trained_tokens if float(trained_tokens.sum()) > 0 else ro.response_mask, dev)
        run.entropy_coef, coef = CONTROLLERS[e.name](run.entropy_coef, h, target=e.target, delta=e.delta,
                                                     coef_min=e.coef_min, coef_max=e.coef_max)  # bonus from this step's entropy
        with t("update"):
            stats = rl_update(run.policy, rl.opt, ro, adv, weights, a, coef, mb, cfg.trainer.grad_clip, run.d.world_size, dev,
                              old_logprobs=old_logp, entropy=ent, ref_logprobs=ref_logp, kl_coef=kl_loss_coef, rule=e.name,
                              rule_params=asdict(e), max_response_len=stage.max_response_len, share_prompts=share,
                              is_weights=is_w)
        with t("sync"):
            run.engine.sync_weights(run.policy)
    masked = (weights == 0) & batch.train.repeat_interleave(ro.n) & ro.truncated  # [G*n] trains but for truncation
    extra = {"actor/entropy_trained": h, "actor/skipped_updates": stats.skipped_updates,
             "train/max_response_len": stage.max_response_len,
             "batch/truncated_masked": global_token_mean(masked.float()[:, None], torch.ones(len(masked), 1), dev)}
    if ref_logp is not None:
        extra["critic/kl"] = global_token_mean(seq_kl.flatten()[:, None], weights[:, None], dev)  # per sequence, summed over tokens
        extra["critic/kl_coeff"] = kl_reward_coef  # the reward penalty's weight (0 with the KL loss)
    extra.update(mismatch_metrics(a, old_logp, ro.logprobs, trained_tokens, is_w, stats, dev))
    out = step_metrics(batch, adv, weights, stats, t.s, stage.index, run.rl_step, dev, extra)
    if cfg.logger.samples_every and run.rl_step % cfg.logger.samples_every == 0:
        out["samples/completions"] = sample_table(batch, run.rl_step, cfg.logger.samples_rows)
    return out


def reference_logprobs(run: Run, ro, weights: torch.Tensor) -> torch.Tensor | None:
    """The reference policy's log-probs [G*n, R] on the rows that train; None without a reference."""
    if run.ref is None:
        return None
    t = run.cfg.trainer
    return forward_stats(run.ref, ro, (weights > 0).nonzero().squeeze(1), t.micro_batch_size, run.d.device, False,
                         t.share_prompts)[0]


def run_rl(run: Run, rl: RLState, sigterm: lifecycle.SigtermFlag) -> str | None:
    """Train through the stages from rl's position. Checkpoints every trainer.save_every steps, at
    every stage end, and before stopping early; returns why it stopped early (None: it finished)."""
    run.policy.train()
    total = total_steps(run.cfg)
    with warnings.catch_warnings():  # the LR schedule counts RL steps, also ones whose update was skipped
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        return _run_stages(run, rl, sigterm, total)


def _run_stages(run: Run, rl: RLState, sigterm: lifecycle.SigtermFlag, total: int) -> str | None:
    cfg, every = run.cfg, run.cfg.trainer.save_every
    for stage in plan_stages(cfg)[rl.stage:]:
        if rl.step_in_stage == 0:
            lifecycle.enter_stage(run, rl, stage)
        bar = tqdm(range(rl.step_in_stage, stage.steps), desc=f"rl stage {stage.index}",
                   disable=not (run.d.is_main and cfg.logger.progress), dynamic_ncols=True)
        for _ in bar:
            metrics = rl_step(run, stage, rl)
            lifecycle.count_faults(rl, metrics)
            metrics["actor/lr"] = rl.sched.get_last_lr()[0]
            rl.sched.step()
            run.log(metrics)
            run.history.append({k: metrics[k] for k in ("train/rl_step", "actor/entropy", "critic/score/mean")})
            run.rl_step += 1
            if eval_due(cfg.eval.every, run.rl_step, total, cfg.eval.after):  # before a checkpoint: it uses the RNG
                evaluate(run, run.eval_problems, f"step{run.rl_step}")
            rl.step_in_stage += 1
            stage_end = rl.step_in_stage == stage.steps
            if stage_end:
                rl.stage, rl.step_in_stage = stage.index + 1, 0
            stop = lifecycle.stop_reason(cfg, rl, sigterm, run.d.device)
            if stop or stage_end or (every and run.rl_step % every == 0):
                lifecycle.save(run, rl, stop or ("stage_end" if stage_end else "save_every"))
            if stop:
                return stop
            bar.set_postfix({"reward": f"{metrics['critic/score/mean']:.3f}", "pass@1": f"{metrics['batch/pass@1']:.3f}",
                             "entropy": f"{metrics['actor/entropy']:.3f}", "s/step": f"{metrics['timing_s/step']:.2f}"})
    return None


def evaluate(run: Run, problems, label: str) -> EvalResult:
    cfg = run.cfg
    res = run_eval(run.engine, run.reward, run.tokenizer, problems, cfg.eval, eval_template(cfg.eval), cfg.model.chat_template,
                   run.d.rank, run.d.world_size)
    curve = LinePlot(list(res.pass_at), list(res.pass_at.values()), "k", "pass@k",
                     f"pass@k on {cfg.eval.name} ({label}, RL step {run.rl_step})")
    run.log({**res.metrics(), "val/timeouts": res.timeouts, "val/errors": res.errors, "train/rl_step": run.rl_step,
             f"val/{cfg.eval.name}/pass@k_curve/{label}": curve})
    if run.d.is_main:
        write_records(res.records, run.run_dir / "eval" / f"{cfg.eval.name}_{label}.jsonl")
        log.info("eval %s (%s): %s", cfg.eval.name, label, "  ".join(f"pass@{k}={v:.3f}" for k, v in res.pass_at.items()))
    return res


def load_eval_problems(cfg: Config, task) -> list:
    """The data source's held-out split (eval.source=data), or a benchmark file/dataset."""
    return load_problems(cfg.eval, task.eval, cfg.data.max_bad_fraction)


def train(cfg: Config, run_dir: Path, config_dict: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the whole experiment; return (and, on rank 0, write) the summary. With trainer.resume,
    continue from a checkpoint instead (SFT and the first evaluation are not repeated)."""
    t0 = time.time()
    d = distributed.setup(cfg.trainer.device, cfg.trainer.threads, cfg.trainer.keep_freed_memory)
    check_world(cfg, d.world_size)
    own_dir, run_dir = run_dir, Path(distributed.broadcast_object(str(run_dir)))
    if own_dir != run_dir:  # another rank's Hydra picked a later timestamp: use rank 0's directory only
        shutil.rmtree(own_dir, ignore_errors=True)
    resume = _resume_point(cfg, run_dir, d)
    random.seed(cfg.trainer.seed + d.rank)
    torch.manual_seed(cfg.trainer.seed)
    task = load_task(cfg.data)
    eval_problems = load_eval_problems(cfg, task) if (cfg.eval.before or cfg.eval.after or cfg.eval.every) else []
    base = models.resolve_path(cfg.model, cfg.trainer.cache_dir) if d.is_main else None
    base = distributed.broadcast_object(base)  # rank 0 builds the tiny model once
    tokenizer = models.load_tokenizer(base, cfg.model)
    reward = build_reward(cfg.reward)  # the scoring pool starts while the model loads
    sft_dir = sft.cache_dir(cfg, base)
    start = str(sft_dir) if cfg.sft.steps and sft.cached(cfg, base) and not resume else base
    try:
        policy = models.load_policy(start, cfg, d)
        engine = engine_for(cfg, start, tokenizer, d.device, cfg.trainer.seed * 1000 + d.rank)
    except BaseException:
        reward.close()  # its worker processes would outlive the failed start
        raise
    saved = checkpoint.read_state(resume) if resume else {}
    if cfg.trainer.resume and d.is_main:  # rows logged after the checkpoint (all of them without one) go
        lifecycle.rewind_logs(run_dir, saved.get("global_step", 0))
    logger = make_logger(cfg.logger, run_dir, config_dict or asdict(cfg), d.is_main, saved.get("wandb_id"))
    run = Run(cfg, d, run_dir, tokenizer, policy, engine, reward, logger, entropy_coef=cfg.entropy.coef,
              eval_problems=eval_problems)
    rl = lifecycle.make_rl_state(cfg, policy, task.train, d.rank, d.world_size)
    summary: dict[str, Any] = {"world_size": d.world_size, "params": models.num_params(policy), "rollout": cfg.rollout.name,
                               "git_commit": git_commit(),
                               "data": {"problems": len(task.train), **task.stats}}  # rows skipped, duplicates, ...
    before: EvalResult | lifecycle.SavedEval | None = None
    try:
        if not resume:
            with _phase(summary, "sft"):
                if cfg.sft.steps and start == base:
                    summary.update(sft.run_sft(cfg, d, policy, tokenizer, task.train, sft_dir, run.log,
                                               d.is_main and cfg.logger.progress))
                    engine.sync_weights(policy)
                summary["sft_cached"] = bool(cfg.sft.steps) and start != base
                summary["sft_dir"] = str(sft_dir) if cfg.sft.steps else None
        if cfg.algo.kl_coef > 0:  # the reference is the policy RL starts from (after SFT)
            run.ref = models.load_reference(_reference_path(cfg, base, sft_dir), cfg, d)
        if not resume:
            with _phase(summary, "eval_before"):
                before = evaluate(run, eval_problems, "before") if cfg.eval.before else None
            rl.pre_rl = {**summary, "before_pass_at": before.pass_at if before else None}
        with _phase(summary, "rl"):
            if resume:
                lifecycle.restore(run, rl, resume)  # last: it sets every RNG
                summary.update({k: v for k, v in rl.pre_rl.items() if k != "before_pass_at"}, world_size=d.world_size,
                               resumed_from=str(resume))
                if rl.pre_rl.get("before_pass_at"):
                    before = lifecycle.SavedEval({int(k): v for k, v in rl.pre_rl["before_pass_at"].items()})
            with lifecycle.SigtermFlag() as sigterm:
                stopped = run_rl(run, rl, sigterm)
        if stopped:
            raise lifecycle.stopped(stopped, run, rl, checkpoint.complete_checkpoints(run_dir)[-1])
        with _phase(summary, "eval_after"):
            after = evaluate(run, eval_problems, "after") if cfg.eval.after else None
        if cfg.trainer.save_final:
            export_hf(policy, tokenizer, run_dir / "final", d, {"rl_steps": run.rl_step})
        summary.update(_summarise(run, before, after, time.time() - t0), skipped_steps=rl.skipped_steps)
        if d.is_main:
            _write_outputs(run, summary, before, after)
        return summary
    finally:
        logger.close()
        reward.close()


def _resume_point(cfg: Config, run_dir: Path, d: distributed.Dist) -> Path | None:
    """trainer.resume resolved on rank 0, the same answer (or error) on every rank."""
    found: tuple[str | None, str | None] = (None, None)
    if d.is_main:
        try:
            path = checkpoint.resolve_resume(cfg.trainer.resume, run_dir)
            found = (str(path) if path else None, None)
        except ConfigError as e:
            found = (None, str(e))
    path, err = distributed.broadcast_object(found)
    if err:
        raise ConfigError(err)
    if cfg.trainer.resume == "auto" and path is None:
        log.info("trainer.resume=auto: no checkpoint in %s yet, starting afresh", run_dir / checkpoint.CKPT_DIR)
    return Path(path) if path else None


def _reference_path(cfg: Config, base: str, sft_dir: Path) -> str:
    if not cfg.sft.steps:
        return base
    if not (sft_dir / "DONE").exists():
        raise ConfigError(f"config key 'trainer.resume': the KL reference is the SFT result {sft_dir}, which is gone; "
                          "rerun SFT with the same config (same cache dir) or set algo.kl_coef=0")
    return str(sft_dir)


@contextmanager
def _phase(summary: dict[str, Any], name: str):
    t = time.perf_counter()
    yield
    summary[f"time_s/{name}"] = round(time.perf_counter() - t, 2)


def _summarise(run: Run, before: EvalResult | None, after: EvalResult | None, wall: float) -> dict[str, Any]:
    h = run.history
    out: dict[str, Any] = {"wall_s": round(wall, 1), "rl_steps": run.rl_step}
    if h:
        k = max(1, min(10, len(h) // 5))  # average a few steps: single-step entropy is noisy
        out["entropy_start"] = sum(x["actor/entropy"] for x in h[:k]) / k
        out["entropy_end"] = sum(x["actor/entropy"] for x in h[-k:]) / k
        out["reward_start"] = sum(x["critic/score/mean"] for x in h[:k]) / k
        out["reward_end"] = sum(x["critic/score/mean"] for x in h[-k:]) / k
    for label, res in (("before", before), ("after", after)):
        if res is not None:
            for kk, v in res.pass_at.items():
                out[f"pass@{kk}_{label}"] = v
    return out


def _write_outputs(run: Run, summary: dict[str, Any], before: EvalResult | None, after: EvalResult | None) -> None:
    steps = [x["train/rl_step"] for x in run.history]
    if steps:
        plots.plot_entropy(steps, [x["actor/entropy"] for x in run.history], [x["critic/score/mean"] for x in run.history],
                           run.run_dir / "entropy.png")
    curves = {f"{lbl} RL": r.pass_at for lbl, r in (("before", before), ("after", after)) if r is not None}
    if curves:
        plots.plot_passk(curves, run.run_dir / "passk.png", title=f"pass@k on {run.cfg.eval.name} (held out)")
    plots.write_passk_over_training(run.run_dir, run.cfg.eval.name, run.log)  # pass@k vs RL step (eval.every)
    (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("summary: %s", json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}))
