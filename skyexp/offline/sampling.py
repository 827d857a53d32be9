"""What the offline jobs (`python -m skyexp.filter`, `python -m skyexp.distill`) share with
training: the model RL would start from (the cached SFT result, or model.path / the tiny model),
the configured rollout engine and reward, and prompts rendered with the data template — so a
pass rate measured here is the pass rate the RL loop would see.

Sampling goes through `skyexp.evaluation.runner.run_eval` (n samples per prompt, scored, gathered
across
ranks), a chunk of prompts at a time so memory stays bounded on large sets. Under torchrun every
rank samples its share; rank 0 writes the outputs.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from skyexp import distributed
from skyexp.config import Config, EvalConfig, SampleJob
from skyexp.data import apply_template, template_of
from skyexp.evaluation.runner import run_eval
from skyexp.model import loading
from skyexp.model.start import start_path
from skyexp.records import Problem
from skyexp.rewards import build_reward
from skyexp.rollout import engine_for

log = logging.getLogger("skyexp")


@dataclass
class Sampler:
    cfg: Config
    d: distributed.Dist
    tokenizer: Any
    engine: Any
    reward: Any
    model_path: str

    def close(self) -> None:
        self.reward.close()


def open_sampler(cfg: Config) -> Sampler:
    d = distributed.setup(cfg.trainer.device, cfg.trainer.threads, cfg.trainer.keep_freed_memory,
                          cfg.trainer.deterministic)
    base = loading.resolve_path(cfg.model, cfg.trainer.cache_dir) if d.is_main else None
    base = distributed.broadcast_object(base)  # rank 0 builds the tiny model once
    path = start_path(cfg, base)
    if cfg.sft.steps and path == base:
        log.warning("no cached SFT result for this config: sampling from the base model %s", base)
    log.info("sampling from %s", path)
    tokenizer = loading.load_tokenizer(base, cfg.model)
    reward = build_reward(cfg.reward)
    engine = engine_for(cfg, path, tokenizer, d.device, cfg.trainer.seed * 1000 + 7919 + d.rank)
    return Sampler(cfg, d, tokenizer, engine, reward, path)


def sample(s: Sampler, problems: list[Problem], job: SampleJob, n: int) -> list[dict[str, Any]]:
    """n scored samples for every problem: one record per problem, in order, with `correct` and
    `samples` (text, extracted, score, status, length, truncated) as run_eval writes them."""
    tmpl, chat = template_of(s.cfg.data), s.cfg.model.chat_template
    ecfg = EvalConfig(
        name="offline",
        n=n,
        temperature=job.temperature,
        top_p=job.top_p,
        max_response_len=job.max_response_len,
        vote_max_pairs=0,  # maj@k is not needed here: no math-verify calls to group wrong answers
    )
    records: list[dict[str, Any]] = []
    t0 = time.time()
    bar = tqdm(
        total=len(problems),
        desc=f"sampling x{n}",
        unit="prompt",
        disable=not (s.d.is_main and s.cfg.logger.progress),
        dynamic_ncols=True,
    )
    for start in range(0, len(problems), job.chunk):
        chunk = problems[start : start + job.chunk]
        # rendered here (row system prompts included), so run_eval's own template is the identity
        rendered = [
            replace(
                p,
                problem=apply_template(
                    p.problem, tmpl, s.tokenizer, chat, p.meta.get("system", "")
                ),
            )
            for p in chunk
        ]
        res = run_eval(
            s.engine,
            s.reward,
            s.tokenizer,
            rendered,
            ecfg,
            "{problem}",
            False,
            (s.d.rank, s.d.world_size),
        )
        records += res.records
        bar.update(len(chunk))
        bar.set_postfix({"solved": f"{sum(r['correct'] > 0 for r in records) / len(records):.2f}"})
        log.info("sampled %d of %d prompts (%.0f s)", len(records), len(problems), time.time() - t0)
    bar.close()
    return records


def user_text(p: Problem, cfg: Config) -> tuple[str, str]:
    """(system prompt, user message) of a problem under the data template, before any chat
    template."""
    t = template_of(cfg.data)
    return t.system or p.meta.get("system", ""), t.user.replace("{problem}", p.problem)


def output_path(configured: str, run_dir: Path, default_name: str) -> Path:
    return Path(configured) if configured else run_dir / default_name


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write atomically: a killed job never leaves a half-written file under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    tmp.replace(path)


def problem_row(p: Problem) -> dict[str, Any]:
    """A problem as a jsonl row that data=jsonl loads back (id, problem, answer, solution, meta)."""
    row: dict[str, Any] = {"id": p.id, "problem": p.problem, "answer": p.answer}
    if p.solution:
        row["solution"] = p.solution
    row.update({k: v for k, v in p.meta.items() if k not in row})
    return row
