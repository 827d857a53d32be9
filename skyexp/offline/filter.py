"""The body of `python -m skyexp.filter` (the offline data filter; skyexp/filter.py has the command,
its
options and outputs)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from skyexp.config import Config
from skyexp.data import decontaminate, load_task
from skyexp.data.difficulty import in_band, pass_rate
from skyexp.offline.sampling import open_sampler, output_path, problem_row, sample, write_jsonl
from skyexp.records import Problem

log = logging.getLogger("skyexp")


def rate_rows(
    problems: list[Problem], records: list[dict[str, Any]], n: int
) -> list[dict[str, Any]]:
    """One output row per problem: the problem and its pass rate over n samples."""
    return [
        {**problem_row(p), "pass_rate": pass_rate(r["correct"], n), "correct": r["correct"], "n": n}
        for p, r in zip(problems, records)
    ]


def histogram(rates: list[float]) -> dict[str, int]:
    return {f"{k:.4f}": v for k, v in sorted(Counter(rates).items())}


def run_filter(cfg: Config, run_dir: Path, plain: dict | None = None) -> dict[str, Any]:
    f = cfg.filter
    problems = load_task(cfg.data).train
    if f.size:
        problems = problems[: f.size]
    out = output_path(f.out, run_dir, "filtered.jsonl")
    report: dict[str, Any] = {"input": len(problems), "data": cfg.data.name}
    if f.benchmarks:
        problems, hits = decontaminate(problems, f.benchmarks, f.benchmark_key, f.ngram, f.overlap)
        report.update(contaminated=len(hits), decontam_hits=hits)
        for h in hits:
            log.info(
                "decontam: %s matches %s %s (%s, overlap %.2f)",
                h["id"],
                Path(h["benchmark"]).name,
                h["benchmark_id"],
                h["match"],
                h["overlap"],
            )
        log.info("decontam: %d of %d problems match a benchmark", len(hits), report["input"])
    rows = [problem_row(p) for p in problems]
    is_main = True
    if f.n > 0:
        sampler = open_sampler(cfg)
        is_main = sampler.d.is_main
        try:
            records = sample(sampler, problems, f, f.n)
        finally:
            sampler.close()
        rows = rate_rows(problems, records, f.n)
        rates = [r["pass_rate"] for r in rows]
        report.update(
            n=f.n,
            model=sampler.model_path,
            pass_rates=histogram(rates),
            all_wrong=sum(x <= 0 for x in rates),
            all_right=sum(x >= 1 for x in rates),
        )
        if is_main:
            samples = [
                {
                    "id": r["id"],
                    "answer": r["answer"],
                    "correct": r["correct"],
                    "samples": r["samples"],
                }
                for r in records
            ]
            write_jsonl(out.with_name(out.stem + ".samples.jsonl"), samples)
        rows = [r for r in rows if in_band(r["pass_rate"], f.drop_all_wrong, f.drop_all_right)]
    report.update(kept=len(rows), out=str(out))
    if is_main:
        write_jsonl(out, rows)
        out.with_name(out.stem + ".report.json").write_text(
            json.dumps(report, indent=2, ensure_ascii=False)
        )
        log.info("filter: kept %d of %d problems -> %s", len(rows), report["input"], out)
    return report
