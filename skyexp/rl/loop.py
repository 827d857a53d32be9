"""The RL stages: from the run's position, step through every stage of the plan; evaluate at
eval.every, checkpoint every trainer.save_every steps, at every stage end and before stopping
early; stop cleanly on SIGTERM or too many non-finite steps in a row.

A step is the synchronous `rl_step`, or with a pipe (rollout.staleness > 0, trainer.rollout_ranks
> 0) `async_step` on a batch generated earlier (skyexp.rl.async_loop); the rest is the same."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm

from skyexp.config.stages import StagePlan
from skyexp.evaluation.estimators import EvalResult
from skyexp.evaluation.runner import eval_due, eval_template, run_eval, write_records
from skyexp.rl import boundaries, faults, resume
from skyexp.rl.async_loop import async_step
from skyexp.rl.idle import IDLE_EXIT, check_idle
from skyexp.rl.placement import RankLost
from skyexp.rl.state import Run, StepResult
from skyexp.rl.step import rl_step
from skyexp.tracking import LinePlot, line_due, step_line, use_bars

log = logging.getLogger("skyexp")


def run_rl(run: Run, sigterm: faults.SigtermFlag) -> str | None:
    """Train through the stages from the run's position; returns why it stopped early (None: it
    finished)."""
    run.policy.train()
    # the LR schedule counts RL steps, also ones whose update was skipped
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"Detected call of `lr_scheduler.step\(\)` before"
        )
        for stage in run.plan.stages[run.counters.stage:]:
            stop = _run_stage(run, stage, sigterm)
            if stop:
                return stop
    return None


def _run_stage(run: Run, stage: StagePlan, sigterm: faults.SigtermFlag) -> str | None:
    cfg = run.cfg
    pipe = run.live.pipe
    if run.counters.step_in_stage == 0:
        boundaries.enter_stage(run, stage)
    if pipe is not None:
        pipe.enter_stage(run, stage)
    # off a terminal: one line per step instead
    bars = run.d.is_main and use_bars(cfg.logger.progress)
    bar = tqdm(
        range(run.counters.step_in_stage, stage.steps),
        desc=f"rl stage {stage.index}",
        disable=not bars,
        dynamic_ncols=True,
    )
    for _ in bar:
        with _checkpoint_if_lost(run):
            result = rl_step(run, stage) if pipe is None else async_step(run, stage, pipe)
        faults.count_faults(run, result)
        run.live.idle_streak, idle = check_idle(
            run.live.idle_streak, result.metrics, cfg.trainer.max_idle_steps, cfg.trainer.stop_idle
        )
        if idle:
            raise faults.Stopped(idle, IDLE_EXIT)
        metrics = {**result.metrics, "actor/lr": run.sched.get_last_lr()[0],
                   "train/skipped_steps": run.counters.skipped_steps}
        run.sched.step()
        run.log(metrics)
        if run.d.is_main and line_due(cfg.logger.line_every, run.counters.rl_step, bars):
            log.info(step_line(metrics, run.plan.total_steps))
        run.counters.history.append(result.record)
        run.counters.rl_step += 1
        # ProRL: before the checkpoint of this step, which then holds it
        boundaries.reset_reference(run)
        # before a checkpoint: it uses the RNG
        if eval_due(cfg.eval.every, run.counters.rl_step, run.plan.total_steps, cfg.eval.after):
            with _checkpoint_if_lost(run):
                evaluate(run, f"step{run.counters.rl_step}")
        stop = _advance(run, stage, sigterm)
        if stop:
            return stop
        bar.set_postfix(_postfix(result))
    return None


@contextmanager
def _checkpoint_if_lost(run: Run) -> Iterator[None]:
    """A lost generator (or trainer) rank: checkpoint after the last completed step and stop."""
    try:
        yield
    except RankLost as e:
        raise faults.lost(str(e), run, resume.save(run, "rank_lost")) from None


def _advance(run: Run, stage: StagePlan, sigterm: faults.SigtermFlag) -> str | None:
    """Move the position one step on; checkpoint where due; return why to stop (None: go on)."""
    run.counters.step_in_stage += 1
    stage_end = run.counters.step_in_stage == stage.steps
    if stage_end:
        run.counters.stage, run.counters.step_in_stage = stage.index + 1, 0
    stop = faults.stop_reason(run, sigterm)
    every = run.cfg.trainer.save_every
    if stop or stage_end or (every and run.counters.rl_step % every == 0):
        resume.save(run, stop or ("stage_end" if stage_end else "save_every"))
    return stop


def _postfix(r: StepResult) -> dict[str, str]:
    return {
        "reward": f"{r.record.reward:.3f}",
        "pass@1": f"{r.batch_pass1:.3f}",
        "entropy": f"{r.record.entropy:.3f}",
        "s/step": f"{r.seconds:.2f}",
    }


def evaluate(run: Run, label: str) -> EvalResult:
    """Held-out pass@k / maj@k of the current policy through the rollout engine; logged, and on
    rank 0 the samples are written to eval/<benchmark>_<label>.jsonl."""
    cfg = run.cfg
    if run.live.pipe is not None and run.live.pipe.remote:  # the generator ranks evaluate
        res = run.live.pipe.evaluation(run, label)
    else:
        res = run_eval(
            run.engine,
            run.reward,
            run.tokenizer,
            run.eval_problems,
            cfg.eval,
            eval_template(cfg.eval),
            cfg.model.chat_template,
            (run.d.rank, run.d.world_size),
        )
    curve = LinePlot(list(res.pass_at), list(res.pass_at.values()), "k", "pass@k",
                     f"pass@k on {cfg.eval.name} ({label}, RL step {run.counters.rl_step})")
    run.log(
        {
            **res.metrics(),
            "val/timeouts": res.timeouts,
            "val/errors": res.errors,
            "train/rl_step": run.counters.rl_step,
            f"val/{cfg.eval.name}/pass@k_curve/{label}": curve,
        }
    )
    if run.d.is_main:
        write_records(res.records, run.run_dir / "eval" / f"{cfg.eval.name}_{label}.jsonl")
        log.info(
            "eval %s (%s): %s",
            cfg.eval.name,
            label,
            "  ".join(f"pass@{k}={v:.3f}" for k, v in res.pass_at.items()),
        )
    return res
