"""Benchmark problems for an eval config: a local file, a hub dataset, or the task's held-out split.

conf/eval/<name>.yaml names a hub dataset and its field mapping (`hub_problem_key`,
`hub_answer_key`); `eval.path=FILE` reads a local copy instead (jsonl or parquet, fields
`problem_key` / `answer_key`, the ../shared/data schema by default). Hub answers come in several
shapes, so they are brought to one string before cleaning: OlympiadBench's `final_answer` is a
list of `$...$` strings (its first entry is the answer, as in the Qwen2.5-Math harness), AMC
answers are floats (`27.0` -> `27`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from skyexp.config import EvalConfig
from skyexp.data.rows import DataError, clean_rows, read_hub, read_jsonl, read_parquet
from skyexp.records import Problem
from skyexp.rewards.extract import answer_text


def read_local(path: str, split: str = "test") -> list[dict[str, Any]]:
    """A jsonl or parquet file (by extension), or a dataset directory saved with save_to_disk."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"eval.path: file not found: {path}")
    if p.is_dir():
        return read_hub(path, split)
    return read_parquet(path) if p.suffix == ".parquet" else read_jsonl(path)


def read_hub_dataset(cfg: EvalConfig) -> list[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(cfg.hub, cfg.hub_subset or None, split=cfg.hub_split)
    except Exception as e:  # no network, no cache, gated: say how to run offline
        raise DataError(
            f"eval.hub: cannot load '{cfg.hub}' ({type(e).__name__}: {str(e)[:200]}); "
            f"offline, point eval.path at a local copy (jsonl/parquet)"
        ) from None
    return list(ds)


def load_problems(
    cfg: EvalConfig, held_out: list[Problem] | None = None, max_bad_fraction: float = 0.05
) -> list[Problem]:
    """The problems of one benchmark, in file order (eval.size is applied by the runner)."""
    if cfg.path:
        rows, pk, ak, where = (
            read_local(cfg.path, cfg.hub_split),
            cfg.problem_key,
            cfg.answer_key,
            cfg.path,
        )
    elif cfg.source == "data":
        if not held_out:
            raise DataError(
                f"eval={cfg.name}: eval.source=data, but the data source has no held-out split; "
                "set eval.path=FILE (jsonl/parquet), or eval.before=false eval.after=false"
            )
        return list(held_out)
    else:
        rows, pk, ak, where = (
            read_hub_dataset(cfg),
            cfg.hub_problem_key,
            cfg.hub_answer_key,
            cfg.hub,
        )
    for row in rows:
        if isinstance(row, dict) and ak in row:
            row[ak] = answer_text(row[ak])
    problems, _ = clean_rows(rows, pk, ak, where, max_bad_fraction)
    return problems
