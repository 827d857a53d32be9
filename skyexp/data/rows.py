"""Raw rows in, Problems out: reading files and hub sets, and turning each row into a Problem or a
counted reason why not.

Readers: `.jsonl` (one object a line), `.json` (an array, as agentica's DeepScaleR files, or JSON
lines), `.parquet`, a directory (a `save_to_disk` dataset, or a folder laid out like a hub repo),
or anything else as a hub id through `datasets.load_dataset(path, split=...)` — the same call
every recipe's preprocessing script makes, so a local copy of a hub set loads through the same
code as the hub itself.

Row parsing understands both flat rows (`problem`/`answer` columns, STILL-3's `question`) and
verl rows, whose problem is a chat list (`prompt: [{role, content}, ...]`) and whose answer sits
at a dotted path (`reward_model.ground_truth`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skyexp.records import Problem

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Unusable data: the message names the file and shows sample bad rows."""


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """One object per line; a line that is not UTF-8, not JSON, or not a JSON object becomes a
    marked row (its reason names the 1-based line), counted as bad later. Blank lines are
    skipped."""
    rows: list[dict[str, Any]] = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                rows.append(
                    {
                        "__error__": f"line {number}: invalid UTF-8 "
                        f"(byte 0x{raw[e.start]:02x} at column {e.start + 1})"
                    }
                )
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                rows.append({"__error__": f"line {number}: invalid JSON ({e.msg})"})
                continue
            rows.append(
                row
                if isinstance(row, dict)
                else {"__error__": f"line {number}: {_not_object(row)}"}
            )
    return rows


def _not_object(value: Any) -> str:
    return f"not a JSON object ({type(value).__name__})"


def read_json(path: str) -> list[dict[str, Any]]:
    """A JSON array of objects (agentica's deepscaler/data/train/*.json), else JSON lines."""
    with open(path, "rb") as f:
        head = f.read(1024).lstrip()
    if head.startswith(b"["):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: invalid UTF-8 at byte {e.start + 1}") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON array (line {e.lineno}: {e.msg})") from None
        return [r if isinstance(r, dict) else {"__error__": _not_object(r)} for r in data]
    return read_jsonl(path)


def read_parquet(path: str) -> list[dict[str, Any]]:
    import datasets

    return list(datasets.Dataset.from_parquet(path))


def _keep_sources(ds, keep: list[str]):
    # Filtering on the Arrow column first: Eurus-2-RL-Data is ~480k rows, mostly code problems
    # with large test cases, and only two of its math subsets are wanted.
    if keep and "data_source" in ds.column_names:
        wanted = set(keep)
        return ds.filter(lambda s: s in wanted, input_columns="data_source")
    return ds


def read_hub(path: str, split: str, keep_sources: list[str] | None = None) -> list[dict[str, Any]]:
    """A dataset by hub id (needs network or the HF cache), a `save_to_disk` directory, or a local
    directory of data files laid out like a hub repo (loaded by `datasets.load_dataset`)."""
    import datasets

    p = Path(path)
    if p.is_dir() and (p / "dataset_dict.json").exists():
        ds = datasets.load_from_disk(path)[split]
    elif p.is_dir() and (p / "state.json").exists():
        ds = datasets.load_from_disk(path)
    else:
        try:
            ds = datasets.load_dataset(path, split=split)
        # no network, no HF cache, unknown id or split: say which and what to do
        except Exception as e:
            raise DataError(
                f"could not load '{path}' (split '{split}') with datasets.load_dataset: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} — needs the hub "
                "or its cache; "
                "or point data.path at a local copy of the same schema"
            ) from e
    return list(_keep_sources(ds, keep_sources or []))


def read_rows(
    path: str, split: str = "train", keep_sources: list[str] | None = None
) -> list[dict[str, Any]]:
    """Rows of a local file (by extension) or of a dataset directory / hub id."""
    p = Path(path)
    if p.is_file():
        readers: dict[str, Callable[[str], list[dict[str, Any]]]] = {
            ".jsonl": read_jsonl,
            ".json": read_json,
            ".parquet": read_parquet,
        }
        if p.suffix not in readers:
            raise DataError(
                f"{path}: unknown file type '{p.suffix}' (use .jsonl, .json or .parquet)"
            )
        return readers[p.suffix](path)
    if path.startswith(("/", ".", "~")) and not p.exists():
        raise DataError(f"data.path: file not found: {path}")
    return read_hub(path, split, keep_sources)


def get_path(row: Any, key: str) -> Any:
    """row['a.b.c'] walks nested dicts (verl's reward_model.ground_truth). A key that itself holds
    dots (Skywork's model_difficulty 'DeepSeek-R1-Distill-Qwen-1.5B') is matched whole first."""
    if not isinstance(row, dict):
        return None
    if key in row:
        return row[key]
    head, dot, rest = key.partition(".")
    while dot:
        if head in row:
            found = get_path(row[head], rest)
            if found is not None:
                return found
        nxt, dot, rest = rest.partition(".")
        head = f"{head}.{nxt}"
    return None


@dataclass(frozen=True)
class RowSchema:
    """How one dataset lays out its rows."""

    problem_key: str = "problem"  # a string, or a chat list of {role, content} (verl `prompt`)
    answer_key: str = "answer"  # dotted path; a string, a number, or a list of accepted answers
    json_answers: bool = False  # Skywork-OR1: ground_truth is a JSON-encoded list of answers
    strip_suffixes: tuple[str, ...] = ()  # instructions the dataset appended to each problem
    strip_system: bool = False  # drop the dataset's own system prompt
    chat: bool = False  # the problem field must be a chat list (verl rows)


def _chat(messages: Any) -> tuple[str, str] | str:
    """A verl prompt list -> (system, last user message), or the reason it is malformed."""
    if not isinstance(messages, list) or not messages:
        return "malformed prompt list (not a non-empty list)"
    system, user = "", None
    for m in messages:
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("content"), str)
            or m.get("role") not in ("system", "user", "assistant")
        ):
            return "malformed prompt list (each message needs a role and a string content)"
        if m["role"] == "system":
            system = m["content"]
        elif m["role"] == "user":
            user = m["content"]
    if user is None or not user.strip():
        return "malformed prompt list (no non-empty user message)"
    return system, user


def _answers(value: Any, json_answers: bool) -> list[str]:
    if json_answers and isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, list):
        return [a for v in value for a in _answers(v, False)]
    return []


def parse_row(row: dict[str, Any], schema: RowSchema, row_id: str) -> Problem | str:
    """One row -> a Problem, or the reason it cannot be one (a missing or empty answer, a
    non-string problem, a malformed prompt list)."""
    raw = get_path(row, schema.problem_key)
    system = ""
    if schema.chat and not isinstance(raw, list):
        return f"'{schema.problem_key}': malformed prompt list (not a list of messages)"
    if isinstance(raw, list):
        parsed = _chat(raw)
        if isinstance(parsed, str):
            return f"'{schema.problem_key}': {parsed}"
        system, raw = parsed
    if not isinstance(raw, str) or not raw.strip():
        return f"missing or non-string '{schema.problem_key}'"
    problem = raw.strip()
    for suffix in schema.strip_suffixes:
        if problem.endswith(suffix):
            problem = problem[: -len(suffix)].rstrip()
    answers = _answers(get_path(row, schema.answer_key), schema.json_answers)
    if not answers:
        return f"missing or empty '{schema.answer_key}'"
    top = schema.problem_key.split(".")[0], schema.answer_key.split(".")[0], "solution"
    meta = {k: v for k, v in row.items() if k not in top and isinstance(v, (str, int, float, bool))}
    if system and not schema.strip_system:
        meta["system"] = system
    if len(answers) > 1:
        meta["answers"] = answers
    solution = row.get("solution") if isinstance(row.get("solution"), str) else None
    return Problem(
        id=str(row.get("id", row_id)),
        problem=problem,
        answer=answers[0],
        solution=solution,
        meta=meta,
    )


def collect(
    rows: list[dict[str, Any]],
    parse: Callable[[dict[str, Any], int], Any],
    where: str,
    max_bad_fraction: float,
    numbers: list[int] | None = None,
) -> tuple[list[Any], list[tuple[int, str]]]:
    """Parse every row (`parse(row, index)` returns the parsed row, or a string: the reason it is
    unusable; index is 0-based, as in row ids). Unusable rows are skipped and counted with their
    1-based row numbers (`numbers`: their 0-based indices in the file, when some rows were
    filtered out before); when more than `max_bad_fraction` of them are bad the run stops
    (before any training) with a sample."""
    good: list[Any] = []
    bad: list[tuple[int, str]] = []
    for j, row in enumerate(rows):
        i = numbers[j] if numbers is not None else j
        if not isinstance(row, dict):
            got: Any = _not_object(row)
        else:
            got = row["__error__"] if "__error__" in row else parse(row, i)
        if isinstance(got, str):
            bad.append((i + 1, got))
        else:
            good.append(got)
    if bad:
        log.warning(
            "%s: skipped %d of %d rows (first: %s)",
            where,
            len(bad),
            len(rows),
            "; ".join(f"row {i}: {r}" for i, r in bad[:5]),
        )
    if rows and len(bad) / len(rows) > max_bad_fraction:
        sample = "\n".join(f"  row {i}: {r}" for i, r in bad[:10])
        raise DataError(
            f"{where}: {len(bad)} of {len(rows)} rows are unusable (> "
            f"data.max_bad_fraction={max_bad_fraction}):\n{sample}"
        )
    if not good:
        raise DataError(f"{where}: no usable rows")
    return good, bad


def clean(
    rows: list[dict[str, Any]],
    schema: RowSchema,
    where: str,
    max_bad_fraction: float,
    id_prefix: str = "",
    numbers: list[int] | None = None,
) -> tuple[list[Problem], list[tuple[int, str]]]:
    """Rows -> Problems, bad rows counted (see `collect`)."""
    return collect(
        rows,
        lambda row, i: parse_row(row, schema, f"{id_prefix or where}:{i}"),
        where,
        max_bad_fraction,
        numbers,
    )


def clean_rows(
    rows: list[dict[str, Any]],
    problem_key: str,
    answer_key: str,
    where: str,
    max_bad_fraction: float,
) -> tuple[list[Problem], list[tuple[int, str]]]:
    """`clean` for flat rows with the given field names."""
    return clean(rows, RowSchema(problem_key, answer_key), where, max_bad_fraction)
