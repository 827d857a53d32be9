"""A guard for runs that train nothing: RL steps that made no optimizer step.

With a group filter (algo.filter_groups) a group whose samples all got the same reward has zero
advantage and is dropped; when every group of a step is dropped, the step generates and scores
but never updates the policy. An untrained model on a hard task (every reward 0) or a saturated
one (every reward 1) does this at every step and looks busy. After trainer.max_idle_steps such
steps in a row the run warns once, saying why; with trainer.stop_idle it stops (exit code 4).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("skyexp")

IDLE_EXIT = 4


def idle_streak(streak: int, metrics: dict[str, Any]) -> int:
    """The number of RL steps in a row, up to this one, that made no optimizer step."""
    return streak + 1 if not metrics.get("actor/optimizer_steps", 0) else 0


def idle_message(streak: int, metrics: dict[str, Any]) -> str:
    """Why the last `streak` steps trained nothing, from the last step's metrics."""
    kept = metrics.get("batch/kept_groups")
    none, every = metrics.get("batch/solve_none", 0.0), metrics.get("batch/solve_all", 0.0)
    why = "no optimizer step was taken"
    if kept is not None and kept == 0:
        why = (
            "every group was filtered out (algo.filter_groups): all rewards in each group were "
            f"equal "
            f"(solved by no sample: {none:.0%} of groups, by every sample: {every:.0%})"
        )
    hint = (
        "start from a model that solves some prompts (an SFT warm-up: sft=arith_warmup, or a "
        "stronger checkpoint), use more samples per prompt (algo.n), or algo.filter_groups=none"
    )
    return (
        f"RL step {int(metrics.get('train/rl_step', 0))}: {streak} RL steps in a row made 0 "
        "optimizer steps, "
        f"the policy is not training: {why}. To fix: {hint}"
    )


def check_idle(
    streak: int, metrics: dict[str, Any], max_idle: int, stop: bool
) -> tuple[int, str | None]:
    """(the new streak, a message when the run should stop). Warns loudly once the streak reaches
    `max_idle` (0: never), and again every `max_idle` steps while it lasts."""
    streak = idle_streak(streak, metrics)
    if max_idle <= 0 or streak < max_idle or streak % max_idle:
        return streak, None
    msg = idle_message(streak, metrics)
    if stop:
        return streak, f"{msg} (trainer.stop_idle=true: stopping)"
    log.warning("%s\n%s\n%s (trainer.stop_idle=true stops such a run)", "!" * 80, msg, "!" * 80)
    return streak, None
