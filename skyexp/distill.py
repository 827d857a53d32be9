"""`python -m skyexp.distill [overrides]`: rejection-sampled SFT data from the current model.

Sky-T1-7B step 2 (novasky-ai.github.io/posts/sky-t1-7b): sample k responses per prompt of
`data.*` from a checkpoint (model.path=..., or the cached SFT result of this config), keep those
the reward (math-verify on the last \\boxed{}) judges correct — at most distill.keep distinct ones
per prompt — and write them as an SFT set in conversation format, which an SFT stage trains on
with the response-only loss:

    python -m skyexp.distill model.path=/ckpt/step1 data=eurus_numina distill.k=8 distill.out=/data/step2.jsonl
    python -m skyexp sft.source=jsonl sft.path=/data/step2.jsonl sft.format=conversation sft.messages_key=messages ...

Each row: id, problem, answer, messages ([system], user, assistant: the response, starting with
data.response_prefix when the template has one, since that is where the sampled text began),
extracted (the verified answer), pass_rate (correct out of k, for the record). A response that
hit the length cap is never kept: its \\boxed{} may come from an unfinished text.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from skyexp.config import Config
from skyexp.data import load_task, template_of
from skyexp.evaluation.offline import open_sampler, output_path, sample, user_text, write_jsonl
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


def main() -> None:
    from skyexp.cli import hydra_command

    hydra_command(run_distill)()


if __name__ == "__main__":
    main()
