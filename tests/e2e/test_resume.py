"""Exact resume, as a user meets it: `python -m skyexp` (one process and torchrun with two ranks)
is killed with SIGKILL at a random step after its first checkpoint, stopped with SIGTERM, or
killed in the middle of writing a checkpoint; `trainer.resume=auto` then finishes the run, and
its per-step metrics and final parameters equal those of an uninterrupted run bit for bit."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, tiny

from skyexp import checkpoint

STEPS = (
    2,
    3,
    2,
)  # 7 RL steps over three stages; checkpoints at 2 (stage end), 4, 5 (stage end), 6, 7
ARGS = tiny(
    "logger=default",
    "trainer.threads=1",
    "trainer.warmup_steps=2",
    "trainer.micro_batch_size=16",
    "context=tiny_3stage",
    *[f"context.stages.{i}.steps={s}" for i, s in enumerate(STEPS)],
    *[f"context.stages.{i}.max_response_len={n}" for i, n in enumerate((16, 24, 32))],
    "reward=cosine",
    "entropy=adaptive",
    "entropy.target=9.0",
    "trainer.save_every=2",
    "trainer.keep_last=2",
    "logger.samples_every=1",
    "logger.samples_rows=3",
)
RESUME = ["trainer.resume=auto"]


def launch(
    args: list[str], run_dir: Path, torchrun: int = 0, script: list[str] | None = None
) -> subprocess.Popen:
    """Start a run in its own process group (so a kill reaches torchrun's workers too)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if script:
        cmd = [sys.executable, *script]
    elif torchrun:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={torchrun}",
            "-m",
            "skyexp",
        ]
    else:
        cmd = [sys.executable, "-m", "skyexp"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    log_path = run_dir.parent / f"{run_dir.name}.{time.monotonic_ns()}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd + args + [f"hydra.run.dir={run_dir}"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc.log_path = log_path  # type: ignore[attr-defined]
    return proc


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the run and every process under it: torchrun starts each worker in a session of
    its own, so killing torchrun's process group would leave the workers running."""
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(p.name))
    tree, todo = [], [proc.pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def finish(proc: subprocess.Popen, timeout: int = 900) -> tuple[int, str]:
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        raise
    return code, proc.log_path.read_text()


def run(args: list[str], run_dir: Path, torchrun: int = 0) -> str:
    code, out = finish(launch(args, run_dir, torchrun))
    assert code == 0, out[-4000:]
    return out


def rl_steps_logged(run_dir: Path) -> list[int]:
    f = run_dir / "metrics.jsonl"
    rows = []
    for line in f.read_text().splitlines() if f.exists() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line being written
            pass
    return [int(r["train/rl_step"]) for r in rows if "actor/pg_loss" in r]


def wait_for_step(proc: subprocess.Popen, run_dir: Path, k: int, timeout: float = 900) -> None:
    end = time.monotonic() + timeout
    while k not in rl_steps_logged(run_dir):
        assert proc.poll() is None, f"the run ended before RL step {k}: {finish(proc)[1][-3000:]}"
        assert time.monotonic() < end, f"RL step {k} not reached in {timeout}s"
        time.sleep(0.02)


def comparable(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [
        {
            k: v
            for k, v in r.items()
            if not k.startswith(("timing_s/", "timing_per_token_ms/")) and k != "perf/throughput"
        }
        for r in rows
    ]


def assert_same_run(resumed: Path, reference: Path) -> None:
    got, want = comparable(resumed), comparable(reference)
    assert [r.get("train/rl_step") for r in got] == [r.get("train/rl_step") for r in want]
    for g, w in zip(got, want):
        assert g == w, {k: (g.get(k), w.get(k)) for k in set(g) | set(w) if g.get(k) != w.get(k)}
    from safetensors.torch import load_file

    table = (
        "tables/samples.completions.jsonl"  # rewound with metrics.jsonl: no step twice, none lost
    )
    got_rows, want_rows = ((p / table).read_text().splitlines() for p in (resumed, reference))
    assert got_rows == want_rows and len(want_rows) == 3 * sum(STEPS)
    a, b = (
        load_file(resumed / "final" / "model.safetensors"),
        load_file(reference / "final" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run(ARGS, run_dir)
    rl = comparable(run_dir)
    assert [r["train/rl_step"] for r in rl if "actor/pg_loss" in r] == list(range(sum(STEPS)))
    assert (
        len({r["actor/pg_loss"] for r in rl if "actor/pg_loss" in r}) > 1
    )  # the policy really trains
    return run_dir


def _kill_point() -> int:
    seed = int(os.environ.get("SKYEXP_TEST_SEED", time.time_ns() % 10_000))
    k = random.Random(seed).randint(
        2, sum(STEPS) - 2
    )  # after the first checkpoint (step 2), before the end
    print(f"kill after RL step {k} (SKYEXP_TEST_SEED={seed})")
    return k


@pytest.mark.slow
def test_sigkill_then_resume_is_exact(reference, tmp_path):
    run_dir, k = tmp_path / "run", _kill_point()
    proc = launch(ARGS, run_dir)
    wait_for_step(proc, run_dir, k)
    kill_tree(proc)
    assert finish(proc)[0] == -signal.SIGKILL
    saved = checkpoint.complete_checkpoints(run_dir)
    assert saved and checkpoint.step_of(saved[-1]) <= k + 1 < sum(STEPS), f"k={k}"
    assert not (run_dir / "final").exists()
    out = run(ARGS + RESUME, run_dir)
    assert f"resumed from {saved[-1]}" in out
    assert_same_run(run_dir, reference)
    # the resumed run continues the same W&B run
    ids = {p.name.rsplit("-", 1)[-1] for p in (run_dir / "wandb").glob("offline-run-*")}
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 2 and len(ids) == 1
    assert json.loads((run_dir / "summary.json").read_text())["resumed_from"] == str(saved[-1])


@pytest.mark.slow
def test_sigterm_leaves_a_checkpoint_to_resume_from(reference, tmp_path):
    run_dir = tmp_path / "run"
    proc = launch(ARGS, run_dir)
    wait_for_step(proc, run_dir, 0)
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc)
    assert code == 143 and "SIGTERM: stopped after RL step" in out, out[-3000:]
    saved = checkpoint.complete_checkpoints(run_dir)
    state = checkpoint.read_state(saved[-1])
    assert state["reason"] == "sigterm" and str(saved[-1]) in out
    assert (
        rl_steps_logged(run_dir)[-1] == state["counters"]["rl_step"] - 1
    )  # it stopped right after the saved step
    assert not list((run_dir / "checkpoints").glob(".tmp-*")) and not (run_dir / "final").exists()
    run(ARGS + RESUME, run_dir)
    assert_same_run(run_dir, reference)


@pytest.mark.slow
def test_kill_while_saving_keeps_the_previous_checkpoint(reference, tmp_path):
    run_dir = tmp_path / "run"
    code, out = finish(launch(ARGS, run_dir, script=[str(ROOT / "tests" / "kill_in_save.py"), "4"]))
    assert code == -signal.SIGKILL, out[-3000:]
    torn = list((run_dir / "checkpoints").glob(".tmp-step_00000004-*"))
    assert (
        len(torn) == 1
        and (torn[0] / "DONE").exists()
        and (torn[0] / "model" / ".metadata").exists()
    )
    assert [p.name for p in checkpoint.complete_checkpoints(run_dir)] == [
        "step_00000002"
    ]  # 4 never became one
    run(ARGS + RESUME, run_dir)
    assert_same_run(run_dir, reference)
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))  # the next save cleared the torn one
    assert [p.name for p in checkpoint.complete_checkpoints(run_dir)] == [
        "step_00000006",
        "step_00000007",
    ]  # keep_last=2


@pytest.mark.slow
@pytest.mark.dist
def test_torchrun_sigkill_or_sigterm_then_resume_is_exact(tmp_path):
    args = ARGS + ["logger=local"]
    reference = tmp_path / "reference"
    run(args, reference, torchrun=2)
    run_dir, k = tmp_path / "run", _kill_point()
    proc = launch(args, run_dir, torchrun=2)
    wait_for_step(proc, run_dir, k)
    kill_tree(proc)
    finish(proc)
    time.sleep(2)  # nothing may still be running to finish the run behind the test's back
    saved = checkpoint.complete_checkpoints(run_dir)
    assert saved and checkpoint.step_of(saved[-1]) <= k + 1 < sum(STEPS), f"k={k}"
    assert not (run_dir / "final").exists() and max(rl_steps_logged(run_dir)) < sum(STEPS) - 1
    assert sorted(
        p.name for p in checkpoint.complete_checkpoints(run_dir)[-1].glob("rank_*.pt")
    ) == ["rank_0.pt", "rank_1.pt"]
    run(args + RESUME, run_dir, torchrun=2)
    assert_same_run(run_dir, reference)
    # SIGTERM to torchrun: it forwards the signal, both ranks agree on the step, save and exit
    run_dir = tmp_path / "term"
    proc = launch(args, run_dir, torchrun=2)
    wait_for_step(proc, run_dir, 1)
    os.kill(proc.pid, signal.SIGTERM)
    code, out = finish(proc)
    assert code != 0 and "SIGTERM: stopped after RL step" in out, out[-3000:]
    saved = checkpoint.complete_checkpoints(run_dir)
    assert saved and checkpoint.read_state(saved[-1])["reason"] == "sigterm"
    run(args + RESUME, run_dir, torchrun=2)
    assert_same_run(run_dir, reference)


# trainer.deterministic=true without trainer.threads=1: the setting alone must make runs repeatable
# (with 2 threads per rank, two runs of ARGS differ from the first step in grad_norm and pg_loss).
DET_ARGS = [a for a in ARGS if a != "trainer.threads=1"] + ["trainer.deterministic=true"]


@pytest.fixture(scope="module")
def det_reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("det_reference") / "run"
    run(DET_ARGS, run_dir)
    return run_dir


@pytest.mark.slow
def test_deterministic_runs_are_identical(det_reference, tmp_path):
    run(DET_ARGS, tmp_path / "run")
    assert_same_run(tmp_path / "run", det_reference)


@pytest.mark.slow
def test_deterministic_resume_equals_uninterrupted(det_reference, tmp_path):
    run_dir, k = tmp_path / "run", _kill_point()
    proc = launch(DET_ARGS, run_dir)
    wait_for_step(proc, run_dir, k)
    kill_tree(proc)
    finish(proc)
    assert checkpoint.complete_checkpoints(run_dir) and not (run_dir / "final").exists()
    run(DET_ARGS + RESUME, run_dir)
    assert_same_run(run_dir, det_reference)


def test_deterministic_setup_pins_threads_kernels_and_gpu_settings():
    """In a fresh process (the settings are process-wide): one CPU thread and deterministic torch
    kernels; the cuBLAS and NCCL settings a GPU run gets (set without touching a GPU), a user's own
    NCCL setting kept; vLLM's batch-invariant mode on GPUs only."""
    code = (
        "import os, torch\n"
        "from skyexp import distributed\n"
        "from skyexp.rollout.vllm import determinism_env\n"
        "d = distributed.setup('cpu', 2, False, True)\n"
        "assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()\n"
        "distributed.make_deterministic(use_cuda=True)\n"
        "assert os.environ['CUBLAS_WORKSPACE_CONFIG'] == ':4096:8' and os.environ['NCCL_ALGO'] == "
        "'Tree'\n"
        "assert os.environ['NCCL_PROTO'] == 'Simple' and torch.backends.cudnn.deterministic\n"
        "assert determinism_env('cuda', True) == {'VLLM_BATCH_INVARIANT': '1'}\n"
        "assert determinism_env('cpu', True) == {} and determinism_env('cuda', False) == {}\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NCCL_", "CUBLAS_"))}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**env, "NCCL_ALGO": "Tree"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
    plain = subprocess.run(
        [
            sys.executable,
            "-c",
            "import torch\nfrom skyexp import distributed\n"
            "distributed.setup('cpu', 2)\nprint(torch.get_num_threads(), "
            "torch.are_deterministic_algorithms_enabled())",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plain.stdout.split() == ["2", "False"], plain.stderr[-2000:]
