"""The trainer: `setup` builds the run state once, then the phases run in order, each readable
alone: SFT warm-up (or its cached result), the KL reference, evaluation before RL, the RL stages
of the context schedule (skyexp.rl.loop, with evaluations at eval.every), evaluation after RL,
export, and the summary, plots and summary.json. With trainer.resume the run state is restored
from a checkpoint instead, and SFT and the first evaluation are not repeated.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from skyexp import checkpoint, distributed, plots
from skyexp.checkpoint import export_hf
from skyexp.config import Config, ConfigError, check_world
from skyexp.config.algorithm import build_algorithm
from skyexp.config.names import random_reward
from skyexp.config.stages import plan_run
from skyexp.evaluation.estimators import EvalResult
from skyexp.model import loading
from skyexp.rewards import build_reward
from skyexp.rl import boundaries, faults, placement, sft
from skyexp.rl.async_loop import LocalPipe
from skyexp.rl.loop import evaluate, run_rl
from skyexp.rl.resume import SavedEval, restore, rewind_logs
from skyexp.rl.state import Counters, Live, Run
from skyexp.rl.summary import Clock, PreRL, Summary
from skyexp.rl.task import eval_problems, task_and_tokenizer
from skyexp.rl.update import UpdateSettings
from skyexp.rollout import engine_for
from skyexp.tracking import git_commit, make_logger, use_bars

log = logging.getLogger("skyexp")


@dataclass
class Setup:
    """What `setup` made: the run state and where the run starts from."""

    run: Run
    resume: Path | None  # the checkpoint to continue from
    base: str  # the model RL would start from without SFT (hub id, directory, or the tiny model)
    sft_dir: Path  # the SFT result's cache directory for this config
    start: str  # the weights loaded (base, or the cached SFT result)
    summary: Summary
    t0: float


def train(cfg: Config, run_dir: Path, config_dict: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the whole experiment; return (and, on rank 0, write) the summary. With
    trainer.rollout_ranks the generator ranks serve the trainers instead (skyexp.rl.generator)
    and return an empty summary."""
    placed = None
    if cfg.trainer.rollout_ranks:
        placed = placement.start(cfg)
        if placed[1].role == placement.GENERATOR:
            from skyexp.rl.generator import serve

            serve(cfg, *placed, run_dir)
            return {}
    s = setup(cfg, run_dir, config_dict, placed)
    try:
        before: EvalResult | SavedEval | None = None
        if not s.resume:
            sft_phase(s)
        reference_phase(s)
        if not s.resume:
            before = eval_before_phase(s)
        stopped, before = rl_phase(s, before)
        if stopped:
            raise faults.stopped(stopped, s.run, checkpoint.complete_checkpoints(s.run.run_dir)[-1])
        return finish(s, before)
    finally:
        if s.run.live.pipe is not None:
            s.run.live.pipe.close(s.run)
        s.run.logger.close()
        s.run.reward.close()


def setup(
    cfg: Config,
    run_dir: Path,
    config_dict: dict[str, Any] | None = None,
    placed: tuple[distributed.Dist, placement.Bridge] | None = None,
) -> Setup:
    """Ranks, run directory, seeds, data, tokenizer, reward pool, policy, engine, logger,
    optimizer and sampler: everything the phases share, in one Run. `placed`: this trainer
    rank's place in the disaggregated placement (no engine here: the generator ranks hold it)."""
    t0 = time.time()
    d = placed[0] if placed else distributed.setup(
        cfg.trainer.device,
        cfg.trainer.threads,
        cfg.trainer.keep_freed_memory,
        cfg.trainer.deterministic,
        cfg.trainer.sp_size,
    )
    check_world(cfg, d.world_size)
    run_dir = _shared_run_dir(run_dir)
    resume = _resume_point(cfg, run_dir, d)
    random.seed(cfg.trainer.seed + d.dp_rank)  # the ranks of a sequence-parallel group draw alike
    torch.manual_seed(cfg.trainer.seed)
    task, base, tokenizer = task_and_tokenizer(cfg, d)
    evals = eval_problems(cfg, task)
    reward = build_reward(cfg.reward)  # the scoring pool starts while the model loads
    sft_dir = sft.cache_dir(cfg, base)
    start = str(sft_dir) if cfg.sft.steps and sft.cached(cfg, base) and not resume else base
    try:
        policy = loading.load_policy(start, cfg, d)
        engine = None if placed else engine_for(
            cfg, start, tokenizer, d.device, cfg.trainer.seed * 1000 + d.dp_rank
        )
    except BaseException:
        reward.close()  # its worker processes would outlive the failed start
        raise
    logger = _start_logger(cfg, run_dir, config_dict, d, resume)
    opt, sched = boundaries.make_optimizer(cfg, policy)
    pipe = _pipe(cfg, d, placed[1] if placed else None)
    run = Run(
        cfg,
        d,
        run_dir,
        plan_run(cfg),
        tokenizer,
        policy,
        engine,
        reward,
        logger,
        opt,
        sched,
        task.train,
        build_algorithm(cfg),
        UpdateSettings.of(cfg, d.world_size, d.device),
        evals,
        Counters(entropy_coef=cfg.entropy.coef),
        Live(boundaries.make_sampler(cfg, task.train, d.dp_rank, d.dp_size), pipe=pipe),
    )
    return Setup(
        run, resume, base, sft_dir, start, _first_summary(run, len(task.train), task.stats), t0
    )


def _pipe(cfg: Config, d: distributed.Dist, bridge: placement.Bridge | None):
    """Where an asynchronous run's batches come from (None: the synchronous step)."""
    if bridge is not None:
        from skyexp.rl.remote import RemotePipe

        return RemotePipe(bridge, cfg.rollout.staleness, d.rank)
    return LocalPipe(cfg.rollout.staleness) if cfg.rollout.staleness else None


def _start_logger(
    cfg: Config,
    run_dir: Path,
    config_dict: dict[str, Any] | None,
    d: distributed.Dist,
    resume: Path | None,
):
    """The metric sinks, continuing the checkpoint's W&B run; rows logged after the checkpoint
    (all of them without one) go first."""
    saved = checkpoint.read_state(resume) if resume else {}
    if cfg.trainer.resume and d.is_main:
        rewind_logs(run_dir, saved.get("counters", {}).get("global_step", 0))
    return make_logger(
        cfg.logger, run_dir, config_dict or asdict(cfg), d.is_main, saved.get("wandb_id")
    )


def _first_summary(run: Run, problems: int, data_stats: dict[str, Any]) -> Summary:
    """summary.json's entries known at setup; a random-reward control says so here and in the log,
    so it is never mistaken for a real result."""
    cfg = run.cfg
    summary = Summary(
        world_size=run.d.world_size,
        params=loading.num_params(run.policy),
        rollout=cfg.rollout.name,
        git_commit=git_commit(),
        data={"problems": problems, **data_stats},  # rows skipped, duplicates, ...
        reward_random=random_reward(cfg.reward.terms),
    )
    if summary.reward_random:
        log.warning(
            "reward=random: a random-reward CONTROL run (Bernoulli(reward.random_p=%g) per sample, "
            "independent of the answers); its W&B name and summary.json say so",
            cfg.reward.random_p,
        )
    return summary


def _shared_run_dir(run_dir: Path) -> Path:
    """Rank 0's run directory on every rank (another rank's Hydra may have picked a later
    timestamp)."""
    shared = Path(distributed.broadcast_object(str(run_dir)))
    if shared != run_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
    return shared


def sft_phase(s: Setup) -> None:
    """SFT warm-up, or its cached result (already loaded by setup)."""
    run, cfg = s.run, s.run.cfg
    with _phase(s.summary, "sft"):
        if cfg.sft.steps and s.start == s.base:
            s.summary.sft = sft.run_sft(
                cfg,
                run.d,
                run.policy,
                run.tokenizer,
                run.problems,
                s.sft_dir,
                run.log,
                run.d.is_main and use_bars(cfg.logger.progress),
            )
            if run.engine is not None:  # the generator ranks get the weights from the pipe
                run.engine.sync_weights(run.policy)
        elif cfg.sft.steps:
            log.info(
                "sft: reusing the cached result %s (config hash %s; sft.cache=false retrains)",
                s.sft_dir,
                s.sft_dir.name,
            )
        s.summary.sft_cached = bool(cfg.sft.steps) and s.start != s.base
        s.summary.sft_dir = str(s.sft_dir) if cfg.sft.steps else None


def reference_phase(s: Setup) -> None:
    """The frozen KL reference: the policy RL starts from (after SFT), loaded only with a KL
    term."""
    if s.run.cfg.algo.kl_coef > 0:
        s.run.live.ref = loading.load_reference(
            _reference_path(s.run.cfg, s.base, s.sft_dir), s.run.cfg, s.run.d
        )


def eval_before_phase(s: Setup) -> EvalResult | None:
    with _phase(s.summary, "eval_before"):
        before = evaluate(s.run, "before") if s.run.cfg.eval.before else None
    s.run.counters.pre_rl = PreRL(copy.deepcopy(s.summary), before.pass_at if before else None)
    return before


def rl_phase(
    s: Setup, before: EvalResult | SavedEval | None
) -> tuple[str | None, EvalResult | SavedEval | None]:
    """The RL stages (restored from the checkpoint first when resuming). Returns (why it stopped
    early or None, the evaluation before RL: this run's, or the one the checkpoint remembers)."""
    run = s.run
    with _phase(s.summary, "rl"):
        if s.resume:
            restore(run, s.resume)  # last: it sets every RNG
            pre = run.counters.pre_rl
            if pre.summary is not None:
                s.summary.resume(pre.summary, run.d.world_size, s.resume)
            if pre.before_pass_at:
                before = SavedEval(pre.before_pass_at)
        # checkpointed with the counters
        run.counters.pre_rl.clock = Clock.start(
            run.counters.pre_rl.clock, s.resume, run.counters.rl_step, s.t0
        )
        with faults.SigtermFlag() as sigterm:
            stopped = run_rl(run, sigterm)
    return stopped, before


def finish(s: Setup, before: EvalResult | SavedEval | None) -> dict[str, Any]:
    """Evaluation after RL, the exported model, the summary (and on rank 0 its files)."""
    run, cfg = s.run, s.run.cfg
    with _phase(s.summary, "eval_after"):
        after = evaluate(run, "after") if cfg.eval.after else None
    if cfg.trainer.save_final:
        export_hf(
            run.policy,
            run.tokenizer,
            run.run_dir / "final",
            run.d,
            {"rl_steps": run.counters.rl_step},
        )
    _summarise(s.summary, run, before, after, time.time() - s.t0)
    ck = run.counters.pre_rl.clock
    if ck and ck.resumed_at:  # times over every process of the run, not only this one
        s.summary.wall_s = round(s.summary.wall_s + ck.wall_before_s, 1)
        s.summary.resumed_at = ck.resumed_at
        s.summary.times["rl"] = round(s.summary.times["rl"] + ck.rl_before_s, 2)
    if run.d.is_main:
        _write_outputs(run, s.summary.to_json(), before, after)
    return s.summary.to_json()


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
        log.info(
            "trainer.resume=auto: no checkpoint in %s yet, starting afresh",
            run_dir / checkpoint.CKPT_DIR,
        )
    return Path(path) if path else None


def _reference_path(cfg: Config, base: str, sft_dir: Path) -> str:
    if not cfg.sft.steps:
        return base
    if not (sft_dir / "DONE").exists():
        raise ConfigError(
            f"config key 'trainer.resume': the KL reference is the SFT result {sft_dir}, which is "
            "gone; "
            "rerun SFT with the same config (same cache dir) or set algo.kl_coef=0"
        )
    return str(sft_dir)


@contextmanager
def _phase(summary: Summary, name: str):
    t = time.perf_counter()
    yield
    summary.times[name] = round(time.perf_counter() - t, 2)


def _summarise(
    summary: Summary,
    run: Run,
    before: EvalResult | SavedEval | None,
    after: EvalResult | None,
    wall: float,
) -> None:
    """The RL outcome into the summary: wall time, steps, the mean entropy and reward of the first
    and last few steps (single steps are noisy), pass@k before and after RL."""
    h = run.counters.history
    summary.wall_s, summary.rl_steps = round(wall, 1), run.counters.rl_step
    summary.skipped_steps = run.counters.skipped_steps
    if h:
        k = max(1, min(10, len(h) // 5))
        summary.ends = {
            "entropy_start": sum(x.entropy for x in h[:k]) / k,
            "entropy_end": sum(x.entropy for x in h[-k:]) / k,
            "reward_start": sum(x.reward for x in h[:k]) / k,
            "reward_end": sum(x.reward for x in h[-k:]) / k,
        }
    summary.pass_at = {
        label: dict(res.pass_at)
        for label, res in (("before", before), ("after", after))
        if res is not None
    }


def _write_outputs(
    run: Run, summary: dict[str, Any], before: EvalResult | None, after: EvalResult | None
) -> None:
    steps = [x.rl_step for x in run.counters.history]
    if steps:
        coef = plots.metric_by_step(run.run_dir / "metrics.jsonl", "actor/entropy_coeff")
        target = run.cfg.entropy.target if run.cfg.entropy.controller == "adaptive" else None
        history = run.counters.history
        plots.plot_entropy(
            steps,
            [x.entropy for x in history],
            [x.reward for x in history],
            run.run_dir / "entropy.png",
            [coef.get(s, 0.0) for s in steps] if run.cfg.entropy.controller != "none" else None,
            target,
            [st.first_step for st in run.plan.stages[1:]],
        )
    curves = {
        f"{lbl} RL": r.pass_at for lbl, r in (("before", before), ("after", after)) if r is not None
    }
    if curves:
        res = after or before
        plots.plot_passk(
            curves,
            run.run_dir / "passk.png",
            title=f"pass@k on {run.cfg.eval.name} (held out)",
            n=getattr(res, "n", None),
            problems=len(res.correct) if hasattr(res, "correct") else None,
        )
    # pass@k vs RL step (eval.every)
    plots.write_passk_over_training(run.run_dir, run.cfg.eval.name, run.log)
    (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info(
        "summary: %s",
        json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}),
    )
