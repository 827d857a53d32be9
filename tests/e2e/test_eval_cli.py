"""`python -m skyexp.eval` end to end on the tiny model, and periodic eval during training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, only_run_dir, run_skyexp, tiny

from skyexp.evaluation.job import checkpoint_labels

SMALL = ["eval.max_response_len=16", "logger.progress=false", "trainer.threads=2"]


def run_eval_cli(
    args: list[str], tmp_path: Path, env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    full_env = {
        **os.environ,
        "SKYEXP_OUTPUTS": str(tmp_path / "out"),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "skyexp.eval", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_eval_on_math500_file_writes_everything(tmp_path, shared_data, tiny_dir):
    math500 = shared_data / "eval" / "math500.jsonl"
    if not math500.exists():
        pytest.skip(f"{math500} absent")
    args = ["eval=math500", f"eval.path={math500}", "eval.size=4", f"model.path={tiny_dir}", *SMALL]
    r = run_eval_cli(args, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = only_run_dir(tmp_path)
    records = [
        json.loads(line) for line in (run / "eval" / "math500.jsonl").read_text().splitlines()
    ]
    assert len(records) == 4 and [len(x["samples"]) for x in records] == [1, 1, 1, 1]  # greedy: n=1
    assert (
        records[0]["id"] == "test/precalculus/807.json"
        and records[0]["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    )
    sample = records[0]["samples"][0]
    assert (
        set(sample) == {"text", "extracted", "score", "status", "length", "truncated"}
        and sample["length"] <= 16
    )
    [row] = json.loads((run / "eval" / "summary.json").read_text())["results"]
    assert (
        row["benchmark"] == "math500"
        and row["checkpoint"] == checkpoint_labels([str(tiny_dir)])[0]  # named by its directory
        and row["problems"] == 4
        and row["n"] == 1
        and row["temperature"] == 0.0
    )
    assert set(row["pass@k"]) == {"1"} and "maj@k" in row and row["source"] == str(math500)
    assert (run / "eval" / "passk.png").stat().st_size > 1000
    assert list(run.rglob("wandb/offline-run-*")), "W&B offline run missing"
    tables = [p.name for p in run.rglob("wandb/offline-run-*/files/media/table/**/*.table.json")]
    assert any(t.startswith("samples") for t in tables) and any(
        t.startswith("pass@k_curve") for t in tables
    ), tables
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert (
        "val/math500/pass@1" in metrics[0]
        and "val/math500/mean@1" in metrics[0]
        and "val/math500/maj@1" in metrics[0]
    )
    assert "math500" in r.stdout and "pass@1" in r.stdout  # the console table


@pytest.mark.slow
def test_eval_benchmark_list_and_checkpoint_comparison(tmp_path, shared_data, tiny_dir):
    """Two benchmarks (an arith split written to a file, MATH-500 by path) on two checkpoints:
    records per checkpoint, one summary row per pair, before/after curves in one PNG."""
    import shutil

    from skyexp.data import arith

    data = tmp_path / "data"
    data.mkdir()
    _, held_out = arith.load([1, 2], 10, 6, 99)
    (data / "arith.jsonl").write_text(
        "".join(
            json.dumps({"id": p.id, "problem": p.problem, "answer": p.answer}) + "\n"
            for p in held_out
        )
    )
    (data / "math500.jsonl").symlink_to(
        shared_data / "eval" / "math500.jsonl"
    )  # read by path, never copied
    other = tmp_path / "ckpt" / "other"
    shutil.copytree(tiny_dir, other)
    args = [
        "benchmarks=[arith,math500]",
        f"eval.path={data}/${{eval.name}}.jsonl",
        "eval.size=3",
        "eval.n=2",
        f"checkpoints=[{tiny_dir},{other}]",
        "logger=local",
        *SMALL,
    ]
    r = run_eval_cli(args, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = only_run_dir(tmp_path)
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert [(x["benchmark"], x["n"]) for x in summary["results"]] == [
        ("arith", 2),
        ("math500", 2),
    ] * 2
    assert (
        summary["results"][0]["temperature"] == 1.0 and summary["results"][1]["temperature"] == 0.0
    )  # own protocols
    labels = list(summary["checkpoints"])
    assert len(labels) == 2
    for label in labels:
        for bench in ("arith", "math500"):
            recs = (run / "eval" / label / f"{bench}.jsonl").read_text().splitlines()
            assert len(recs) == 3 and all(len(json.loads(x)["samples"]) == 2 for x in recs)
    assert (
        json.loads((run / "eval" / labels[0] / "arith.jsonl").read_text().splitlines()[0])[
            "problem"
        ]
        == held_out[0].problem
    )
    assert (run / "eval" / "passk.png").stat().st_size > 1000


def test_eval_fails_fast_on_unusable_benchmark(tmp_path):
    # offline, a hub benchmark without a local path stops before any model loads and says what to do
    r = run_eval_cli(
        ["eval=aime24", *SMALL],
        tmp_path,
        env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        timeout=300,
    )
    assert r.returncode == 2 and "eval.path" in r.stderr
    r = run_eval_cli(["eval.source=jsonl", *SMALL], tmp_path / "b", timeout=300)
    assert r.returncode == 2 and "eval.path" in r.stderr
    r = run_eval_cli(
        ["eval.n=0", *SMALL], tmp_path / "c", timeout=300
    )  # the same checks as training
    assert r.returncode == 2 and "skyexp.eval: invalid config: config key 'eval.n'" in r.stderr, (
        r.stderr[-2000:]
    )


@pytest.mark.slow
def test_periodic_eval_during_training(tmp_path):
    args = tiny(
        "algo.n=2",
        "context.stages.0.max_response_len=8",
        "eval.every=1",
        "eval.size=3",
        "eval.n=2",
        "eval.max_response_len=8",
        "trainer.save_final=false",
    )
    r = run_skyexp(args, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = only_run_dir(tmp_path)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in rows if "val/arith/pass@1" in x]
    assert [x["train/rl_step"] for x in evals] == [1, 2]  # after each RL step, none before/after
    assert all("val/arith/maj@2" in x and "val/arith/mean@2" in x for x in evals)
    assert (run / "eval" / "arith_step1.jsonl").exists() and (
        run / "eval" / "arith_step2.jsonl"
    ).exists()
