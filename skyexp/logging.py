"""Metric sinks behind one protocol: W&B, a local metrics.jsonl, and the console.

Only rank 0 logs; other ranks get a MultiLogger with no sinks (no `if rank == 0` in the loop).
A W&B failure (no network, bad key, unwritable dir) is reported once and the run continues
with the local metrics.jsonl, which is written and flushed every step.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Protocol

import torch

from skyexp.config import LoggerConfig

log = logging.getLogger("skyexp")

STEP_KEY = "train/global_step"


class Logger(Protocol):
    def log(self, metrics: dict[str, Any], step: int) -> None: ...
    def close(self) -> None: ...


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                continue
            v = v.item()
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v) if math.isfinite(v) else None
    return out


class JsonlLogger:
    """One JSON object per step: {"step": s, "<metric>": value, ...}. Non-finite values become null."""

    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "a", encoding="utf-8")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self._f.write(json.dumps({"step": step, **_scalars(metrics)}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class ConsoleLogger:
    """Eval results and stage summaries to the console (per-step numbers go to the progress bar)."""

    def log(self, metrics: dict[str, Any], step: int) -> None:
        shown = {k: v for k, v in _scalars(metrics).items() if k.startswith("val/") and v is not None}
        if shown:
            log.info("step %d: %s", step, "  ".join(f"{k}={v:.4f}" for k, v in sorted(shown.items())))

    def close(self) -> None:
        pass


class WandbLogger:
    """`run_id` continues an existing W&B run (a resumed training run); steps it logged after the
    checkpoint are logged again; W&B keeps the values it already holds for those steps."""

    def __init__(self, cfg: LoggerConfig, run_dir: Path, config: dict[str, Any], run_id: str | None = None):
        self.run = None
        mode = os.environ.get("WANDB_MODE") or cfg.mode
        try:
            import wandb

            self.wandb = wandb
            self.run = wandb.init(
                project=cfg.project, entity=cfg.entity, group=cfg.group, name=cfg.run_name, tags=list(cfg.tags),
                notes=cfg.notes, config=config, dir=str(run_dir), mode=mode, reinit="finish_previous",
                id=run_id, resume="allow" if run_id else None,
            )
            self.run.define_metric(STEP_KEY)
            self.run.define_metric("*", step_metric=STEP_KEY)
        except Exception as e:  # never let W&B stop training
            log.warning("W&B disabled for this run (%s: %s); metrics.jsonl still records everything", type(e).__name__, e)
            self.run = None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.run is None:
            return
        data: dict[str, Any] = {STEP_KEY: step}
        for k, v in metrics.items():
            if isinstance(v, torch.Tensor) and v.numel() > 1:
                data[k] = self.wandb.Histogram(v.float().numpy(), num_bins=64)
            elif k not in data:
                data[k] = v
        try:
            self.run.log(_drop_non_finite(data), step=step)
        except Exception as e:
            log.warning("W&B log failed (%s); continuing without W&B", e)
            self.run = None

    def close(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception as e:
                log.warning("W&B finish failed: %s", e)


def _drop_non_finite(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not (isinstance(v, float) and not math.isfinite(v))}


class MultiLogger:
    def __init__(self, sinks: list[Logger]):
        self.sinks = sinks

    @property
    def run_id(self) -> str | None:
        """The W&B run id (saved in checkpoints, so a resumed run continues the same W&B run)."""
        for s in self.sinks:
            run = getattr(s, "run", None)
            if run is not None:
                return run.id
        return None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for s in self.sinks:
            s.log(metrics, step)

    def close(self) -> None:
        for s in self.sinks:
            s.close()


def make_logger(cfg: LoggerConfig, run_dir: Path, config: dict[str, Any], is_main: bool,
                run_id: str | None = None) -> MultiLogger:
    if not is_main:
        return MultiLogger([])
    sinks: list[Logger] = []
    if "jsonl" in cfg.backends:
        sinks.append(JsonlLogger(run_dir / "metrics.jsonl"))
    if "console" in cfg.backends:
        sinks.append(ConsoleLogger())
    if "wandb" in cfg.backends and cfg.mode != "disabled":
        sinks.append(WandbLogger(cfg, run_dir, config, run_id))
    return MultiLogger(sinks)
