"""`python -m skyexp.score` as a user runs it, and the scoring pool's soft-timeout accounting."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT

from skyexp.rewards.pool import ScoringPool


def run_score(args: list[str], timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "skyexp.score", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_score_cli_adds_score_and_status(tmp_path):
    rows = [
        {
            "id": 1,
            "completion": "so the answer is \\boxed{\\frac{1}{2}}",
            "answer": "0.5",
        },  # equivalent: 1.0
        {"id": 2, "completion": "\\boxed{7}", "answer": 8},  # wrong; a numeric gold is fine
        {"id": 3, "completion": "no box at all", "answer": "3"},  # no answer: 0.0, ok
        {"id": 4, "answer": "3"},  # no completion: error
        {
            "id": 5,
            "completion": "\\boxed{" + "(" * 3000 + "}",
            "answer": "1",
        },  # parse blows its time budget
        {"id": 6, "completion": "\\boxed{27}", "answer": 27.0, "extra": {"kept": True}},
    ]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    r = run_score([str(src), "--out", str(out), "--timeout", "3", "--max-answer-chars", "5000"])
    assert r.returncode == 0, r.stderr[-2000:]
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["id"] for g in got] == [1, 2, 3, 4, 5, 6]
    assert [g["score"] for g in got] == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert [g["status"] for g in got] == ["ok", "ok", "ok", "error", "timeout", "ok"]
    assert got[5]["extra"] == {"kept": True}  # input fields pass through untouched
    assert "reward/timeouts 1" in r.stderr and "reward/errors 1" in r.stderr


def test_score_cli_rejects_a_broken_file(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"completion": "\\\\boxed{1}", "answer": "1"}\nnot json\n')
    r = run_score([str(src), "--out", str(tmp_path / "out.jsonl")])
    assert r.returncode == 2 and "in.jsonl:2" in r.stderr and not (tmp_path / "out.jsonl").exists()


def test_soft_timeouts_are_counted_not_scored_as_wrong():
    # math-verify swallows its own parse timeout (it logs and returns nothing); the pool must still
    # report it. 3000 nested parentheses take far longer than the 1 s soft limit to parse.
    pool = ScoringPool(workers=1, timeout_s=3.0)
    try:
        out = pool.verify([("(" * 3000, "1"), ("2", "2.0")])
    finally:
        pool.close()
    assert out == [(0.0, "timeout"), (1.0, "ok")]
