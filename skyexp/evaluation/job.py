"""The body of `python -m skyexp.eval` (skyexp/eval.py has the command and its outputs): the
benchmarks of the command line resolved and composed, every benchmark run on every checkpoint
with one rollout engine per checkpoint, the summary written and logged."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from skyexp.config import ConfigError, EvalConfig, EvalRunConfig, to_typed
from skyexp.config.overrides import override_key

log = logging.getLogger("skyexp")


def resolve_benchmarks(
    cfg: EvalRunConfig, overrides: list[str], compose: Callable[[list[str]], Any]
) -> list[EvalConfig]:
    """The eval configs to run: the composed `eval`, or one per name in `benchmarks`, each composed
    (by `compose(overrides)`) as `eval=<name>` plus every other override of the command line."""
    if not cfg.benchmarks:
        return [cfg.eval]
    if len(set(cfg.benchmarks)) != len(cfg.benchmarks):
        raise ConfigError(f"config key 'benchmarks': names repeat: {cfg.benchmarks}")
    rest = [o for o in overrides if override_key(o) not in ("benchmarks", "eval")]
    return [
        to_typed(compose([*rest, f"eval={name}"]), EvalRunConfig).eval for name in cfg.benchmarks
    ]


def checkpoint_labels(paths: list[str]) -> list[str]:
    """Short unique labels: the last two path parts (`<run>/final`), file-name safe."""
    labels = []
    for i, p in enumerate(paths):
        label = re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(Path(p).parts[-2:])) or f"ckpt{i}"
        labels.append(label if label not in labels else f"{label}_{i}")
    return labels


def evaluate_all(
    cfg: EvalRunConfig, evals: list[EvalConfig], run_dir: Path, config_dict: dict[str, Any]
) -> dict[str, Any]:
    """Load every benchmark's problems (failing before any model loads), then for each checkpoint
    build the rollout engine once and run every benchmark; write and return the summary."""
    import random

    import torch

    from skyexp import distributed
    from skyexp.data import load_task
    from skyexp.evaluation import report
    from skyexp.evaluation.benchmarks import load_problems
    from skyexp.rewards import build_reward
    from skyexp.tracking import make_logger

    t0 = time.time()
    d = distributed.setup(cfg.trainer.device, cfg.trainer.threads, cfg.trainer.keep_freed_memory,
                          cfg.trainer.deterministic)
    random.seed(cfg.trainer.seed + d.rank)
    torch.manual_seed(cfg.trainer.seed)
    held_out = (
        load_task(cfg.data).eval if any(e.source == "data" and not e.path for e in evals) else None
    )
    problems = {e.name: load_problems(e, held_out, cfg.data.max_bad_fraction) for e in evals}
    paths, labels = _checkpoints(cfg, d)
    reward = build_reward(cfg.reward)
    logger = make_logger(cfg.logger, run_dir, config_dict, d.is_main)
    results: list = []
    try:
        for path, label in zip(paths, labels):
            sub = f"{label}/" if len(paths) > 1 else ""
            results += _evaluate_checkpoint(
                cfg, d, (path, label, sub), evals, problems, (reward, logger, run_dir), len(results)
            )
        summary = report.summarise(results, labels, paths, time.time() - t0)
        if d.is_main:
            report.write(run_dir / "eval", summary, results)
            report.log_wandb(logger, results)
            print(report.table(summary), flush=True)
        return summary
    finally:
        logger.close()
        reward.close()


def _checkpoints(cfg: EvalRunConfig, d) -> tuple[list[str], list[str]]:
    """The model directories to evaluate and their labels: eval's `checkpoints`, or model.path
    (the tiny model when empty)."""
    from skyexp import distributed
    from skyexp.model import loading

    if cfg.checkpoints:
        return list(cfg.checkpoints), checkpoint_labels(cfg.checkpoints)
    base = loading.resolve_path(cfg.model, cfg.trainer.cache_dir) if d.is_main else None
    # a trained run is labelled by its directory: "tiny" would say nothing about it
    label = checkpoint_labels([cfg.model.path])[0] if cfg.model.path else cfg.model.name
    return [distributed.broadcast_object(base)], [label]


def _evaluate_checkpoint(
    cfg: EvalRunConfig,
    d,
    which: tuple[str, str, str],
    evals: list[EvalConfig],
    problems: dict[str, list],
    sinks: tuple,
    first_step: int,
) -> list[tuple]:
    """Every benchmark on one checkpoint (`which` = path, label, output subdirectory), one engine
    for all; `sinks` = (reward, logger, run directory). Returns [(label, eval config, result)]."""
    from skyexp.evaluation.runner import eval_template, run_eval, write_records
    from skyexp.model import loading
    from skyexp.rollout import engine_for

    (path, label, sub), (reward, logger, run_dir) = which, sinks
    tokenizer = loading.load_tokenizer(path, cfg.model)
    engine = engine_for(cfg, path, tokenizer, d.device, cfg.trainer.seed * 1000 + d.rank)
    out = []
    for e in evals:
        log.info(
            "eval %s on %s: %d problems x %d samples",
            e.name,
            label,
            len(problems[e.name][: e.size or None]),
            e.n,
        )
        res = run_eval(
            engine,
            reward,
            tokenizer,
            problems[e.name],
            e,
            eval_template(e),
            cfg.model.chat_template,
            (d.rank, d.world_size),
        )
        logger.log(
            {**res.metrics(), "val/timeouts": res.timeouts, "val/errors": res.errors},
            first_step + len(out),
        )
        if d.is_main:
            write_records(res.records, run_dir / "eval" / f"{sub}{e.name}.jsonl")
        out.append((label, e, res))
    del engine
    return out


def prepare_benchmarks(cfg: EvalRunConfig) -> tuple[list[EvalConfig]]:
    """The benchmarks of the command line, composed in the running Hydra context."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    # unresolved, so an interpolation like ${eval.name} is re-resolved for each benchmark
    overrides = OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)
    return (
        resolve_benchmarks(
            cfg, overrides, lambda o: hydra.compose(config_name="eval", overrides=o)
        ),
    )
