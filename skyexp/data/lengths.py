"""Prompts that cannot fit are dropped and counted before training, never found by the rollout.

A prompt is measured as the engine will see it: the problem through the data template (chat
template included), tokenized like `make_batch` does. It is dropped when it has more tokens than
`data.max_prompt_len` (when set) or leaves no room for a single response token in the model's
context (max_position_embeddings). Without this, one 1 MB problem in a jsonl file makes the
rollout allocate a KV cache for a million tokens and die.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from skyexp.records import Problem

log = logging.getLogger(__name__)

CHUNK = 1024  # prompts tokenized per call


def prompt_limit(max_prompt_len: int, context: int | None) -> int | None:
    """The longest prompt in tokens: data.max_prompt_len when > 0, and at most context - 1 (one
    response token must fit); None when neither is known."""
    limits = [
        x
        for x in (max_prompt_len if max_prompt_len > 0 else None, context - 1 if context else None)
        if x
    ]
    return min(limits) if limits else None


def prompt_lengths(prompts: list[str], tokenizer: Any) -> list[int]:
    """Token counts of rendered prompts (no special tokens added, as `make_batch`)."""
    out: list[int] = []
    for s in range(0, len(prompts), CHUNK):
        out += [
            len(ids)
            for ids in tokenizer(prompts[s : s + CHUNK], add_special_tokens=False)["input_ids"]
        ]
    return out


def drop_long(
    problems: list[Problem],
    render: Callable[[Problem], str],
    tokenizer: Any,
    limit: int | None,
    where: str,
) -> tuple[list[Problem], list[tuple[str, int]]]:
    """(kept problems, [(id, tokens)] of the dropped ones); logs the count and the first few."""
    if limit is None or not problems:
        return problems, []
    lengths = prompt_lengths([render(p) for p in problems], tokenizer)
    kept = [p for p, n in zip(problems, lengths) if n <= limit]
    dropped = [(p.id, n) for p, n in zip(problems, lengths) if n > limit]
    if dropped:
        log.warning(
            "%s: dropped %d of %d prompts longer than %d tokens (first: %s)",
            where,
            len(dropped),
            len(problems),
            limit,
            "; ".join(f"{i}: {n} tokens" for i, n in dropped[:5]),
        )
    return kept, dropped


def fit_prompts(
    task: Any, tokenizer: Any, render: Callable[[Problem], str], limit: int | None
) -> Any:
    """A TaskData without the prompts over `limit` tokens (train and held-out split), counted in
    task.stats["too_long"] (and ["too_long_eval"]). Raises DataError when no training prompt is
    left."""
    from skyexp.data.rows import DataError

    train, long_train = drop_long(task.train, render, tokenizer, limit, "data")
    held, long_eval = drop_long(task.eval, render, tokenizer, limit, "data (held-out split)")
    if task.train and not train:
        raise DataError(f"data: every training prompt is longer than {limit} tokens "
                        "(data.max_prompt_len, or the model's context)")
    stats = {**task.stats, "too_long": len(long_train)}
    if long_eval:
        stats["too_long_eval"] = len(long_eval)
    return replace(task, train=train, eval=held, stats=stats)
