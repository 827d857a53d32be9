"""The body of `python -m skyexp.distill` (rejection-sampled SFT data; skyexp/distill.py has the
command, its
options and outputs)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from skyexp.config import Config
from skyexp.data import load_task, template_of
from skyexp.offline.sampling import open_sampler, output_path, sample, user_text, write_jsonl
from skyexp.records import Problem

log = logging.getLogger("skyexp")


def accepted(samples: list[dict[str, Any]], keep: int) -> list[dict[str, Any]]:
    """The correct, finished samples, distinct texts only, at most `keep` of them (0: all)."""
    out, seen = [], set()
    for s in samples:
        if (
            s["score"] >= 1.0
            and s["status"] == "ok"
            and not s["truncated"]
            and s["text"] not in seen
        ):
            seen.add(s["text"])
            out.append(s)
    return out[:keep] if keep else out


def sft_rows(
    problems: list[Problem], records: list[dict[str, Any]], cfg: Config
) -> list[dict[str, Any]]:
    prefix, k = template_of(cfg.data).prefix, cfg.distill.k
    rows = []
    for p, r in zip(problems, records):
        system, user = user_text(p, cfg)
        head = [{"role": "system", "content": system}] if system else []
        for j, s in enumerate(accepted(r["samples"], cfg.distill.keep)):
            rows.append(
                {
                    "id": f"{p.id}#{j}",
                    "problem": p.problem,
                    "answer": p.answer,
                    "extracted": s["extracted"],
                    "pass_rate": r["correct"] / k,
                    "messages": head
                    + [
                        {"role": "user", "content": user},
                        {"role": "assistant", "content": prefix + s["text"]},
                    ],
                }
            )
    return rows


def run_distill(cfg: Config, run_dir: Path, plain: dict | None = None) -> dict[str, Any]:
    problems = load_task(cfg.data).train
    if cfg.distill.size:
        problems = problems[: cfg.distill.size]
    out = output_path(cfg.distill.out, run_dir, "distill.jsonl")
    sampler = open_sampler(cfg)
    try:
        records = sample(sampler, problems, cfg.distill, cfg.distill.k)
    finally:
        sampler.close()
    rows = sft_rows(problems, records, cfg)
    solved = sum(1 for r in records if r["correct"] > 0)
    report = {
        "prompts": len(problems),
        "k": cfg.distill.k,
        "prompts_solved": solved,
        "rows": len(rows),
        "model": sampler.model_path,
        "out": str(out),
    }
    if sampler.d.is_main:
        write_jsonl(out, rows)
        out.with_name(out.stem + ".report.json").write_text(json.dumps(report, indent=2))
        log.info(
            "distill: %d responses for %d of %d prompts -> %s",
            len(rows),
            solved,
            len(problems),
            out,
        )
    return report
