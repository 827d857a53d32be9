"""The trainer side of the disaggregated placement: a Pipe (skyexp.rl.async_loop) whose batches
come from the generator ranks and whose weights go to them (skyexp.rl.placement,
skyexp.rl.generator).

Trainer rank i receives its share of each step from generator i % g when it needs it (the
generator sent it without waiting, up to k steps earlier). Trainer 0 sends the control messages:
after every optimizer step the new weights (with an evaluation request when one is due); at
every stage entry the stage's prompt sampler; the checkpoint's position at the first message of
a resumed run; stop at the end. Every trainer takes part in each message, since the weights
are all-gathered from their shards as they stream.

A wait that fails (a generator died, hung past trainer.sync_timeout_s, or closed its
connection) is remembered; before the next step trains, the trainers agree on it and every
trainer raises RankLost, which the loop turns into a checkpoint and a stop naming the rank.
A checkpoint first receives every batch generated with the weights it holds (the steps up to
k ahead), so that it holds the batches in flight and generation's exact position.
"""

from __future__ import annotations

import logging
from typing import Any

from skyexp.config.stages import StagePlan
from skyexp.distributed import all_gather_objects, all_reduce_max, broadcast_object
from skyexp.evaluation.runner import SampledEvalResult, eval_due
from skyexp.rl import placement
from skyexp.rl.async_loop import Resumed, saved_generation
from skyexp.rl.boundaries import dropped_ids
from skyexp.rl.queue import BatchQueue, Snapshot, Tagged, from_plain, last_step_for
from skyexp.rl.state import Run, Timer
from skyexp.rl.step import received

log = logging.getLogger("skyexp")


class RemotePipe:
    remote = True

    def __init__(self, bridge: placement.Bridge, staleness: int, trainer: int):
        self.b, self.k, self.me = bridge, staleness, trainer
        self.source = bridge.generator_of(trainer)  # the generator of this trainer's share
        self.queue = BatchQueue()
        self.position: Snapshot | None = None  # generation after the last batch received
        self.last_received = -1  # its step
        self.trained: Snapshot | None = None  # generation after the last trained batch
        self.sent_version = -1  # the weights the generators hold
        self.sent_stage: Any = None
        self.started = False
        self.lost: str | None = None  # a failed wait, until the trainers agree on it
        self.eval_asked: str | None = None  # an evaluation the last message asked for
        self._dropped = 0

    # -- batches

    def take(self, run: Run, stage: StagePlan, t: Timer) -> Tagged:
        n = run.counters.rl_step
        with t("wait_gen"):
            self._receive_through(run, n, f"its batch of RL step {n}")
        self._agree(run)
        tagged = self.queue.take(n)
        self.trained = tagged.after
        return tagged

    def _receive_through(self, run: Run, step: int, what: str) -> None:
        """Receive this share's batches up to `step` (a failure is remembered in self.lost)."""
        if self.lost is not None:
            return
        try:
            while self.last_received < step:
                plain = placement.recv_object(self.b.links, self.source)
                tagged = from_plain(plain)
                received(run, tagged.batch)
                self.queue.put(tagged)
                self.position, self.last_received = tagged.after, tagged.step
        except RuntimeError as e:
            self.lost = str(self.b.lost(what, e, [self.source]))

    def _agree(self, run: Run) -> None:
        """Every trainer raises RankLost if any trainer's wait failed (a collective)."""
        if all_reduce_max(float(self.lost is not None), run.d.device) > 0:
            reasons = [x for x in all_gather_objects(self.lost) if x]
            raise placement.RankLost(reasons[0])

    # -- control messages

    def publish(self, run: Run, t: Timer) -> None:
        version = run.counters.rl_step + 1
        cfg = run.cfg
        label = None
        if eval_due(cfg.eval.every, version, run.plan.total_steps, cfg.eval.after):
            label = f"step{version}"
        self._message(run, version, t, eval=label)

    def enter_stage(self, run: Run, stage: StagePlan) -> None:
        self._message(run, run.counters.rl_step, None)

    def evaluation(self, run: Run, label: str) -> SampledEvalResult:
        """The generators' evaluation of the current weights (asked for now unless the last
        message did); every trainer gets it."""
        if self.eval_asked != label:
            self._message(run, run.counters.rl_step, None, eval=label)
        self.eval_asked = None
        result: Any = None
        if self.b.control is not None and self.lost is None:
            try:
                result = placement.recv_object(self.b.control, 0)
            except RuntimeError as e:
                gens = list(range(self.b.generators))
                self.lost = str(self.b.lost(f"evaluation {label}", e, gens))
        result = broadcast_object(result if self.lost is None else self.lost)
        if isinstance(result, str):
            raise placement.RankLost(result)
        return SampledEvalResult(**result)

    def _message(self, run: Run, version: int, t: Timer | None, **fields: Any) -> None:
        """One control message (trainer 0 sends, the generators take it when they need it) and,
        when newer than theirs, the weights: every trainer all-gathers them as they stream."""
        stage = {"index": run.counters.stage, "seed": run.live.sampler.seed,
                 "dropped": dropped_ids(run)}
        restore = None if self.started else self._start(run)
        weights = version > self.sent_version
        b = self.b
        if b.control is not None and self.lost is None:
            msg = {
                "version": version,
                "stage": stage if stage != self.sent_stage else None,
                "restore": restore,
                "weights": placement.manifest(run.policy) if weights else None,
                **fields,
            }
            try:
                with _timed(t, "wait_gen"):
                    placement.barrier(b.control)  # every generator is ready to take it
                placement.broadcast_object(b.control, msg, b.root, True)
            except RuntimeError as e:
                self.lost = str(b.lost("the generators to take the weights", e,
                                       list(range(b.generators))))
        if weights:
            with _timed(t, "sync"):
                error = placement.send_weights(b, run.policy, self.lost is None)
            if error is not None and self.lost is None:
                self.lost = str(b.lost("the weight transfer", error, list(range(b.generators))))
            self.sent_version = version
        self.sent_stage, self.started = stage, True
        self.eval_asked = fields.get("eval")

    def _start(self, run: Run) -> dict[str, Any]:
        """Where generation starts: the first step not generated yet, the sampler position and
        every share's sampling stream (None: the generator's fresh one). A collective."""
        position = self.position or Snapshot(run.live.sampler.state_dict(), None)
        streams = all_gather_objects(position.stream)
        nxt = self.last_received + 1 if self.last_received >= 0 else run.counters.rl_step
        return {"next_step": max(nxt, run.counters.rl_step), "sampler": position.sampler,
                "streams": dict(enumerate(streams)), "run_dir": str(run.run_dir)}

    # -- checkpoints

    def saved(self, run: Run) -> tuple[dict[str, Any], dict[str, Any]]:
        """Receive every batch the generators made with the weights the checkpoint holds (up to
        k steps ahead, within the stage), then save them as in flight, with the generation state
        after the last. After a lost rank: nothing in flight, generation rewound to the last
        trained batch."""
        n = run.counters.rl_step - 1  # the last trained step
        stage = run.plan.stage_at(n)
        through = last_step_for(n, self.k, stage.first_step + stage.steps)
        self._receive_through(run, through, "the batches in flight for a checkpoint")
        trained = self.trained or self.position or Snapshot(run.live.sampler.state_dict(), None)
        if all_reduce_max(float(self.lost is not None), run.d.device) > 0:
            return saved_generation(self.k, BatchQueue(), trained, trained.sampler, trained.stream)
        position = self.position if self.last_received > n else trained
        return saved_generation(self.k, self.queue, trained, position.sampler, position.stream)

    def restore(self, run: Run, resumed: Resumed) -> None:
        self.queue = BatchQueue(resumed.inflight)
        self.trained, self._dropped = resumed.trained, resumed.dropped
        last = self.queue.last_step()
        self.last_received = -1 if last is None else last
        self.position = Snapshot(run.live.sampler.state_dict(), resumed.stream)
        if last is None:  # generation goes on from the trained step
            self.last_received = run.counters.rl_step - 1

    def diagnosis(self) -> str | None:
        """Generator ranks that are gone, for the message of a run stopped by SIGTERM (torchrun
        sends it to every rank when one dies)."""
        return self.b.gone(list(range(self.b.generators)))

    def dropped_on_resume(self) -> int:
        d, self._dropped = self._dropped, 0
        return d

    def close(self, run: Run) -> None:
        """Tell the generators to stop (best effort: not after a lost rank)."""
        if self.b.control is None or self.lost is not None or not self.started:
            return
        try:
            placement.barrier(self.b.control)
            placement.broadcast_object(self.b.control, {"stop": True}, self.b.root, True)
        except RuntimeError as e:
            log.warning("could not stop the generators: %s", e)


class _timed:
    """t(name) when there is a timer, else nothing."""

    def __init__(self, t: Timer | None, name: str):
        self.cm = t(name) if t is not None else None

    def __enter__(self) -> None:
        if self.cm is not None:
            self.cm.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self.cm is not None:
            self.cm.__exit__(*exc)
