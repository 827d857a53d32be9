"""Schema of one benchmark and its sampling protocol (`eval.*`, conf/eval/<name>.yaml). Split from
skyexp.config, which re-exports it; `validate_eval` runs inside its one `validate()`.

The prompt is part of the protocol: `eval.prompt_template` (the user text, `{problem}` in it),
`eval.system_prompt` and `eval.response_prefix` make a data Template, exactly like
`data.prompt_template` / `data.system_prompt` / `data.response_prefix` do for training. The
benchmarks default to Qwen2.5-Math's chain-of-thought instruction; conf/eval/arith.yaml takes all
three from the data config, so the held-out split is prompted as training is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Check = Callable[[bool, str, str], None]  # check(condition, key, message), from skyexp.config

# Qwen2.5-Math's chain-of-thought instruction (the prompt of Sky-T1's and Skywork-OR1's evals).
QWEN_MATH_COT = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}."


@dataclass
class EvalConfig:
    """One benchmark and its sampling protocol (conf/eval/<name>.yaml)."""

    name: str = "arith"  # metric prefix: val/<name>/pass@k
    # data: the data source's held-out split | hub: the dataset named by `hub` | jsonl | parquet.
    # A non-empty `path` always wins: that local jsonl/parquet file (format from its extension).
    source: str = "data"
    path: str = ""
    problem_key: str = "problem"  # fields of a local file (the ../shared/data schema by default)
    answer_key: str = "answer"
    hub: str = ""  # hub dataset id (needs network or the HF cache)
    hub_subset: str = ""  # its config name, if it has several
    hub_split: str = "test"
    hub_problem_key: str = "problem"  # field mapping of the hub dataset
    hub_answer_key: str = "answer"
    # {problem} is replaced by the problem; the model's chat template is applied on top when
    # model.chat_template is set (as in training).
    prompt_template: str = QWEN_MATH_COT
    system_prompt: str = ""
    response_prefix: str = ""  # the first tokens of every response (R1's "<think>\n")
    n: int = 16  # samples per problem; pass@k and maj@k are reported for k = 1, 2, 4, ..., n
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    max_response_len: int = 64  # capped at the model's context length (max_position_embeddings)
    size: int = 0  # 0: every problem of the split; else the first `size`
    every: int = 0  # also evaluate every N RL steps during training (0: only before/after)
    before: bool = True  # evaluate before the first RL stage
    after: bool = True  # and after the last
    # maj@k groups wrong answers by math-verify equivalence: at most this many pairwise checks of
    # distinct answers per problem (largest groups first); beyond it, normalised string equality.
    vote_max_pairs: int = 256
    log_samples: int = 64  # rows per benchmark in the W&B table of samples


def validate_eval(e: EvalConfig, check: Check) -> None:
    """Cross-field checks of eval.* (called by skyexp.config.checks with its checker)."""
    sources = ("data", "hub", "jsonl", "parquet")
    check(e.source in sources, "eval.source", f"'{e.source}' is not one of {', '.join(sources)}")
    check(
        e.source not in ("jsonl", "parquet") or bool(e.path),
        "eval.path",
        f"eval.source={e.source} needs eval.path",
    )
    check(
        e.source != "hub" or bool(e.hub or e.path),
        "eval.hub",
        "eval.source=hub needs eval.hub (or a local eval.path)",
    )
    check("{problem}" in e.prompt_template, "eval.prompt_template", "must contain {problem}")
    check(e.n >= 1, "eval.n", "must be >= 1")
    check(e.temperature >= 0, "eval.temperature", "must be >= 0 (0: greedy)")
    check(0 < e.top_p <= 1, "eval.top_p", "must be in (0, 1]")
    check(e.max_response_len > 0, "eval.max_response_len", "must be > 0")
    check(e.size >= 0, "eval.size", "must be >= 0 (0 = every problem)")
    check(e.every >= 0, "eval.every", "must be >= 0 (0 = only before/after RL)")
    check(e.vote_max_pairs >= 0, "eval.vote_max_pairs", "must be >= 0")
    check(e.log_samples >= 0, "eval.log_samples", "must be >= 0")
