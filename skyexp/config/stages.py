"""The RL stages of the context schedule and the rollout-temperature schedule.

A run trains through `context.stages` in order, inside one process: each stage has its own step
count and response-length cap, and may override the prompt batch, samples per prompt, rollout
temperature and the handling of truncated responses. `plan_run` resolves the overrides once
into a typed RunPlan, which validation, the RL loop, the temperature schedule and checkpointing
all read; each resolved value remembers the config key it came from, so a check names the key the
user set. `RunPlan.temperature_at` gives the rollout temperature of an RL step (the loss uses the
temperature the rollout carries, so both always agree).

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
from dataclasses import dataclass, field, replace
from typing import Any

from skyexp.config.schema import Config, RewardConfig, TemperatureConfig

TRUNCATION_MODES = ("keep", "mask", "soft_penalty")


@dataclass(frozen=True)
class StagePlan:
    """One RL stage, every per-stage override resolved."""

    index: int
    steps: int
    batch_size: int  # prompts per step, all ranks
    n: int  # samples per prompt
    max_response_len: int
    # the stage's own temperature; None: the schedule's (RunPlan.temperature_at)
    own_temperature: float | None = None
    truncated: str = "keep"  # a TRUNCATION_MODES entry
    first_step: int = 0  # RL step at which the stage starts
    # truncated responses get no loss (truncated == "mask" or algo.mask_truncated)
    mask_truncated: bool = False
    # with DAPO's overlong term under soft_penalty
    reward: RewardConfig = field(default_factory=RewardConfig)
    # resolved field -> the config key that set it
    keys: dict[str, str] = field(default_factory=dict)

    def key(self, name: str) -> str:
        """The config key behind a resolved field (`context.stages[1].n` or `algo.n`)."""
        return self.keys.get(name, f"context.stages[{self.index}].{name}")


@dataclass(frozen=True)
class RunPlan:
    stages: tuple[StagePlan, ...]
    total_steps: int
    temperature: TemperatureConfig

    def stage_at(self, step: int) -> StagePlan:
        """The stage RL step `step` belongs to (the last one for steps past the plan)."""
        for stage in self.stages:
            if step < stage.first_step + stage.steps:
                return stage
        return self.stages[-1]

    def temperature_at(self, stage: StagePlan, step: int) -> float:
        """The rollout temperature of RL step `step`: the stage's own, else the schedule's."""
        if stage.own_temperature is not None:
            return stage.own_temperature
        return TEMPERATURE_SCHEDULES[self.temperature.schedule](
            self.temperature, step, self.total_steps
        )


def _resolve(c: Config, i: int, first: int) -> StagePlan:
    s, key = c.context.stages[i], f"context.stages[{i}]"
    keys = {name: (f"{key}.{name}" if getattr(s, name) is not None else f"{default}.{name}")
            for name, default in (("batch_size", "algo"), ("n", "algo"), ("truncated", "context"))}
    truncated = s.truncated if s.truncated is not None else c.context.truncated
    return StagePlan(
        i,
        s.steps,
        s.batch_size if s.batch_size is not None else c.algo.batch_size,
        s.n if s.n is not None else c.algo.n,
        s.max_response_len,
        s.temperature,
        truncated,
        first,
        c.algo.mask_truncated or truncated == "mask",
        stage_reward(c.reward, truncated),
        keys,
    )


def plan_run(c: Config) -> RunPlan:
    """The RL stages of the context schedule, per-stage overrides resolved (once per run)."""
    stages, first = [], 0
    for i, s in enumerate(c.context.stages):
        stages.append(_resolve(c, i, first))
        first += s.steps
    return RunPlan(tuple(stages), first, c.temperature)


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


def stage_reward(reward: RewardConfig, truncated: str) -> RewardConfig:
    """The reward config of a stage: soft_penalty adds DAPO's overlong term when it is not on."""
    if truncated != "soft_penalty" or reward.terms.get("overlong", 0) != 0:
        return reward
    return replace(reward, terms={**reward.terms, "overlong": 1.0})


Check = Callable[[bool, str, str], Any]


def validate_schedule(c: Config, check: Check, estimator: Any) -> None:
    """Checks of context.*, temperature.* and the checkpoint keys of trainer.*; each names its key.
    The stage checks run on the resolved plan (the same one the run uses); each stage's samples per
    prompt against the constraints `estimator` declares (skyexp.algos.advantages.Estimator)."""
    check(len(c.context.stages) >= 1, "context.stages", "needs at least one stage")
    check(c.context.truncated in TRUNCATION_MODES, "context.truncated",
          f"'{c.context.truncated}' is not one of {', '.join(TRUNCATION_MODES)}")
    prev = 0
    for s in plan_run(c).stages:
        check(s.steps > 0, s.key("steps"), "must be > 0")
        check(s.max_response_len > 0, s.key("max_response_len"), "must be > 0")
        check(
            s.max_response_len >= prev,
            s.key("max_response_len"),
            f"must not decrease ({s.max_response_len} < {prev})",
        )
        prev = s.max_response_len
        check(s.n >= 1, s.key("n"), "must be >= 1")
        _check_estimator(c, s.n, s.key("n"), estimator, check)
        check(s.batch_size >= 1, s.key("batch_size"), "must be >= 1")
        check(
            s.batch_size % c.algo.mini_batches == 0,
            "algo.mini_batches",
            f"must divide the prompt batch ({s.batch_size})",
        )
        if s.own_temperature is not None:
            check(s.own_temperature > 0, s.key("temperature"), "must be > 0")
        check(
            s.truncated in TRUNCATION_MODES,
            s.key("truncated"),
            f"'{s.truncated}' is not one of {', '.join(TRUNCATION_MODES)}",
        )
    _validate_temperature(c.temperature, check)
    r = c.trainer
    check(
        r.save_every >= 0,
        "trainer.save_every",
        "must be >= 0 (0: only at stage ends and when stopped)",
    )
    check(r.keep_last >= 0, "trainer.keep_last", "must be >= 0 (0: keep every checkpoint)")
    check(r.max_bad_steps >= 1, "trainer.max_bad_steps", "must be >= 1")
    check(r.max_idle_steps >= 0, "trainer.max_idle_steps", "must be >= 0 (0: never warn)")


def _validate_temperature(t: TemperatureConfig, check: Check) -> None:
    check(t.schedule in TEMPERATURE_SCHEDULES, "temperature.schedule",
          f"unknown value '{t.schedule}'; valid options: {', '.join(TEMPERATURE_SCHEDULES)}")
    check(t.value > 0, "temperature.value", "must be > 0 (RL samples)")
    if t.schedule == "linear":
        check(t.end > 0, "temperature.end", "must be > 0 (RL samples)")
        check(t.steps >= 0, "temperature.steps", "must be >= 0 (0: the whole RL run)")
    if t.schedule == "step":
        check(
            len(t.milestones) == len(t.values) >= 1,
            "temperature.milestones",
            f"needs one temperature.values entry per milestone ({len(t.milestones)} milestones, "
            f"{len(t.values)} values)",
        )
        check(
            all(a < b for a, b in zip(t.milestones, t.milestones[1:]))
            and all(m > 0 for m in t.milestones),
            "temperature.milestones",
            "must be positive and increasing",
        )
        check(all(v > 0 for v in t.values), "temperature.values", "must be > 0 (RL samples)")


def check_world_plan(c: Config, world_size: int, check: Check) -> None:
    """The plan's checks that need the number of ranks (known only after the process group
    starts)."""
    for s in plan_run(c).stages:
        check(s.batch_size % world_size == 0, s.key("batch_size"),
              f"prompt batch {s.batch_size} is not divisible by {world_size} ranks")
        check((s.batch_size // world_size) % c.algo.mini_batches == 0, "algo.mini_batches",
              f"must divide the per-rank prompt batch ({s.batch_size // world_size})")


def _check_estimator(c: Config, n: int, n_key: str, estimator: Any, check: Check) -> None:
    """The advantage estimator's own constraints (its registry entry): at least min_n samples per
    prompt, and algo.passk_k within the largest k it takes at n samples."""
    a = c.algo
    check(
        n >= estimator.min_n,
        n_key,
        f"{a.advantage} needs at least {estimator.min_n} samples per prompt",
    )
    if estimator.max_k is not None:
        k_max, why = estimator.max_k(n)
        check(a.passk_k <= k_max, "algo.passk_k", f"k = {a.passk_k} {why} ({n} at {n_key})")
