"""A generator rank of the disaggregated placement (skyexp.rl.placement): it holds a rollout
engine, a reward pool and, for each trainer share it serves, the prompt sampler and sampling
stream that trainer rank would have had in the synchronous loop; it never holds the policy's
optimizer or gradients.

Its loop: generate the batch of the next step as soon as it holds the weights that step is
scheduled for (skyexp.rl.queue.version_for) and the trainers have opened that step's stage; send
each share to its trainer without waiting for it to be taken; otherwise take the next control
message from trainer 0 (timed as timing_s/wait_train, reported with the next batch), which may
open a stage (new prompt sampler after a drop), restore a checkpoint's position, carry newer
weights (streamed in place into the engine), ask for an evaluation, or stop the run.

A generator runs at most rollout.staleness steps ahead of the trainers: it cannot generate step
s before it holds version s - k, which the trainers send after step s - k - 1.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from skyexp.config import Config
from skyexp.config.algorithm import Algorithm, build_algorithm
from skyexp.config.stages import RunPlan, plan_run
from skyexp.data import PromptSampler
from skyexp.data.difficulty import without
from skyexp.distributed import Dist
from skyexp.evaluation.runner import eval_template, run_eval
from skyexp.records import Problem
from skyexp.rewards import build_reward
from skyexp.rl import placement
from skyexp.rl.collect import Share, collect_shares
from skyexp.rl.queue import Snapshot, Tagged, to_plain, version_for
from skyexp.rl.state import Timer
from skyexp.rl.task import eval_problems, task_and_tokenizer
from skyexp.rollout import Engine, engine_for

log = logging.getLogger("skyexp")


@dataclass(frozen=True)
class GeneratorRank:
    """What a generator rank holds (what skyexp.rl.collect reads of a run, and more)."""

    cfg: Config
    d: Dist  # the generators' own group
    bridge: placement.Bridge
    tokenizer: Any
    engine: Engine
    reward: Any
    algorithm: Algorithm
    plan: RunPlan
    problems: list[Problem]  # the training set, before any stage-boundary drop
    eval_problems: list[Problem]


def serve(cfg: Config, d: Dist, bridge: placement.Bridge, run_dir: Path) -> None:
    """The generator rank's whole run: build, then generate until trainer 0 says stop. Its own
    Hydra directory goes once it knows the run's (trainer 0's), as another rank's does."""
    task, base, tokenizer = task_and_tokenizer(cfg, d)
    evals = eval_problems(cfg, task)
    reward = build_reward(cfg.reward)
    try:
        # its weights come from the trainers before it generates anything
        engine = engine_for(cfg, base, tokenizer, d.device, cfg.trainer.seed * 1000 + d.rank)
        rank = GeneratorRank(cfg, d, bridge, tokenizer, engine, reward, build_algorithm(cfg),
                             plan_run(cfg), task.train, evals)
        # SIGTERM (torchrun forwards it to every rank) is the trainers' to act on: they finish
        # the step, checkpoint, and send stop
        previous = signal.signal(signal.SIGTERM, lambda *_: log.info("generator: SIGTERM noted"))
        try:
            Generation(rank, run_dir).run()
        finally:
            signal.signal(signal.SIGTERM, previous)
    finally:
        reward.close()


class Generation:
    """The generator's position: weights version, next step, open stage, samplers, streams."""

    def __init__(self, rank: GeneratorRank, run_dir: Path):
        self.r, self.run_dir = rank, run_dir
        b = rank.bridge
        self.k = rank.cfg.rollout.staleness
        self.mine = b.shares_of(b.rank)  # the trainer shares this rank generates
        self.version = -1  # weights held (-1: none yet)
        self.next_step = 0
        self.stage = -1  # the last stage the trainers opened
        self.sampler_id: tuple[int, tuple[str, ...]] | None = None
        self.samplers: dict[int, PromptSampler] = {}
        seed = rank.cfg.trainer.seed
        has_stream = getattr(rank.engine, "generator", None) is not None
        # the stream of trainer rank i's engine in the synchronous loop
        self.streams: dict[int, torch.Generator | None] = {
            i: torch.Generator(device=rank.engine.generator.device).manual_seed(seed * 1000 + i)
            if has_stream else None
            for i in self.mine
        }
        self.pending: list[tuple[int, list[Any]]] = []  # (step, sends in flight)
        self.waited = 0.0  # waiting for the trainers since the last batch

    def run(self) -> None:
        total = self.r.plan.total_steps
        while True:
            s = self.next_step
            if s < total and self._ready(s):
                self._produce(s)
                continue
            t = time.perf_counter()
            msg = self._receive()
            self.waited += time.perf_counter() - t
            if msg.get("stop"):
                log.info("generator %d: stop after %d steps generated", self.r.d.rank, s)
                return
            self._apply(msg)

    def _ready(self, step: int) -> bool:
        stage = self.r.plan.stage_at(step)
        return self.stage == stage.index and self.version >= version_for(
            step, self.k, stage.first_step
        )

    def _produce(self, step: int) -> None:
        r, b = self.r, self.r.bridge
        stage = r.plan.stage_at(step)
        shares = [Share(step, i, b.trainers, self.samplers[i], self.streams[i]) for i in self.mine]
        t = Timer()
        batches = collect_shares(r, stage, r.plan.temperature_at(stage, step), shares, t)
        timings = {**t.s, "timing_s/wait_train": self.waited}
        for i, batch in zip(self.mine, batches):
            stream = self.streams[i]
            after = Snapshot(self.samplers[i].state_dict(),
                             stream.get_state() if stream is not None else None)
            versions = torch.full((len(batch.ids),), self.version, dtype=torch.long)
            tagged = Tagged(step, stage.index, versions, batch, after, timings)
            sends = placement.send_object(b.links, to_plain(tagged), b.trainer_rank(i))
            self.pending.append((step, sends))
        self.waited = 0.0
        self.next_step = step + 1

    def _receive(self) -> dict[str, Any]:
        b = self.r.bridge
        try:
            placement.barrier(b.control)
            return placement.broadcast_object(b.control, None, b.root, False)
        except RuntimeError as e:
            raise b.lost("a control message", e, [b.trainer_rank(0)]) from e

    def _apply(self, msg: dict[str, Any]) -> None:
        b = self.r.bridge
        if msg.get("stage") is not None:
            self._open_stage(msg["stage"])
        if msg.get("restore") is not None:
            self._restore(msg["restore"])
        if msg.get("weights") is not None:
            try:
                self.r.engine.load_weights(placement.receive_weights(b, msg["weights"]))
            except RuntimeError as e:
                raise b.lost("the weights", e, [b.trainer_rank(0)]) from e
        self.version = msg["version"]
        # the trainers took every batch before this version's
        done = [p for p in self.pending if p[0] < self.version]
        self.pending = [p for p in self.pending if p[0] >= self.version]
        for _, sends in done:
            placement.wait_sent(sends)
        if msg.get("eval"):
            self._evaluate(msg["eval"])

    def _open_stage(self, st: dict[str, Any]) -> None:
        """A stage the trainers opened: the prompt sampler they decided (a new one after
        context.drop_solved), kept as is when unchanged."""
        ident = (int(st["seed"]), tuple(st["dropped"]))
        if ident != self.sampler_id:
            kept, _ = without(self.r.problems, set(st["dropped"]))
            cfg, parts = self.r.cfg, self.r.bridge.trainers
            self.samplers = {i: PromptSampler(kept, ident[0], i, parts, cfg.data.shuffle)
                             for i in self.mine}
            self.sampler_id = ident
        self.stage = int(st["index"])
        log.info("generator %d: stage %d open (%d prompts)", self.r.d.rank, self.stage,
                 len(next(iter(self.samplers.values())).problems))

    def _restore(self, r: dict[str, Any]) -> None:
        """Where generation goes on: a checkpoint's (or a fresh run's) position."""
        for i in self.mine:
            self.samplers[i].load_state_dict(r["sampler"])
            state = r["streams"].get(i)
            if state is not None and self.streams[i] is not None:
                self.streams[i].set_state(state)
        self.next_step = int(r["next_step"])
        if Path(r["run_dir"]) != self.run_dir:  # another timestamp than trainer 0's
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _evaluate(self, label: str) -> None:
        r, b = self.r, self.r.bridge
        # each share's evaluation as its trainer rank would run it in the synchronous loop
        shards = [((i, b.trainers), self.streams[i]) for i in self.mine]
        res = run_eval(r.engine, r.reward, r.tokenizer, r.eval_problems, r.cfg.eval,
                       eval_template(r.cfg.eval), r.cfg.model.chat_template, shards=shards)
        if r.d.rank == 0:
            log.info("generator: evaluation %s done in %.1fs", label, res.seconds)
            placement.wait_sent(placement.send_object(b.control, dataclasses.asdict(res), b.root))
