"""The RL run's typed state: `Run`, what setup built once (config, ranks, model, engine, reward,
optimizer, plan, the bound algorithm), with its `Counters` (position, entropy controller, faults,
history) and its `Live` objects (prompt sampler, pass counts, KL reference).

Every module of the RL wing takes a Run; control flow reads its typed fields and the typed
StepResult of each step, never the metrics dict, which is for logging only. A checkpoint saves
exactly `asdict(run.counters)` besides model, optimizer, scheduler, sampler, pass counts and RNGs
(skyexp.rl.resume), so a resumed run continues as if it had never stopped.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from skyexp.config import Config
from skyexp.config.algorithm import Algorithm
from skyexp.config.stages import RunPlan
from skyexp.data import PromptSampler
from skyexp.data.difficulty import Counts
from skyexp.distributed import Dist
from skyexp.records import Problem
from skyexp.rewards import MathVerifyReward
from skyexp.rl.summary import PreRL
from skyexp.rl.update import UpdateSettings
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
class Counters:
    """The loop's position and state, exactly what a checkpoint holds of the loop (serialised with
    dataclasses.asdict, read back with `Counters.of`)."""

    global_step: int = 0  # the logger's step (RL steps, SFT steps, evaluations, stage boundaries)
    # position: the next step is step `step_in_stage` of stage `stage`
    rl_step: int = 0
    stage: int = 0
    step_in_stage: int = 0
    entropy_coef: float = 0.0  # the entropy controller's state
    # actor/entropy_trained of the first RL step (AER's anchor); -1: not measured yet
    entropy_anchor: float = -1.0
    # RL step of the last ProRL reference reset (0: the reference is the start)
    ref_reset_step: int = 0
    skipped_steps: int = 0  # RL steps with an update skipped for a non-finite loss or gradient
    bad_streak: int = 0  # ... in a row, up to now
    history: list[StepRecord] = field(default_factory=list)
    pre_rl: PreRL = field(default_factory=PreRL)  # what the phases before RL reported

    @staticmethod
    def of(saved: dict[str, Any]) -> Counters:
        """The counters of a checkpoint's asdict form."""
        return Counters(**{**saved, "history": [StepRecord(**h) for h in saved["history"]],
                           "pre_rl": PreRL.of(saved["pre_rl"])})

    def load(self, other: Counters) -> None:
        """Take every value of `other` (a checkpoint's), in place: the run holds this object."""
        for f in fields(self):
            setattr(self, f.name, getattr(other, f.name))


@dataclass
class Live:
    """What the run replaces as it goes: the prompt sampler (a new one at each stage boundary),
    this stage's pass counts, the KL reference (loaded after SFT), the asynchronous loop's pipe."""

    sampler: PromptSampler
    # this stage, this rank: prompt id -> (correct, samples)
    solved: Counts = field(default_factory=dict)
    ref: torch.nn.Module | None = None  # frozen reference policy, loaded only when a KL term is on
    # RL steps in a row with 0 optimizer steps (skyexp.rl.idle; not checkpointed)
    idle_streak: int = 0
    # asynchronous RL (rollout.staleness > 0 or trainer.rollout_ranks > 0): where the batches come
    # from (skyexp.rl.async_loop.Pipe); None: the synchronous step
    pipe: Any = None


@dataclass(frozen=True)
class Run:
    """What setup built, shared by every phase, and the two mutable parts: the counters (saved
    with a checkpoint) and the live objects."""

    cfg: Config
    d: Dist
    run_dir: Path
    plan: RunPlan
    tokenizer: PreTrainedTokenizerBase
    policy: torch.nn.Module
    engine: Engine | None  # None on the trainer ranks of the disaggregated placement
    reward: MathVerifyReward
    logger: MultiLogger
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    problems: list[Problem]  # the whole training set, before any stage-boundary drop
    algorithm: Algorithm  # every algorithmic piece, bound once (skyexp.config.algorithm)
    settings: UpdateSettings  # how the update and the sampler-view forward passes run
    eval_problems: list[Problem]  # for eval.before / every / after
    counters: Counters
    live: Live

    def log(self, metrics: dict[str, Any]) -> None:
        self.logger.log(metrics, self.counters.global_step)
        self.counters.global_step += 1


class Timer:
    """Wall time of named parts of a step, summed under `timing_s/<name>`."""

    def __init__(self) -> None:
        self.s: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self.s[f"timing_s/{name}"] = self.s.get(f"timing_s/{name}", 0.0) + time.perf_counter() - t
