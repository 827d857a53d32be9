"""The named training sets of the recipes, and the generic file / hub sources.

Each named source knows its upstream hub id, default split and row schema, so `data=still3`
gives exactly the prompts and answers the paper trained on; `data.path` points it at a local
copy of the same schema instead (a .jsonl/.json/.parquet file or a dataset directory).

| source            | upstream                                   | schema
|
|-------------------|--------------------------------------------|-----------------------------------------|
| still3            | RUC-AIBOX/STILL-3-Preview-RL-Data (~33k)   | question, answer
|
| eurus_numina      | PRIME-RL/Eurus-2-RL-Data, numina_amc_aime + numina_olympiads | verl: prompt
chat list, reward_model.ground_truth, data_source |
| deepscaler        | agentica-org/DeepScaleR-Preview-Dataset    | problem, answer, solution
|
| skywork_or1_math  | Skywork/Skywork-OR1-RL-Data, split math    | verl; ground_truth a JSON list;
extra_info.model_difficulty |
| jsonl/parquet/hub | any file / hub id                          | data.problem_key, data.answer_key
|
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from skyexp.data.rows import DataError, RowSchema, clean, get_path, read_rows
from skyexp.records import Problem

log = logging.getLogger(__name__)

# Eurus-2-RL-Data appends this to every math problem; the recipes replace it with their own
# instruction (SkyThought skythought-rl/data/data_prepare_mini.py), so the template adds one.
EURUS_INSTRUCTION = "Present the answer in LaTex format: \\boxed{Your answer}"


@dataclass(frozen=True)
class Source:
    hub: str  # upstream hub id ("" = needs a path)
    split: str
    schema: RowSchema | None  # None: field names from the config (jsonl / parquet / hub)
    data_sources: tuple[str, ...] = ()  # verl data_source values kept when the config names none


SOURCES: dict[str, Source] = {
    "still3": Source("RUC-AIBOX/STILL-3-Preview-RL-Data", "train", RowSchema("question", "answer")),
    "eurus_numina": Source(
        "PRIME-RL/Eurus-2-RL-Data",
        "train",
        RowSchema(
            "prompt", "reward_model.ground_truth", strip_suffixes=(EURUS_INSTRUCTION,), chat=True
        ),
        ("numina_amc_aime", "numina_olympiads"),
    ),
    "deepscaler": Source(
        "agentica-org/DeepScaleR-Preview-Dataset", "train", RowSchema("problem", "answer")
    ),
    # Skywork's own preprocessing json-decodes ground_truth (or1_scripts/data_preprocess/*.py).
    "skywork_or1_math": Source(
        "Skywork/Skywork-OR1-RL-Data",
        "math",
        RowSchema("prompt", "reward_model.ground_truth", json_answers=True, chat=True),
    ),
    "jsonl": Source("", "train", None),
    "parquet": Source("", "train", None),
    "hub": Source("", "train", None),
}


@dataclass(frozen=True)
class Request:
    """What to load from one source (a whole data config, or one entry of a mix)."""

    source: str
    path: str = ""
    split: str = ""
    problem_key: str = "problem"
    answer_key: str = "answer"
    data_sources: tuple[str, ...] = ()
    strip_system: bool = False
    difficulty_key: str = ""
    difficulty_range: tuple[float, ...] = ()
    max_bad_fraction: float = 0.05
    label: str = ""  # id prefix for rows without an id of their own; default: the source name


@dataclass(frozen=True)
class Loaded:
    problems: list[Problem]
    bad: list[tuple[int, str]]  # (row number, reason)
    filtered: int  # rows outside data_sources or the difficulty range (not errors)
    where: str


def _in_range(row: dict[str, Any], key: str, lo: float, hi: float) -> bool:
    v = get_path(row, key)
    return isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi


def keep_row(
    row: dict[str, Any],
    data_sources: tuple[str, ...],
    difficulty_key: str,
    difficulty_range: tuple[float, ...],
) -> bool:
    """Whether a row passes the source filters. Unparsable rows pass, to be counted as bad."""
    if not isinstance(row, dict) or "__error__" in row:
        return True
    if data_sources and row.get("data_source") not in data_sources:
        return False
    return not difficulty_key or _in_range(row, difficulty_key, *difficulty_range)


def load_source(req: Request) -> Loaded:
    """Read, filter and clean one source; bad rows are counted with their row numbers."""
    if req.source not in SOURCES:
        raise DataError(f"unknown data source '{req.source}'; valid: {', '.join(SOURCES)}")
    spec = SOURCES[req.source]
    path = req.path or spec.hub
    if not path:
        raise DataError(f"data.path: source '{req.source}' needs a path")
    if req.source in ("jsonl", "parquet") and not Path(path).exists():
        raise DataError(f"data.path: file not found: {path}")
    keep = req.data_sources or spec.data_sources
    rows = read_rows(path, req.split or spec.split, list(keep))
    numbers = [
        i for i, r in enumerate(rows) if keep_row(r, keep, req.difficulty_key, req.difficulty_range)
    ]
    schema = spec.schema or RowSchema(req.problem_key, req.answer_key)
    schema = replace(schema, strip_system=req.strip_system)
    where = path if req.source in ("jsonl", "parquet") or req.path else f"{req.source} ({path})"
    good, bad = clean(
        [rows[i] for i in numbers],
        schema,
        where,
        req.max_bad_fraction,
        req.label or req.source,
        numbers,
    )
    filtered = len(rows) - len(numbers)
    if filtered:
        log.info(
            "%s: %d of %d rows outside data_sources=%s / %s in %s",
            where,
            filtered,
            len(rows),
            list(keep),
            req.difficulty_key or "-",
            list(req.difficulty_range),
        )
    return Loaded(good, bad, filtered, where)
