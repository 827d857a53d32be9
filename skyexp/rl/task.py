"""The task every rank loads the same way: training prompts (fitted to the model's context), the
model RL starts from without SFT, its tokenizer, and the held-out problems; shared by the
trainer's set-up (skyexp.train) and a generator rank's (skyexp.rl.generator)."""

from __future__ import annotations

from typing import Any

from skyexp import distributed
from skyexp.config import Config
from skyexp.data import fit_task, load_task
from skyexp.evaluation.benchmarks import load_problems
from skyexp.model import loading
from skyexp.records import Problem


def task_and_tokenizer(cfg: Config, d: distributed.Dist) -> tuple[Any, str, Any]:
    """The task, the model RL would start from without SFT (rank 0 builds the tiny model once)
    and its tokenizer; prompts longer than data.max_prompt_len or the model's context are
    dropped and counted, before training."""
    task = load_task(cfg.data)
    base = loading.resolve_path(cfg.model, cfg.trainer.cache_dir) if d.is_main else None
    base = distributed.broadcast_object(base)
    tokenizer = loading.load_tokenizer(base, cfg.model)
    context = loading.context_length(base, cfg.model)
    return fit_task(task, tokenizer, cfg.data, cfg.model.chat_template, context), base, tokenizer


def load_eval_problems(cfg: Config, task: Any) -> list[Problem]:
    """The data source's held-out split (eval.source=data), or a benchmark file/dataset."""
    return load_problems(cfg.eval, task.eval, cfg.data.max_bad_fraction)


def eval_problems(cfg: Config, task: Any) -> list[Problem]:
    """The held-out problems when any evaluation is on (none otherwise)."""
    if cfg.eval.before or cfg.eval.after or cfg.eval.every:
        return load_eval_problems(cfg, task)
    return []
