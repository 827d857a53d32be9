"""The RL run's one typed state: what is set up once (config, ranks, model, engine, reward,
optimizer, plan) and the counters the loop moves (position, entropy controller, faults, history).

Every module of the RL wing takes a RunState; control flow reads its typed fields and the typed
StepResult of each step, never the metrics dict, which is for logging only. A checkpoint saves
exactly `RunState.counters()` besides model, optimizer, scheduler, sampler and RNGs
(skyexp.rl.lifecycle), so a resumed run continues as if it had never stopped.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from skyexp.config import Config
from skyexp.config.stages import RunPlan
from skyexp.data import PromptSampler
from skyexp.data.difficulty import Counts
from skyexp.distributed import Dist
from skyexp.records import Problem
from skyexp.rewards import MathVerifyReward
from skyexp.rollout import Engine
from skyexp.tracking import MultiLogger


@dataclass(frozen=True)
class StepRecord:
    """What the run keeps of each RL step for its summary and entropy plot."""

    rl_step: int
    entropy: float  # the sampling policy's mean token entropy (actor/entropy)
    reward: float  # mean reward of every sample generated (critic/score/mean)


@dataclass(frozen=True)
class StepResult:
    """One RL step's typed outcome (the loop's control flow reads this) and its metrics (logged)."""

    record: StepRecord
    batch_pass1: float  # share of correct samples
    seconds: float
    skipped_updates: int  # optimizer steps skipped for a non-finite loss or gradient
    metrics: dict[str, Any]


@dataclass
class RunState:
    """Everything the RL stages share. Mutable counters live here and nowhere else."""

    cfg: Config
    d: Dist
    run_dir: Path
    plan: RunPlan
    tokenizer: PreTrainedTokenizerBase
    policy: torch.nn.Module
    engine: Engine
    reward: MathVerifyReward
    logger: MultiLogger
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    sampler: PromptSampler
    problems: list[Problem]  # the whole training set, before any stage-boundary drop
    eval_problems: list[Problem] = field(default_factory=list)  # for eval.before / every / after
    ref: torch.nn.Module | None = None  # frozen reference policy, loaded only when a KL term is on
    # position: the next step is step `step_in_stage` of stage `stage`
    global_step: int = 0  # the logger's step (RL steps, SFT steps, evaluations, stage boundaries)
    rl_step: int = 0
    stage: int = 0
    step_in_stage: int = 0
    entropy_coef: float = 0.0  # the entropy controller's state
    ref_reset_step: int = 0  # RL step of the last ProRL reference reset (0: the reference is the start)
    skipped_steps: int = 0  # RL steps with an update skipped for a non-finite loss or gradient
    bad_streak: int = 0  # ... in a row, up to now
    idle_streak: int = 0  # RL steps in a row with 0 optimizer steps (skyexp.rl.idle; not checkpointed)
    history: list[StepRecord] = field(default_factory=list)
    solved: Counts = field(default_factory=dict)  # this stage, this rank: prompt id -> (correct, samples)
    pre_rl: dict[str, Any] = field(default_factory=dict)  # summary entries of the phases before RL

    def log(self, metrics: dict[str, Any]) -> None:
        self.logger.log(metrics, self.global_step)
        self.global_step += 1

    def counters(self) -> dict[str, Any]:
        """The loop's counters as JSON-ready values, for a checkpoint's state.json."""
        return {"rl_step": self.rl_step, "global_step": self.global_step, "stage": self.stage,
                "step_in_stage": self.step_in_stage, "skipped_steps": self.skipped_steps, "bad_streak": self.bad_streak,
                "algo": {"entropy_coef": self.entropy_coef, "ref_reset_step": self.ref_reset_step}, "history": [asdict(h) for h in self.history],
                "pre_rl": self.pre_rl}

    def load_counters(self, state: dict[str, Any]) -> None:
        self.rl_step, self.global_step = state["rl_step"], state["global_step"]
        self.stage, self.step_in_stage = state["stage"], state["step_in_stage"]
        self.skipped_steps, self.bad_streak = state["skipped_steps"], state["bad_streak"]
        self.entropy_coef = float(state["algo"]["entropy_coef"])
        self.ref_reset_step = int(state["algo"].get("ref_reset_step", 0))
        self.history = [StepRecord(**h) for h in state["history"]]
        self.pre_rl = state["pre_rl"]


class Timer:
    """Wall time of named parts of a step, summed under `timing_s/<name>`."""

    def __init__(self) -> None:
        self.s: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self.s[f"timing_s/{name}"] = self.s.get(f"timing_s/{name}", 0.0) + time.perf_counter() - t
