"""Stopping an RL run cleanly: non-finite steps are counted and, trainer.max_bad_steps in a row,
stop the run; SIGTERM (what SLURM sends before preemption) stops it after the current step; a
generator rank that dies or hangs (trainer.sync_timeout_s, skyexp.rl.placement) stops it before
the next. All stop with a checkpoint (skyexp.rl.resume) and an exit code that says why."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import torch

from skyexp.distributed import all_reduce_max
from skyexp.rl.state import Run, StepResult

log = logging.getLogger("skyexp")

SIGTERM_EXIT = 143  # 128 + SIGTERM: "stopped, resumable", as a shell reports a process killed by it
NONFINITE_EXIT = 3
RANK_LOST_EXIT = 5  # another rank died or hung (trainer.sync_timeout_s): stopped, resumable


class Stopped(RuntimeError):
    """The run stopped early with a checkpoint; the message says why and how to go on."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def stopped(reason: str, run: Run, path: Path) -> Stopped:
    """The exception that ends a run stopped early, with what to do next."""
    again = f"resume with trainer.resume=auto hydra.run.dir={run.run_dir}"
    if reason == "sigterm":
        # torchrun sends SIGTERM to every rank when one dies: name it
        diagnose = getattr(run.live.pipe, "diagnosis", None)
        why = diagnose() if diagnose is not None else None
        return Stopped(
            f"SIGTERM{f' ({why})' if why else ''}: stopped after RL step "
            f"{run.counters.rl_step - 1} (train/rl_step; {run.counters.rl_step} steps "
            f"done) with a checkpoint in {path}; {again}",
            SIGTERM_EXIT,
        )
    return Stopped(
        f"stopped after RL step {run.counters.rl_step - 1} (train/rl_step): "
        f"{run.counters.bad_streak} steps in a row "
        "had a non-finite loss or gradient "
        f"(trainer.max_bad_steps={run.cfg.trainer.max_bad_steps}; their updates were skipped). "
        "The last good "
        f"state is saved in {path}; fix the cause (a lower trainer.lr, a tighter "
        f"trainer.grad_clip), then {again}",
        NONFINITE_EXIT,
    )


def lost(why: str, run: Run, path: Path) -> Stopped:
    """The exception that ends a run whose generator (or another trainer) was lost."""
    return Stopped(
        f"{why}. Stopped after RL step {run.counters.rl_step - 1} (train/rl_step) with a "
        f"checkpoint in {path}; resume with trainer.resume=auto hydra.run.dir={run.run_dir}",
        RANK_LOST_EXIT,
    )


def count_faults(run: Run, result: StepResult) -> None:
    """Non-finite updates: counted (train/skipped_steps); too many in a row stops the run."""
    bad = result.skipped_updates > 0
    run.counters.skipped_steps += int(bad)
    run.counters.bad_streak = run.counters.bad_streak + 1 if bad else 0
    if bad:
        log.warning(
            "RL step %s: non-finite loss or gradient, update skipped (%d in a row)",
            result.record.rl_step,
            run.counters.bad_streak,
        )


def stop_reason(run: Run, sigterm: SigtermFlag) -> str | None:
    """Why the run must stop after this step, the same on every rank (None: go on)."""
    asked = sigterm.agreed(run.d.device)  # a collective: every rank calls it every step
    if run.counters.bad_streak >= run.cfg.trainer.max_bad_steps:
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
        # Python delivers signals there only
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        else:
            log.warning("training outside the main thread: SIGTERM will not checkpoint the run")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def agreed(self, device: torch.device) -> bool:
        return all_reduce_max(float(self.received), device) > 0
