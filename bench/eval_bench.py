"""Scoring and evaluation throughput, and the gold-answer self-match check. Prints its figures.

    python bench/eval_bench.py                       # all three parts, MATH-500 from ../shared/data
    python bench/eval_bench.py --part selfmatch --files math500 olympiadbench minerva_math

1. self-match: every gold answer, wrapped in \\boxed{}, scored against itself, (a) through the
   reward (what training and eval see; identical text takes the exact-match fast path) and (b)
   through math-verify in the pool alone (parse + verify of both sides), listing every miss
   with what math-verify parsed.
2. scoring: answers/s of the reward path with the pool (1 and 2 workers) on symbolic work:
   gold answers against the next row's gold (all go through math-verify unless both are integers).
3. eval: samples/s of run_eval (rollout + scoring + vote grouping) with the tiny model on the arith
   held-out split (n=8, 64 tokens) and on MATH-500 prompts (greedy, 64 tokens). `--model DIR`
   evaluates a trained checkpoint instead: an untrained model never stops early, so every
   sample runs to the cap (the worst case); a trained one answers in ~20 tokens.
Numbers depend on the machine and its load; nothing here is asserted by tests.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "eval"


def golds(name: str) -> list[dict]:
    path = DATA / f"{name}.jsonl"
    if not path.exists():
        sys.exit(
            f"{path} not found (benchmark files are read from ../shared/data/eval, never copied)"
        )
    return [json.loads(line) for line in path.open(encoding="utf-8")]


def selfmatch(files: list[str], workers: int) -> None:
    from math_verify import parse

    from skyexp.config import RewardConfig
    from skyexp.rewards import MathVerifyReward
    from skyexp.rewards.extract import last_boxed

    reward = MathVerifyReward(RewardConfig(workers=workers, timeout_s=5.0))
    reward.pool._wait_ready()
    try:
        for name in files:
            rows = golds(name)
            answers = [r["answer"] for r in rows]
            texts = [f"The answer is \\boxed{{{a}}}." for a in answers]
            via_reward = reward.score(texts, answers)
            extract_ok = sum(last_boxed(t) == a.strip() for t, a in zip(texts, answers))
            t = time.perf_counter()
            via_pool = reward.pool.verify([(a, a) for a in answers])
            secs = time.perf_counter() - t
            hits = sum(s == 1.0 for s, _ in via_pool)
            print(
                f"[selfmatch] {name}: {len(rows)} gold answers; extraction returns the gold text "
                f"for {extract_ok}; "
                f"reward path 1.0 for {int(sum(via_reward.scores))}; math-verify alone 1.0 for "
                f"{hits} "
                f"({len(rows) / secs:.0f} answers/s, {workers} workers)"
            )
            for (s, st), r in zip(via_pool, rows):
                if s != 1.0:
                    parsed = parse(f"\\boxed{{{r['answer']}}}", parsing_timeout=5)
                    print(
                        f"    miss {r['id']}: answer {r['answer']!r} status {st}; math-verify "
                        f"parsed it as {parsed!r}"
                    )
    finally:
        reward.close()


def scoring(workers_list: list[int]) -> None:
    from skyexp.config import RewardConfig
    from skyexp.rewards import MathVerifyReward

    answers = [r["answer"] for r in golds("math500")]
    texts = [
        f"\\boxed{{{a}}}" for a in answers[1:] + answers[:1]
    ]  # each row's neighbour: mostly wrong
    for w in workers_list:
        reward = MathVerifyReward(RewardConfig(workers=w, timeout_s=5.0))
        reward.pool._wait_ready()
        try:
            t = time.perf_counter()
            s = reward.score(texts, answers)
            secs = time.perf_counter() - t
        finally:
            reward.close()
        print(
            f"[scoring] {len(texts)} MATH-500 answers vs their neighbour's gold, {w} worker(s): "
            f"{len(texts) / secs:.0f} answers/s "
            f"({secs:.2f}s; correct {int(sum(s.scores))}, timeouts {s.timeouts}, errors {s.errors})"
        )


def eval_throughput(threads: int, model_dir: str) -> None:
    import torch

    from skyexp.config import EvalConfig, ModelConfig, RewardConfig
    from skyexp.data import arith
    from skyexp.evaluation.benchmarks import load_problems
    from skyexp.evaluation.runner import eval_template, run_eval
    from skyexp.model import loading
    from skyexp.rewards import MathVerifyReward
    from skyexp.rollout import build_engine

    torch.set_num_threads(threads)
    mcfg = ModelConfig(hidden_size=160, intermediate_size=448)  # conf/model/tiny.yaml
    path = model_dir or loading.resolve_path(mcfg)
    tok = loading.load_tokenizer(path, mcfg)
    engine = build_engine(
        "hf",
        model=loading.load_model(path, mcfg),
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
        seed=0,
    )
    reward = MathVerifyReward(RewardConfig(workers=1))
    reward.pool._wait_ready()
    _, held_out = arith.load([1, 2, 3, 4], 100, 64, 1234)
    cases = [
        (
            "arith held-out, n=8, T=1, 64 tokens",
            held_out,
            EvalConfig(
                n=8, max_response_len=64, prompt_template="{problem}\n"
            ),  # conf/data/arith.yaml
        ),
        (
            "MATH-500 first 64, greedy, 64 tokens",
            load_problems(EvalConfig(name="math500", path=str(DATA / "math500.jsonl")))[:64],
            EvalConfig(name="math500", n=1, temperature=0.0, max_response_len=64),
        ),
    ]
    try:
        for label, problems, cfg in cases:
            res = run_eval(engine, reward, tok, problems, cfg, eval_template(cfg), chat=False)
            samples = len(problems) * cfg.n
            tokens = sum(s["length"] for r in res.records for s in r["samples"])
            print(
                f"[eval] {label}: {samples} samples in {res.seconds:.2f}s = "
                f"{samples / res.seconds:.1f} samples/s "
                f"({tokens / res.seconds:.0f} response tokens/s, {threads} threads, "
                f"{loading.num_params(engine.model) / 1e6:.2f}M params, "
                f"{sum(s['truncated'] for r in res.records for s in r['samples'])} samples hit "
                f"the cap, pass@1 {res.pass_at[1]:.3f})"
            )
    finally:
        reward.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["all", "selfmatch", "scoring", "eval"], default="all")
    p.add_argument(
        "--files", nargs="+", default=["math500"], help="benchmark files for the self-match check"
    )
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--model",
        default="",
        help="a trained checkpoint directory for the eval part (default: the untrained tiny model)",
    )
    a = p.parse_args()
    if a.part in ("all", "selfmatch"):
        selfmatch(a.files, max(a.workers))
    if a.part in ("all", "scoring"):
        scoring(a.workers)
    if a.part in ("all", "eval"):
        eval_throughput(a.threads, a.model)


if __name__ == "__main__":
    main()
