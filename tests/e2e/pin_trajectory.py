"""The pinned trajectory: a few SFT and RL steps of the tiny default at trainer.deterministic=true
and one thread, whose logged metrics tests/e2e/test_pinned_trajectory.py compares with the values
committed in tests/e2e/trajectory.json (relative tolerance 1e-6, timings and memory excluded).

A run that merely agrees with another run can drift silently; this one must agree with numbers
written down. When a change is *meant* to move them (a new default, a fixed bug in the maths),
regenerate on purpose, from the repository root, and commit the JSON with the change:

    .venv/bin/python -m tests.e2e.pin_trajectory --regenerate

Without --regenerate it runs once and prints the first differences against the committed file.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PINNED = Path(__file__).with_name("trajectory.json")
RTOL = 1e-6
OVERRIDES = [
    "trainer.deterministic=true",
    "trainer.threads=1",
    "trainer.seed=0",
    "sft.steps=4",
    "sft.batch_size=8",
    "context.stages.0.steps=3",
    "context.stages.0.max_response_len=16",
    "algo.batch_size=4",
    "algo.n=4",
    "trainer.micro_batch_size=8",
    "trainer.lr=1e-3",
    "entropy=fixed",
    "entropy.coef=0.01",
    "reward=cosine",  # lengths tell wrong answers apart: the RL steps get a gradient from step 0
    "eval.before=false",
    "eval.after=true",
    "eval.size=4",
    "eval.n=2",
    "eval.max_response_len=16",
    "logger=local",
    "logger.progress=false",
    "trainer.save_final=false",
]
# wall-clock and memory readings change from run to run; everything else is a function of the seed
VOLATILE = ("timing", "perf/throughput", "perf/time", "memory", "wall", "mfu")


def _kept(key: str, value) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and not any(v in key for v in VOLATILE)
    )


def trajectory(work: Path) -> list[dict]:
    """Run `python -m skyexp` with OVERRIDES in a fresh cache (so the SFT warm-up runs and logs)
    and return its metrics.jsonl rows, numbers only, volatile keys dropped."""
    run_dir = work / "run"
    env = {
        **os.environ,
        "SKYEXP_CACHE": str(work / "cache"),
        "WANDB_MODE": "offline",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    r = subprocess.run(
        [sys.executable, "-m", "skyexp", *OVERRIDES, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if r.returncode != 0:
        raise RuntimeError(f"the pinned run failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in sorted(row.items()) if _kept(k, v)} for row in rows]


def differences(got: list[dict], pinned: list[dict], rtol: float = RTOL) -> list[str]:
    """Every row, key and value where got departs from pinned, one line each."""
    out = []
    if len(got) != len(pinned):
        out.append(f"{len(got)} logged rows, {len(pinned)} pinned")
    for i, (g, p) in enumerate(zip(got, pinned)):
        for k in sorted(set(g) ^ set(p)):
            out.append(f"row {i}: {k} {'not pinned' if k in g else 'not logged'}")
        for k in sorted(set(g) & set(p)):
            a, b = g[k], p[k]
            same = (
                (math.isnan(a) and math.isnan(b))
                if isinstance(a, float) and math.isnan(a)
                else math.isclose(a, b, rel_tol=rtol, abs_tol=0.0) or a == b
            )
            if not same:
                out.append(f"row {i}: {k} = {a!r}, pinned {b!r}")
    return out


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as work:
        got = trajectory(Path(work))
    if "--regenerate" in argv:
        PINNED.write_text(
            json.dumps({"overrides": OVERRIDES, "rtol": RTOL, "rows": got}, indent=1) + "\n"
        )
        print(f"wrote {len(got)} rows to {PINNED.relative_to(ROOT)}")
        return 0
    diff = differences(got, json.loads(PINNED.read_text())["rows"])
    print("\n".join(diff[:40]) or "the run matches the pinned trajectory")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
