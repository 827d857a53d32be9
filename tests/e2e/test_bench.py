"""bench/rl_step.py end to end at toy sizes: both frameworks step, the results file has its shape.
Timings are never asserted (they depend on the machine and its load)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

STEP_KEYS = {
    "step_s",
    "gen_s",
    "score_s",
    "update_s",
    "gen_tokens",
    "seq_tokens",
    "gen_tok_s",
    "update_tok_s",
    "mfu_gen",
    "mfu_update",
    "mfu_step",
}


@pytest.mark.slow
def test_quick_bench_runs_both_frameworks(tmp_path):
    pytest.importorskip("trl")
    args = [
        "--quick",
        "--threads",
        "1",
        "--prompts",
        "2",
        "--samples",
        "2",
        "--max-new-tokens",
        "6",
        "--warmup",
        "1",
        "--steps",
        "2",
        "--lengths",
        "4,6",
        "--scale-samples",
        "2",
        "--out-dir",
        str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "rl_step.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1 and (tmp_path / f"{files[0].stem}.png").stat().st_size > 1000
    res = json.loads(files[0].read_text())
    assert res["meta"]["quick"] and res["meta"]["threads"] == 1 and res["meta"]["trl"]
    assert res["peak_gflops"]["used"] > 0
    (label, run), = res["main"].items()
    assert (
        label == "tiny 2x2x6"
        and run["params"] > 0
        and run["same_prompts"]
        and not run["trl_checkpointing"]
    )
    for fw in ("skyexp", "trl"):
        steps = run[fw]["steps"]
        assert len(steps) == 2 and all(STEP_KEYS <= set(s) for s in steps)  # warm-up dropped
        assert all(s["gen_tokens"] > 0 and s["seq_tokens"] > s["gen_tokens"] for s in steps)
        for key in ("step_s", "mfu_step", "gen_tok_s"):
            st = run[fw][key]
            assert st["n"] == 2 and st["min"] <= st["median"] <= st["max"]
    assert run["speedup"] > 0 and run["speedup_pairs"]["n"] == 2
    axes = [(p["axis"], p["work"]["max_new_tokens"], p["work"]["samples"]) for p in res["scaling"]]
    assert axes == [("length", 4, 2), ("length", 6, 2), ("samples", 6, 2), ("size", 6, 2)]
    assert all(p["skyexp"]["step_s"] > 0 and p["trl"]["step_s"] > 0 for p in res["scaling"])
    assert "speed-up" in r.stdout
