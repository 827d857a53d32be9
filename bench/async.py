"""Synchronous against asynchronous RL on this CPU, side by side: step time, generation and update
time, and how long the generator and the trainer sit idle.

    python bench/async.py                     # both workloads, 2 warm-up + 6 measured steps each
    python bench/async.py --quick             # a smoke run: small workloads, 1 + 3 steps

Three placements of the same work (`python -m skyexp` itself, as a user runs it; the metrics are
read from each run's metrics.jsonl):

- sync-1proc:  the synchronous loop in one process on 2 threads (today's default);
- sync-2ranks: the synchronous loop on 2 ranks under torchrun (data parallel), 1 thread each;
- async-k1:    rollout.staleness=1 with trainer.rollout_ranks=1: one generator rank and one
               trainer rank, 1 thread each; the generator makes step n + 1's batch while the
               trainer trains step n.

Two workloads (bench/common.py's models, GRPO, fp32, `reward.terms.random`: Bernoulli(0.5)
rewards, so that nearly every group is mixed and the update trains every row, as
bench/rl_step.py's parity reward does):

- tiny:     the tiny default of bench/rl_step.py, 16 prompts x 8 samples x 64 tokens (the update
            dominates);
- balanced: 8 prompts x 4 samples x 256 tokens on the same model: four times longer responses
            and a quarter of the rows, so that generation (sequential in the tokens) weighs about
            what the update does at 2 threads.

Columns: step = median trainer step (s); gen = generation + scoring of one batch (s); update =
the trainer's work on it (old log-probs, reference, update, weight sync; s); gen idle / train
idle = the share of the step the generator / trainer spends waiting (synchronous: the other
phase; async-k1: timing_s/wait_train / timing_s/wait_gen); x sync = step / sync-1proc's step.
The overlap is free when async-k1's step is within about 10% of max(gen, update) at 1 thread.

Timings mean something only on an otherwise idle machine: the load average is printed before and
after each run, and written with the results to bench/results/<date>-async-<host>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from common import MODELS, ROOT, load_average  # noqa: E402

WORKLOADS = {  # (prompts, samples, max new tokens)
    "tiny": (16, 8, 64),
    "balanced": (8, 4, 256),
}
QUICK_WORKLOADS = {"tiny": (4, 4, 16), "balanced": (2, 2, 64)}
MODES = {
    # name: (torchrun ranks (0: one process), threads per rank, extra overrides)
    "sync-1proc": (0, 2, ["trainer.fsdp=false"]),
    "sync-2ranks": (2, 1, []),
    "async-k1": (2, 1, ["trainer.rollout_ranks=1", "rollout.staleness=1", "trainer.fsdp=false"]),
}
GEN = ("timing_s/gen", "timing_s/reward")
UPDATE = ("timing_s/old_logp", "timing_s/ref", "timing_s/update", "timing_s/sync")


def overrides(work: tuple[int, int, int], steps: int, model: str, cache: str) -> list[str]:
    prompts, samples, tokens = work
    arch = MODELS[model]
    return [
        "algo=grpo", "sft=none", "entropy=none", "temperature=t1_0", "rollout=hf",
        "logger=local", "logger.progress=false", "eval.before=false", "eval.after=false",
        f"algo.batch_size={prompts}", f"algo.n={samples}",
        f"context.stages.0.max_response_len={tokens}", f"context.stages.0.steps={steps}",
        *(f"model.{k}={v}" for k, v in arch.items()),
        "+reward.terms.random=1.0", "reward.terms.accuracy=0",
        "trainer.lr=1e-6", "trainer.micro_batch_size=64", "trainer.warmup_steps=0",
        "trainer.save_every=0", "trainer.save_final=false", "trainer.device=cpu",
        f"trainer.cache_dir={cache}", "data.train_size=2000", "trainer.sync_timeout_s=600",
    ]


def run_mode(mode: str, args: list[str], run_dir: Path) -> list[dict[str, Any]]:
    """Run one placement; its RL rows of metrics.jsonl."""
    ranks, threads, extra = MODES[mode]
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc_per_node={ranks}", "-m", "skyexp"]
        if ranks else [sys.executable, "-m", "skyexp"]
    )
    cmd = [*launcher, *args, *extra, f"trainer.threads={threads}", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{(r.stdout + r.stderr)[-3000:]}")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x for x in rows if "actor/pg_loss" in x]


def summarise(rows: list[dict[str, Any]], warmup: int, mode: str) -> dict[str, float]:
    """Medians over the measured steps (the last step of an async run generates nothing, the
    first trains a batch made before the pipeline filled: both are left out there)."""
    measured = rows[warmup:-1] if mode.startswith("async") else rows[warmup:]

    def med(keys: tuple[str, ...]) -> float:
        return statistics.median(sum(x.get(k, 0.0) for k in keys) for x in measured)

    step, gen, update = med(("timing_s/step",)), med(GEN), med(UPDATE)
    if mode.startswith("async"):
        gen_idle = med(("timing_s/wait_train",)) / step
        train_idle = med(("timing_s/wait_gen",)) / step
    else:  # one process does both, one after the other
        gen_idle, train_idle = 1 - gen / step, 1 - update / step
    return {"step_s": step, "gen_s": gen, "update_s": update, "gen_idle": gen_idle,
            "train_idle": train_idle, "steps": len(measured)}


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = [
        "| workload | placement | step (s) | gen (s) | update (s) | gen idle | train idle "
        "| x sync-1proc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for work, modes in results.items():
        base = modes["sync-1proc"]["step_s"]
        for mode, r in modes.items():
            lines.append(
                f"| {work} | {mode} | {r['step_s']:.3f} | {r['gen_s']:.3f} | {r['update_s']:.3f} "
                f"| {r['gen_idle']:.0%} | {r['train_idle']:.0%} | {r['step_s'] / base:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small workloads, few steps (a smoke run)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="measured steps per run")
    p.add_argument("--workloads", default="tiny,balanced")
    p.add_argument("--model", default="tiny", choices=sorted(MODELS))
    p.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    a = p.parse_args(argv)
    warmup = a.warmup if a.warmup is not None else (1 if a.quick else 2)
    steps = a.steps or (3 if a.quick else 6)
    works = QUICK_WORKLOADS if a.quick else WORKLOADS
    started = datetime.datetime.now()
    results: dict[str, dict[str, dict[str, float]]] = {}
    loads: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.workloads.split(","):
            # +1: the async trainer's last step is left out
            args = overrides(works[name], warmup + steps + 1, a.model, str(Path(tmp) / "cache"))
            results[name] = {}
            for mode in MODES:
                before = load_average()
                rows = run_mode(mode, args, Path(tmp) / f"{name}-{mode}")
                results[name][mode] = summarise(rows, warmup, mode)
                loads.append({"run": f"{name}/{mode}", "before": before, "after": load_average()})
                r = results[name][mode]
                print(f"{name:>8} {mode:<11} step {r['step_s']:.3f}s  gen {r['gen_s']:.3f}s  "
                      f"update {r['update_s']:.3f}s  (load {before} -> {loads[-1]['after']})",
                      flush=True)
    print("\n" + table(results))
    host = platform.node() or "host"
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{started:%Y-%m-%d}-async-{host}.json"
    result = {
        "meta": {"date": started.isoformat(timespec="seconds"), "host": host,
                 "command": " ".join(sys.argv), "quick": a.quick, "warmup": warmup,
                 "steps": steps, "model": a.model, "loads": loads,
                 "workloads": {k: works[k] for k in a.workloads.split(",")}},
        "results": results,
    }
    path.write_text(json.dumps(result, indent=1))
    print(f"\nresults in {path}")
    return result


if __name__ == "__main__":
    main()
