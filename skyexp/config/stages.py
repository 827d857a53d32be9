"""The RL stages of the context schedule and the rollout-temperature schedule.

A run trains through `context.stages` in order, inside one process: each stage has its own step
count and response-length cap, and may override the prompt batch, samples per prompt, rollout
temperature and the handling of truncated responses. `plan_stages` resolves the overrides once;
`temperature_at` gives the rollout temperature of an RL step (the loss uses the temperature the
rollout carries, so both always agree).

Truncated responses (`context.truncated`, per stage `context.stages[i].truncated`):
  keep          scored as they are (an unfinished answer is usually wrong: reward 0);
  mask          excluded from the loss, still counted in their group's baseline (Skywork-OR1's
                "advantage mask" for truncated responses, arXiv 2505.22312 sec. 3.1; DAPO's
                overlong filtering, arXiv 2503.14476);
  soft_penalty  DAPO's soft overlong punishment added to the reward (the `overlong` reward term,
                with its weight from reward.terms or 1.0; arXiv 2503.14476 eq. 13).
`algo.mask_truncated` (set by the dapo preset) masks in every stage whatever the mode.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from skyexp.config.schema import Config, RewardConfig, TemperatureConfig

TRUNCATION_MODES = ("keep", "mask", "soft_penalty")


@dataclass(frozen=True)
class StagePlan:
    index: int
    steps: int
    batch_size: int
    n: int
    max_response_len: int
    temperature: float | None  # the stage's own temperature; None follows the temperature schedule
    truncated: str = "keep"  # a TRUNCATION_MODES entry
    first_step: int = 0  # RL step at which the stage starts


def plan_stages(cfg: Config) -> list[StagePlan]:
    """The RL stages of the context schedule, per-stage overrides resolved."""
    out, first = [], 0
    for i, s in enumerate(cfg.context.stages):
        out.append(StagePlan(i, s.steps, s.batch_size or cfg.algo.batch_size, s.n or cfg.algo.n, s.max_response_len,
                             s.temperature, s.truncated or cfg.context.truncated, first))
        first += s.steps
    return out


def total_steps(cfg: Config) -> int:
    return sum(s.steps for s in cfg.context.stages)


# Temperature schedules: (config, RL step, total RL steps) -> temperature.


def constant(t: TemperatureConfig, step: int, total: int) -> float:
    return t.value


def linear(t: TemperatureConfig, step: int, total: int) -> float:
    """From `value` at step 0 to `end` at step `steps` (0: the last RL step), constant after."""
    span = t.steps or max(total - 1, 1)
    return t.value + (t.end - t.value) * min(step / span, 1.0)


def step_schedule(t: TemperatureConfig, step: int, total: int) -> float:
    """`value` until milestones[0], then values[i] from milestones[i] on."""
    i = bisect.bisect_right(t.milestones, step)
    return t.value if i == 0 else t.values[i - 1]


TEMPERATURE_SCHEDULES: dict[str, Callable[[TemperatureConfig, int, int], float]] = {
    "constant": constant,
    "linear": linear,
    "step": step_schedule,
}


def temperature_at(cfg: Config, stage: StagePlan, step: int) -> float:
    """The rollout temperature of RL step `step`: the stage's own, else the schedule's."""
    if stage.temperature is not None:
        return stage.temperature
    return TEMPERATURE_SCHEDULES[cfg.temperature.schedule](cfg.temperature, step, total_steps(cfg))


def stage_reward(reward: RewardConfig, truncated: str) -> RewardConfig:
    """The reward config of a stage: soft_penalty adds DAPO's overlong term when it is not on."""
    if truncated != "soft_penalty" or reward.terms.get("overlong", 0) != 0:
        return reward
    return replace(reward, terms={**reward.terms, "overlong": 1.0})


def masks_truncated(cfg: Config, stage: StagePlan) -> bool:
    return cfg.algo.mask_truncated or stage.truncated == "mask"


def validate_schedule(c: Config, check: Callable[[bool, str, str], Any]) -> None:
    """Checks of context.*, temperature.* and the checkpoint keys of trainer.*; each names its key."""
    check(len(c.context.stages) >= 1, "context.stages", "needs at least one stage")
    check(c.context.truncated in TRUNCATION_MODES, "context.truncated",
          f"'{c.context.truncated}' is not one of {', '.join(TRUNCATION_MODES)}")
    prev = 0
    for i, s in enumerate(c.context.stages):
        key = f"context.stages[{i}]"
        check(s.steps > 0, f"{key}.steps", "must be > 0")
        check(s.max_response_len > 0, f"{key}.max_response_len", "must be > 0")
        check(s.max_response_len >= prev, f"{key}.max_response_len", f"must not decrease ({s.max_response_len} < {prev})")
        prev = s.max_response_len
        n = s.n if s.n is not None else c.algo.n
        check(n >= 1, f"{key}.n" if s.n is not None else "algo.n", "must be >= 1")
        if c.algo.advantage == "rloo":
            check(n >= 2, f"{key}.n" if s.n is not None else "algo.n", "rloo needs at least 2 samples per prompt (leave-one-out baseline)")
        bs = s.batch_size if s.batch_size is not None else c.algo.batch_size
        check(bs >= 1, f"{key}.batch_size", "must be >= 1")
        check(bs % c.algo.mini_batches == 0, "algo.mini_batches", f"must divide the prompt batch ({bs})")
        if s.temperature is not None:
            check(s.temperature > 0, f"{key}.temperature", "must be > 0")
        if s.truncated is not None:
            check(s.truncated in TRUNCATION_MODES, f"{key}.truncated", f"'{s.truncated}' is not one of {', '.join(TRUNCATION_MODES)}")
    t = c.temperature
    check(t.schedule in TEMPERATURE_SCHEDULES, "temperature.schedule",
          f"unknown value '{t.schedule}'; valid options: {', '.join(TEMPERATURE_SCHEDULES)}")
    check(t.value > 0, "temperature.value", "must be > 0 (RL samples)")
    if t.schedule == "linear":
        check(t.end > 0, "temperature.end", "must be > 0 (RL samples)")
        check(t.steps >= 0, "temperature.steps", "must be >= 0 (0: the whole RL run)")
    if t.schedule == "step":
        check(len(t.milestones) == len(t.values) >= 1, "temperature.milestones",
              f"needs one temperature.values entry per milestone ({len(t.milestones)} milestones, {len(t.values)} values)")
        check(all(a < b for a, b in zip(t.milestones, t.milestones[1:])) and all(m > 0 for m in t.milestones),
              "temperature.milestones", "must be positive and increasing")
        check(all(v > 0 for v in t.values), "temperature.values", "must be > 0 (RL samples)")
    r = c.trainer
    check(r.save_every >= 0, "trainer.save_every", "must be >= 0 (0: only at stage ends and when stopped)")
    check(r.keep_last >= 0, "trainer.keep_last", "must be >= 0 (0: keep every checkpoint)")
    check(r.max_bad_steps >= 1, "trainer.max_bad_steps", "must be >= 1")
