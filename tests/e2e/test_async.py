"""Asynchronous RL end to end, as a user runs it (CPU, gloo, torchrun with one generator rank and
one trainer rank, trainer.deterministic=true):

- rollout.staleness=0 on the disaggregated placement is the synchronous loop: the same per-step
  metrics and final weights as one process;
- rollout.staleness=1: step n trains the groups version n - 1 generated (their tags), the
  trainer never holds more than one batch ahead, and the run equals the same staleness without
  the placement (each rank generating its own batches, skyexp.rl.async_loop.LocalPipe);
- the whole job SIGKILLed mid-flight and resumed equals the uninterrupted run, and every prompt
  of an epoch trained exactly once;
- a killed generator rank stops the run within the timeout, with a checkpoint and a message
  naming the rank.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny
from test_resume import comparable, finish, kill_tree, launch, rl_steps_logged, run, wait_for_step

from skyexp import checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.dist]

PROMPTS, BATCH, STEPS = 12, 4, 6  # an epoch is 3 steps: the run trains two
ARGS = tiny(
    "reward=cosine",
    "trainer.threads=1",
    "trainer.deterministic=true",
    "trainer.micro_batch_size=16",
    f"data.train_size={PROMPTS}",
    f"algo.batch_size={BATCH}",
    f"context.stages.0.steps={STEPS}",
    "trainer.save_every=2",
    "logger.samples_every=1",
    "logger.samples_rows=16",  # every sample of the step (4 prompts x 4)
)
PLACED = ["trainer.rollout_ranks=1", "trainer.sync_timeout_s=60"]
ASYNC_ONLY = ("rollout/staleness", "rollout/dropped_stale")


def rl_rows(run_dir: Path) -> list[dict]:
    return [r for r in comparable(run_dir) if "actor/pg_loss" in r]


def assert_same(got_dir: Path, want_dir: Path) -> None:
    """Same metrics (but the asynchronous loop's own), samples and final weights."""
    from safetensors.torch import load_file

    got, want = (
        [{k: v for k, v in r.items() if not k.startswith(ASYNC_ONLY)} for r in comparable(p)]
        for p in (got_dir, want_dir)
    )
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g == w, {k: (g.get(k), w.get(k)) for k in set(g) | set(w) if g.get(k) != w.get(k)}
    table = "tables/samples.completions.jsonl"
    assert (got_dir / table).read_text() == (want_dir / table).read_text()
    a, b = (load_file(p / "final" / "model.safetensors") for p in (got_dir, want_dir))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def async_run(tmp_path_factory) -> Path:
    """The uninterrupted disaggregated run at staleness 1."""
    run_dir = tmp_path_factory.mktemp("async") / "run"
    run(ARGS + PLACED + ["rollout.staleness=1"], run_dir, torchrun=2)
    return run_dir


def test_staleness_0_disaggregated_is_the_synchronous_loop(tmp_path):
    run(ARGS, tmp_path / "sync")
    run(ARGS + PLACED, tmp_path / "placed", torchrun=2)
    assert_same(tmp_path / "placed", tmp_path / "sync")
    rows = rl_rows(tmp_path / "placed")
    assert [r["rollout/staleness/max"] for r in rows] == [0.0] * STEPS
    assert len({r["actor/pg_loss"] for r in rows}) > 1  # the policy really trains


def test_staleness_1_trains_the_previous_version(async_run, tmp_path):
    rows = rl_rows(async_run)
    # step n trains what version n - 1 generated (step 0: version 0)
    assert [r["rollout/staleness/mean"] for r in rows] == [0.0] + [1.0] * (STEPS - 1)
    assert max(r["rollout/staleness/max"] for r in rows) == 1.0
    assert all(r["rollout/dropped_stale"] == 0 for r in rows)
    # the checkpoints' batches in flight: only the next step's, tagged with the version before
    for ck in checkpoint.complete_checkpoints(async_run):
        step = checkpoint.step_of(ck)
        inflight = torch.load(ck / "rank_0.pt", weights_only=True)["inflight"]
        want = [step] if step < STEPS else []  # nothing in flight at the end
        assert [x["step"] for x in inflight] == want
        assert all(x["versions"].tolist() == [x["step"] - 1] * BATCH for x in inflight)
    # the same computation as staleness 1 without the placement
    run(ARGS + ["rollout.staleness=1"], tmp_path / "local")
    assert_same(async_run, tmp_path / "local")


def test_async_kill_mid_flight_then_resume_is_exact(async_run, tmp_path):
    args = ARGS + PLACED + ["rollout.staleness=1"]
    run_dir = tmp_path / "run"
    proc = launch(args, run_dir, torchrun=2)
    wait_for_step(proc, run_dir, 2)  # past the checkpoint after 2 steps (batch 2 in flight)
    kill_tree(proc)
    finish(proc)
    time.sleep(1)
    saved = checkpoint.complete_checkpoints(run_dir)
    assert saved and not (run_dir / "final").exists()
    assert torch.load(saved[-1] / "rank_0.pt", weights_only=True)["inflight"]
    run(args + ["trainer.resume=auto"], run_dir, torchrun=2)
    assert_same(run_dir, async_run)
    # every prompt of each epoch trained exactly once
    steps: dict[int, set[str]] = collections.defaultdict(set)
    for line in (run_dir / "tables" / "samples.completions.jsonl").read_text().splitlines():
        row = json.loads(line)
        steps[row["rl_step"]].add(row["prompt"])
    per_epoch = PROMPTS // BATCH
    for e in range(STEPS // per_epoch):
        prompts = [p for s in range(e * per_epoch, (e + 1) * per_epoch) for p in steps[s]]
        assert len(prompts) == len(set(prompts)) == PROMPTS, e


def _rank_pid(root: int, rank: int) -> int:
    """The pid of torchrun worker `rank` under process `root`."""
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
        except OSError:
            env = []
        if f"RANK={rank}".encode() in env and f"LOCAL_RANK={rank}".encode() in env:
            return pid
        todo += children.get(pid, [])
    raise AssertionError(f"no torchrun worker of rank {rank} under {root}")


def test_killed_generator_stops_with_a_checkpoint_naming_it(tmp_path):
    timeout = 20
    args = ARGS + ["trainer.rollout_ranks=1", f"trainer.sync_timeout_s={timeout}",
                   "rollout.staleness=1", "context.stages.0.steps=40"]
    run_dir = tmp_path / "run"
    proc = launch(args, run_dir, torchrun=2)
    wait_for_step(proc, run_dir, 2)
    os.kill(_rank_pid(proc.pid, 0), signal.SIGKILL)
    t = time.monotonic()
    code, out = finish(proc, timeout=timeout + 60)
    assert time.monotonic() - t < timeout + 30, out[-3000:]
    assert code != 0 and "generator rank 0 (global rank 0) gone" in out, out[-3000:]
    saved = checkpoint.complete_checkpoints(run_dir)
    assert saved and checkpoint.step_of(saved[-1]) == max(rl_steps_logged(run_dir)) + 1
    assert str(saved[-1]) in out and not (run_dir / "final").exists()
