"""The body of `python -m skyexp.score` (skyexp/score.py has the command and the row format):
read the rows (skipping bad lines, skyexp.offline.scoring), score them with the training reward,
write them with `score`, `extracted` and `status`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from skyexp.config import DataConfig, RewardConfig
from skyexp.offline import scoring
from skyexp.rewards.extract import answer_text


def read_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{i}: a row must be a JSON object")
            rows.append(row)
    return rows


def score_rows(
    rows: list[dict[str, Any]],
    reward,
    completion_key: str = "completion",
    answer_key: str = "answer",
    chunk: int = 1024,
) -> list[dict[str, Any]]:
    """rows -> the same rows with `score` and `status` added (new dicts; the input is not
    changed)."""
    out = [dict(r) for r in rows]
    usable = [
        i
        for i, r in enumerate(rows)
        if isinstance(r.get(completion_key), str) and answer_text(r.get(answer_key)) is not None
    ]
    for r in out:
        r["score"], r["status"] = 0.0, "error"
    for s in range(0, len(usable), chunk):  # bounded memory and steady progress on large files
        part = usable[s : s + chunk]
        scored = reward.score(
            [rows[i][completion_key] for i in part],
            [answer_text(rows[i][answer_key]) for i in part],
        )
        for i, sc, st in zip(part, scored.scores, scored.status):
            out[i]["score"], out[i]["status"] = float(sc), st
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m skyexp.score", description=__doc__.split("\n\n")[0])
    p.add_argument("input", type=Path, help="JSONL with completion and answer fields")
    p.add_argument(
        "--out", type=Path, required=True, help="output JSONL (input rows + score, status)"
    )
    p.add_argument("--completion-key", default="completion")
    p.add_argument("--answer-key", default="answer")
    d = RewardConfig()
    p.add_argument(
        "--workers", type=int, default=d.workers, help=f"scoring processes (default {d.workers})"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=d.timeout_s,
        help=f"seconds per answer (default {d.timeout_s})",
    )
    p.add_argument(
        "--memory-mb",
        type=int,
        default=d.memory_mb,
        help=f"address-space cap per worker (default {d.memory_mb})",
    )
    p.add_argument("--max-answer-chars", type=int, default=d.max_answer_chars)
    bad = DataConfig().max_bad_fraction
    p.add_argument("--max-bad-fraction", type=float, default=bad, help=f"stop past this share of "
                   f"malformed lines (default {bad}, as data.max_bad_fraction)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if a.workers < 1 or a.timeout <= 0:
        print("skyexp.score: --workers must be >= 1 and --timeout > 0", file=sys.stderr)
        return 2
    try:
        report = scoring.ScoreReport()
        pairs = scoring.read_lines(a.input, a.max_bad_fraction, report)
        lines, rows = [i for i, _ in pairs], [r for _, r in pairs]
    except (OSError, ValueError) as e:
        print(f"skyexp.score: {e}", file=sys.stderr)
        return 2
    from skyexp.rewards import MathVerifyReward

    reward = MathVerifyReward(
        RewardConfig(
            workers=a.workers,
            timeout_s=a.timeout,
            memory_mb=a.memory_mb,
            max_answer_chars=a.max_answer_chars,
        )
    )
    t = time.perf_counter()
    try:
        out = score_rows(rows, reward, a.completion_key, a.answer_key)
        out = scoring.finish_rows(out, lines, a.completion_key, a.answer_key, report)
    finally:
        reward.close()
    secs = time.perf_counter() - t
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out), encoding="utf-8"
    )
    print(scoring.summary(report, secs), file=sys.stderr)
    return 0
