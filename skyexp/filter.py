"""`python -m skyexp.filter [overrides]`: offline data filtering of the configured `data.*`.

1. Decontamination (filter.benchmarks non-empty): drop training problems that match an eval
   benchmark problem — normalised exact match, or n-gram containment >= filter.overlap
   (skyexp.data.decontam) — and report each drop with the benchmark problem it matched.
2. Difficulty (filter.n > 0): sample n responses per prompt with the current model through the
   RL rollout engine and reward (skyexp.evaluation.offline), record each prompt's pass rate, and drop the
   prompts solved never (pass rate 0) or always (1), as DeepScaleR and Skywork-OR1 prepare
   their data (arXiv 2505.22312 §3). The kept rows carry `pass_rate`, `correct` and `n`, so a
   curriculum can select on them: data=jsonl data.path=<out> data.difficulty_key=pass_rate
   data.difficulty_range=[0.1,0.9].

Outputs (rank 0): <out> (the kept problems, loadable with data=jsonl), <out stem>.report.json
(counts, pass-rate histogram, every decontamination hit) and, with difficulty filtering,
<out stem>.samples.jsonl (every prompt's samples and scores, kept or not).

    python -m skyexp.filter data=deepscaler filter.n=16 filter.max_response_len=8192 \\
        model=r1_distill_qwen_1_5b rollout=vllm filter.out=/data/dsr_filtered.jsonl
    python -m skyexp.filter data=jsonl data.path=../shared/data/train/deepscaler_aime_1983_2023.jsonl \\
        filter.n=0 filter.benchmarks=[../shared/data/eval/math500.jsonl]
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from skyexp.config import Config
from skyexp.data import decontaminate, load_task
from skyexp.data.difficulty import in_band, pass_rate
from skyexp.evaluation.offline import open_sampler, output_path, problem_row, sample, write_jsonl
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


def main() -> None:
    from skyexp.cli import hydra_command

    hydra_command(run_filter)()


if __name__ == "__main__":
    main()
