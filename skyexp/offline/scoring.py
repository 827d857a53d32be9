"""The forgiving half of `python -m skyexp.score`: reading a generations file with the data
loader's rule (bad lines skipped, named and counted; stop only past a bad fraction), setting
apart the rows that cannot be scored, and telling the outcomes of scored rows apart.

Statuses of an output row:
  correct        the last \\boxed{} is math-verify-equivalent to the gold answer (score 1.0)
  wrong          a boxed answer that is not (0.0)
  no_answer      the completion has no (closed) \\boxed{} (0.0)
  timeout, error math-verify did not finish, or failed, on this row (0.0; counted as in training)
  no_gold        the row has no usable gold answer: excluded from accuracy
  no_completion  the row has no string completion: excluded from accuracy
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skyexp.rewards.extract import answer_text, last_boxed

log = logging.getLogger("skyexp")

UNSCORED = ("no_gold", "no_completion")


@dataclass
class ScoreReport:
    """What a scoring pass found: bad lines of the file, rows set apart, counts per status."""

    lines: int = 0  # non-empty lines read
    bad_lines: list[tuple[int, str]] = field(default_factory=list)  # (1-based line, why)
    unscored: list[tuple[int, str]] = field(default_factory=list)  # (line, status) of UNSCORED rows
    counts: dict[str, int] = field(default_factory=dict)  # status -> rows
    correct: float = 0.0  # sum of scores of the scored rows

    @property
    def scored(self) -> int:
        return sum(n for s, n in self.counts.items() if s not in UNSCORED)

    @property
    def accuracy(self) -> float:
        return self.correct / self.scored if self.scored else 0.0


def read_lines(
    path: Path, max_bad_fraction: float, report: ScoreReport
) -> list[tuple[int, dict[str, Any]]]:
    """(1-based line number, row) of every JSON-object line of `path`. Lines that are not valid
    UTF-8, not JSON or not an object are skipped and recorded in `report.bad_lines`; past
    `max_bad_fraction` of the non-empty lines a ValueError names the first of them."""
    rows: list[tuple[int, dict[str, Any]]] = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            why = None
            try:
                text = raw.decode("utf-8")
                if not text.strip():
                    continue
                row = json.loads(text)
                if not isinstance(row, dict):
                    why = f"not a JSON object ({type(row).__name__})"
            except UnicodeDecodeError:
                why = "invalid UTF-8"
            except json.JSONDecodeError as e:
                why = f"not JSON ({e.msg})"
            report.lines += 1
            if why:
                report.bad_lines.append((i, why))
            else:
                rows.append((i, row))
    bad = report.bad_lines
    if bad:
        log.warning("%s: skipped %d of %d lines: %s", path, len(bad), report.lines, _sample(bad))
    if report.lines and len(bad) / report.lines > max_bad_fraction:
        raise ValueError(
            f"{path}: {len(bad)} of {report.lines} lines are unusable (> --max-bad-fraction="
            f"{max_bad_fraction}): {_sample(bad, 10)}"
        )
    return rows


def unscored_status(row: dict[str, Any], completion_key: str, answer_key: str) -> str | None:
    """Why a row cannot be scored (one of UNSCORED), or None when it can."""
    if answer_text(row.get(answer_key)) is None:
        return "no_gold"
    if not isinstance(row.get(completion_key), str):
        return "no_completion"
    return None


def outcome(completion: str, score: float, status: str) -> tuple[str | None, str]:
    """(extracted answer, status) of a scored row, from the reward's (score, status)."""
    extracted = last_boxed(completion)
    if status != "ok":
        return extracted, status
    if extracted is None:
        return None, "no_answer"
    return extracted, "correct" if score > 0 else "wrong"


def finish_rows(
    out: list[dict[str, Any]],
    lines: list[int],
    completion_key: str,
    answer_key: str,
    report: ScoreReport,
) -> list[dict[str, Any]]:
    """Rows scored by skyexp.score.score_rows -> with `extracted` and the statuses above; the
    unscored rows named (with their line numbers) and counted apart in `report`."""
    for line, r in zip(lines, out):
        why = unscored_status(r, completion_key, answer_key)
        if why:
            r["extracted"], r["score"], r["status"] = None, None, why
            report.unscored.append((line, why))
        else:
            r["extracted"], r["status"] = outcome(r[completion_key], r["score"], r["status"])
            report.correct += r["score"]
        report.counts[r["status"]] = report.counts.get(r["status"], 0) + 1
    if report.unscored:
        log.warning(
            "%d rows not scored, excluded from accuracy: %s",
            len(report.unscored),
            _sample(report.unscored),
        )
    return out


def summary(report: ScoreReport, secs: float) -> str:
    c = report.counts
    parts = [
        f"scored {report.scored} rows in {secs:.1f}s: accuracy {report.accuracy:.4f}",
        f"correct {c.get('correct', 0)}, wrong {c.get('wrong', 0)}, "
        f"no boxed answer {c.get('no_answer', 0)}",
        f"reward/timeouts {c.get('timeout', 0)}, reward/errors {c.get('error', 0)}",
    ]
    if report.unscored:
        parts.append(
            f"not scored {len(report.unscored)} (no gold answer {c.get('no_gold', 0)}, "
            f"no completion {c.get('no_completion', 0)}; lines {_lines(report.unscored)})"
        )
    if report.bad_lines:
        parts.append(
            f"skipped {len(report.bad_lines)} of {report.lines} lines ({_lines(report.bad_lines)})"
        )
    return "; ".join(parts)


def _sample(items: list[tuple[int, str]], k: int = 5) -> str:
    more = f" (and {len(items) - k} more)" if len(items) > k else ""
    return "; ".join(f"line {i}: {why}" for i, why in items[:k]) + more


def _lines(items: list[tuple[int, str]], k: int = 10) -> str:
    return ", ".join(str(i) for i, _ in items[:k]) + (", ..." if len(items) > k else "")
