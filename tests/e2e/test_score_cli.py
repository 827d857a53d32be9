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
    # the row without a completion is named, not scored and left out of the accuracy (2 of 5)
    assert [g["score"] for g in got] == [1.0, 0.0, 0.0, None, 0.0, 1.0]
    assert [g["status"] for g in got] == [
        "correct",
        "wrong",
        "no_answer",
        "no_completion",
        "timeout",
        "correct",
    ]
    assert [g["extracted"] for g in got][:4] == ["\\frac{1}{2}", "7", None, None]
    assert got[5]["extra"] == {"kept": True}  # input fields pass through untouched
    assert "accuracy 0.4000" in r.stderr and "no boxed answer 1" in r.stderr
    assert "reward/timeouts 1" in r.stderr and "no completion 1; lines 4" in r.stderr


def test_score_cli_rejects_a_broken_file(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"completion": "\\\\boxed{1}", "answer": "1"}\nnot json\n')
    r = run_score([str(src), "--out", str(tmp_path / "out.jsonl")])
    assert r.returncode == 2 and "line 2: not JSON" in r.stderr
    assert "1 of 2 lines" in r.stderr and not (tmp_path / "out.jsonl").exists()


def test_score_cli_skips_bad_lines_and_sets_apart_rows_without_an_answer(tmp_path):
    # the data loader's rule: 2 bad lines of 22 (9%) pass --max-bad-fraction 0.1, named and counted
    good = [{"completion": f"\\boxed{{{i}}}", "answer": str(i % 2)} for i in range(19)]
    lines = [json.dumps(r) for r in good[:5]] + ["not json", "[1, 2]"]
    lines += [json.dumps({"completion": "\\boxed{1}"})]  # no gold answer: line 8
    lines += [json.dumps(r) for r in good[5:]]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(lines) + "\n")
    r = run_score([str(src), "--out", str(out), "--max-bad-fraction", "0.1"])
    assert r.returncode == 0, r.stderr[-2000:]
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(got) == 20 and got[5]["status"] == "no_gold" and got[5]["score"] is None
    # accuracy over the 19 scored rows: \boxed{i} equals str(i % 2) for i = 0 and 1 only
    assert "scored 19 rows" in r.stderr and "accuracy 0.1053" in r.stderr
    assert "line 6: not JSON" in r.stderr and "line 7: not a JSON object" in r.stderr
    assert "skipped 2 of 22 lines (6, 7)" in r.stderr and "no gold answer 1" in r.stderr
    assert "lines 8)" in r.stderr
    # the default (0.05, as data.max_bad_fraction) stops on the same file
    r = run_score([str(src), "--out", str(tmp_path / "o2.jsonl")])
    assert r.returncode == 2 and "max-bad-fraction=0.05" in r.stderr


def test_soft_timeouts_are_counted_not_scored_as_wrong():
    # math-verify swallows its own parse timeout (it logs and returns nothing); the pool must still
    # report it. 3000 nested parentheses take far longer than the 1 s soft limit to parse.
    pool = ScoringPool(workers=1, timeout_s=3.0)
    try:
        out = pool.verify([("(" * 3000, "1"), ("2", "2.0")])
    finally:
        pool.close()
    assert out == [(0.0, "timeout"), (1.0, "ok")]
