"""The RL run's lifecycle: building the optimizer and sampler, saving and restoring the run
state (skyexp.rl.state) exactly, stage boundaries, and stopping cleanly (SIGTERM, non-finite steps).

A run resumed from a checkpoint continues as if it had never stopped: the checkpoint holds the
policy and AdamW state (DCP, sharded), the LR scheduler, every RNG of every rank, the prompt
sampler's position and the prompts dropped at stage boundaries, the pass counts of the current
stage (for the next boundary's drop), the entropy controller, the logger step and the W&B run id.
On CPU the resumed run's metrics and parameters equal an uninterrupted run's bit for bit
(tests/test_resume.py).
"""

from __future__ import annotations

import json
import logging
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skyexp import checkpoint
from skyexp.config import Config, ConfigError
from skyexp.config.stages import StagePlan
from skyexp.data import DataError, PromptSampler
from skyexp.data.difficulty import Counts, fully_solved, merge, without
from skyexp.distributed import all_gather_objects, all_reduce_max, offload_optimizer
from skyexp.records import Problem
from skyexp.rl.state import RunState, StepResult
from skyexp.rollout import Engine

log = logging.getLogger("skyexp")

SIGTERM_EXIT = 143  # 128 + SIGTERM: "stopped, resumable", as a shell reports a process killed by it
NONFINITE_EXIT = 3


class Stopped(RuntimeError):
    """The run stopped early with a checkpoint; the message says why and how to go on."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def stopped(reason: str, run: RunState, path: Path) -> Stopped:
    """The exception that ends a run stopped early, with what to do next."""
    again = f"resume with trainer.resume=auto hydra.run.dir={run.run_dir}"
    if reason == "sigterm":
        return Stopped(f"SIGTERM: stopped after RL step {run.rl_step} with a checkpoint in {path}; {again}", SIGTERM_EXIT)
    return Stopped(f"stopped at RL step {run.rl_step}: {run.bad_streak} steps in a row had a non-finite loss or gradient "
                   f"(trainer.max_bad_steps={run.cfg.trainer.max_bad_steps}; their updates were skipped). The last good "
                   f"state is saved in {path}; fix the cause (a lower trainer.lr, a tighter trainer.grad_clip), then {again}",
                   NONFINITE_EXIT)


@dataclass(frozen=True)
class SavedEval:
    """pass@k of an evaluation that ran before the resume (all that summary and plots need of it)."""

    pass_at: dict[int, float]


def make_optimizer(cfg: Config, policy: torch.nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (the fused kernel on unsharded parameters: one pass over memory instead of several,
    6x faster on a 26M-parameter CPU model) and its LR warm-up."""
    t, params = cfg.trainer, list(policy.parameters())
    fused = not any(hasattr(p, "full_tensor") for p in params) and params[0].device.type in ("cpu", "cuda")
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, betas=tuple(t.betas), fused=fused or None)
    warm = max(t.warmup_steps, 0)
    if t.offload == "optimizer":
        offload_optimizer(opt)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / warm) if warm else 1.0)
    return opt, sched


def make_sampler(cfg: Config, problems: list[Problem], rank: int, world: int) -> PromptSampler:
    return PromptSampler(problems, cfg.trainer.seed, rank, world, cfg.data.shuffle)


def dropped_ids(run: RunState) -> list[str]:
    """The prompts dropped at stage boundaries so far: those the sampler in use no longer holds."""
    kept = {p.id for p in run.sampler.problems}
    return [p.id for p in run.problems if p.id not in kept]


def merged_counts(run: RunState) -> Counts:
    """This stage's (correct, samples) per prompt id, summed over every rank's run.solved."""
    counts: Counts = {}
    for rank_counts in all_gather_objects(run.solved):
        counts = merge(counts, rank_counts)
    return counts


def drop_solved(run: RunState, sampler: PromptSampler, stage_index: int, extra: dict[str, Any] | None = None) -> PromptSampler:
    """Skywork-OR1's online filtering at the start of stage `stage_index`: the prompts solved in
    every sample drawn for them during the previous stage (on any rank) leave the training set;
    the next stage draws fresh shuffled epochs over the rest. Logs the boundary (with `extra`)."""
    kept, dropped = without(sampler.problems, fully_solved(merged_counts(run)))
    if not kept:
        raise DataError(f"context.drop_solved: every prompt was solved in every sample during stage {stage_index - 1}")
    log.info("stage %d: dropped %d prompts solved in every sample during stage %d, %d left", stage_index, dropped,
             stage_index - 1, len(kept))
    run.log({"train/dropped_solved": dropped, "train/prompts": len(kept), "train/rl_step": run.rl_step, **(extra or {})})
    return PromptSampler(kept, sampler.seed + stage_index, sampler.rank, sampler.world, sampler.shuffle)


def enter_stage(run: RunState, stage: StagePlan) -> None:
    """Stage boundary: drop the prompts solved in every sample during the previous stage
    (context.drop_solved), reset AdamW's moments (context.reset_optimizer), log the boundary."""
    cfg = run.cfg
    if stage.index > 0:
        row = {"train/stage": stage.index, "train/max_response_len": stage.max_response_len}
        if cfg.context.reset_optimizer:
            run.opt.state.clear()
        if cfg.context.drop_solved:
            run.sampler = drop_solved(run, run.sampler, stage.index, row)
        else:
            run.log({**row, "train/rl_step": run.rl_step})
        log.info("stage %d: %d steps, max_response_len %d", stage.index, stage.steps, stage.max_response_len)
    run.solved = {}


def reset_reference(run: RunState) -> bool:
    """ProRL (Liu et al., arXiv 2505.24864, sec. 2.3): every algo.ref_reset_every RL steps (counted
    from the start of RL, run.rl_step being the steps done) the KL reference becomes a copy of the
    current policy and, with algo.ref_reset_optimizer, AdamW's moments restart. ProRL resets when
    validation stalls or the KL term dominates, at hand-picked points; a fixed period is our
    departure, so that a run is reproducible from its config. Returns whether it reset."""
    a = run.cfg.algo
    if not a.ref_reset_every or run.ref is None or run.rl_step % a.ref_reset_every:
        return False
    with torch.no_grad():
        for mine, theirs in zip(run.ref.state_dict().values(), run.policy.state_dict().values(), strict=True):
            mine.copy_(theirs)
    if a.ref_reset_optimizer:
        run.opt.state.clear()
    run.ref_reset_step = run.rl_step
    log.info("RL step %d: ProRL reset, the KL reference is now the current policy%s", run.rl_step,
             " and AdamW's moments restart" if a.ref_reset_optimizer else "")
    return True


def count_faults(run: RunState, result: StepResult) -> None:
    """Non-finite updates: counted (train/skipped_steps); too many in a row stops the run."""
    bad = result.skipped_updates > 0
    run.skipped_steps += int(bad)
    run.bad_streak = run.bad_streak + 1 if bad else 0
    result.metrics["train/skipped_steps"] = run.skipped_steps
    if bad:
        log.warning("RL step %s: non-finite loss or gradient, update skipped (%d in a row)", result.record.rl_step,
                    run.bad_streak)


def stop_reason(run: RunState, sigterm: SigtermFlag) -> str | None:
    """Why the run must stop after this step, the same on every rank (None: go on)."""
    asked = sigterm.agreed(run.d.device)  # a collective: every rank calls it every step
    if run.bad_streak >= run.cfg.trainer.max_bad_steps:
        return "nonfinite"
    return "sigterm" if asked else None


class SigtermFlag:
    """SIGTERM (what SLURM sends before preemption) only sets a flag; the loop checks it between
    steps, on every rank at the same step, then saves a checkpoint and exits."""

    def __init__(self) -> None:
        self.received = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = True
        log.warning("SIGTERM received: stopping after this step with a checkpoint")

    def __enter__(self) -> SigtermFlag:
        if threading.current_thread() is threading.main_thread():  # Python delivers signals there only
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        else:
            log.warning("training outside the main thread: SIGTERM will not checkpoint the run")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def agreed(self, device: torch.device) -> bool:
        return all_reduce_max(float(self.received), device) > 0


# -- saving and restoring -------------------------------------------------------------------


def rng_state(engine: Engine) -> dict[str, Any]:
    np_name, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    out: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                           "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_gauss, np_cached]}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    gen = getattr(engine, "generator", None)  # the rollout engine's sampling generator, when it has one
    if gen is not None:
        out["engine"] = gen.get_state()
    return out


def set_rng_state(engine: Engine, s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    name, keys, pos, gauss, cached = s["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, gauss, cached))
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    gen = getattr(engine, "generator", None)
    if gen is not None and "engine" in s:
        gen.set_state(s["engine"])


def save(run: RunState, reason: str) -> Path:
    """Checkpoint the run after its last completed step. All ranks call this."""
    cfg, d = run.cfg, run.d
    path = run.run_dir / checkpoint.CKPT_DIR / f"{checkpoint.PREFIX}{run.rl_step:08d}"
    state = {
        "version": 2, "reason": reason, **run.counters(), "world_size": d.world_size, "sampler": run.sampler.state_dict(),
        "dropped": dropped_ids(run), "solved": merged_counts(run), "scheduler": run.sched.state_dict(),
        "wandb_id": run.logger.run_id, "config": asdict(cfg),
    }
    t = time.perf_counter()
    ref = run.ref if run.ref_reset_step > 0 else None  # a reset reference is not rebuilt from the start
    checkpoint.save(path, run.policy, run.opt, state, rng_state(run.engine), d, cfg.trainer.keep_last, ref)
    log.info("checkpoint %s (%s): %.1f MB in %.2fs", path.name, reason, checkpoint.size_bytes(path) / 2**20,
             time.perf_counter() - t)
    return path


def restore(run: RunState, path: Path) -> dict[str, Any]:
    """Load a checkpoint into the run (all ranks). The RNGs are restored last: call this after
    every other set-up step, right before the RL loop."""
    cfg, d, t = run.cfg, run.d, time.perf_counter()
    state = checkpoint.read_state(path)
    if state.get("version", 1) < 2:
        raise ConfigError(f"config key 'trainer.resume': {path} was written by an older skyexp (checkpoint state "
                          f"version {state.get('version', 1)}, this one reads 2); resume it with that version or start afresh")
    warn_config_changes(state["config"], asdict(cfg))
    private = checkpoint.load(path, run.policy, run.opt, d)
    run.sched.load_state_dict(state["scheduler"])
    run.load_counters(state)
    if run.ref_reset_step > 0:  # the reference of a ProRL reset: the policy at that step, saved with the run
        checkpoint.load_ref(path, run.ref)
    run.solved = {k: tuple(v) for k, v in state["solved"].items()} if d.is_main else {}  # merged at the boundary
    # the sampler in use: over the prompts not dropped so far, with its own seed; its state's
    # fingerprint of the problem list makes a wrong reconstruction fail loudly
    kept, _ = without(run.problems, set(state["dropped"]))
    run.sampler = PromptSampler(kept, state["sampler"]["seed"], d.dp_rank, d.dp_size, cfg.data.shuffle)
    run.sampler.load_state_dict(state["sampler"])
    run.engine.sync_weights(run.policy)
    if private:
        set_rng_state(run.engine, private)
    if state["world_size"] != d.world_size:
        log.warning("resuming %d-rank checkpoint on %d ranks: model and optimizer are resharded, but ranks without a "
                    "saved RNG state start fresh ones, so rollouts differ from an uninterrupted run",
                    state["world_size"], d.world_size)
    log.info("resumed from %s: RL step %d (stage %d, step %d of it) in %.2fs", path, run.rl_step, run.stage, run.step_in_stage,
             time.perf_counter() - t)
    return state


IGNORED_CHANGES = ("trainer.resume", "logger.")


def warn_config_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Name the config values that differ from the checkpoint's (the run goes on with the new ones)."""
    a, b = _flat(saved), _flat(now)
    changed = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not k.startswith(IGNORED_CHANGES)]
    if changed:
        log.warning("resuming with a changed config (continuing with the new values): %s",
                    "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed))
    return changed


def _flat(x: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(x, dict):
        out: dict[str, Any] = {}
        for k, v in x.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(x, sort_keys=True) if isinstance(x, list) else x}


def rewind_logs(run_dir: Path, global_step: int) -> int:
    """Rewind metrics.jsonl and every tables/*.jsonl (sample completions) of a run directory to its
    checkpoint (see rewind_metrics). Returns how many rows were dropped in all."""
    files = [run_dir / "metrics.jsonl", *sorted((run_dir / "tables").glob("*.jsonl"))]
    return sum(rewind_metrics(f, global_step) for f in files)


def rewind_metrics(path: Path, global_step: int) -> int:
    """Drop the rows a killed run logged after its checkpoint from a JSONL log (they are logged
    again by the resumed run). Returns how many were dropped."""
    if not path.exists():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    keep = [ln for ln in lines if ln.strip() and _row_step(ln) < global_step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(keep))
    tmp.replace(path)
    return len(lines) - len(keep)


def _row_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):  # a torn last line from the kill
        return float("inf")
