"""Metric sinks behind one protocol: W&B, a local metrics.jsonl, and the console; how runs are
named in W&B; and the one-line step summaries printed when the console is not a terminal.

Only rank 0 logs; other ranks get a MultiLogger with no sinks (no `if rank == 0` in the loop).
A W&B failure (no network, bad key, invalid settings, unwritable dir) is reported once and the
run continues with the local metrics.jsonl, which is written and flushed every step.

Besides scalars, a metrics dict may carry a tensor of many values (a W&B histogram, e.g. the
step's token entropies; also appended to tables/<key>.jsonl as bin edges and counts), a `Table`
(W&B table; also appended to tables/<key>.jsonl) or a `LinePlot` (W&B line chart, e.g. pass@k
against k at each eval).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from skyexp.config import LoggerConfig

log = logging.getLogger("skyexp")

STEP_KEY = "train/global_step"  # every logged row (SFT steps, RL steps, evals)
RL_STEP_KEY = "train/rl_step"  # the x axis of every RL and eval metric
SFT_STEP_KEY = "sft/step"  # the SFT step's index from 0, the x axis of the sft/* metrics
STEP_OF_PREFIX = {"sft": SFT_STEP_KEY}  # metric namespaces not plotted against the RL step
HIST_BINS = 64  # histogram bins, in W&B and in tables/<key>.jsonl
RUN_FILE = "wandb_run.json"  # in the run directory: which W&B run holds this run's metrics
# step_line's fields, in order, after the step (val/<benchmark>/pass@1 follow when the row has them)
LINE_KEYS = (
    "train/stage",
    "critic/score/mean",
    "batch/pass@1",
    "actor/entropy",
    "timing_s/step",
    "perf/throughput",
)


def use_bars(progress: bool, streams: tuple[Any, ...] = (sys.stdout, sys.stderr)) -> bool:
    """Progress bars only on a terminal: redirected to a file (SLURM, nohup, CI) a bar is a stream
    of carriage-return redraws that tail -f and grep cannot read. Both streams count: tqdm draws
    on stderr, the log lines go to stdout, and a job log usually holds both."""
    return progress and all(getattr(s, "isatty", lambda: False)() for s in streams)


def line_due(every: int, rl_step: int, bars: bool) -> bool:
    """Whether RL step `rl_step` prints a step_line: when no bar is drawn, every `every` steps
    (logger.line_every; 0: never), starting with the first."""
    return not bars and every > 0 and rl_step % every == 0


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


def step_line(metrics: dict[str, Any], total: int = 0) -> str:
    """One RL step as one greppable line of `name:value` pairs under the metric names of
    metrics.jsonl (verl's console format): `step:12 - progress:13/150 - train/stage:0 -
    critic/score/mean:0.5312 - batch/pass@1:0.52 - actor/entropy:0.112 - timing_s/step:1.42 -
    perf/throughput:9812`, plus `val/<benchmark>/pass@1` when the row carries an evaluation.
    `total`: the run's RL steps (0: no progress field). Missing or non-scalar values are left
    out."""
    step = int(metrics.get(RL_STEP_KEY, 0))
    parts = [f"step:{step}"] + ([f"progress:{step + 1}/{total}"] if total else [])
    keys = [
        *LINE_KEYS,
        *sorted(k for k in metrics if k.startswith("val/") and k.endswith("/pass@1")),
    ]
    scalars = _scalars({k: metrics[k] for k in keys if k in metrics})
    parts += [f"{k}:{_short(scalars[k])}" for k in keys if scalars.get(k) is not None]
    return " - ".join(parts)


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[Any]]


@dataclass(frozen=True)
class LinePlot:
    x: list[float]
    y: list[float]
    x_label: str
    y_label: str
    title: str


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
    """One JSON object per step: {"step": s, "<metric>": value, ...}. Non-finite values become null.
    Tables go to tables/<key with / as .>.jsonl beside it, one object per row with the step;
    histograms (tensors of many values) too, one object per step: {"step", "edges" (HIST_BINS + 1
    bin edges), "counts" (HIST_BINS)}, the bins W&B gets. A resumed run rewinds all of them."""

    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "a", encoding="utf-8")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self._f.write(json.dumps({"step": step, **_scalars(metrics)}) + "\n")
        self._f.flush()
        for key, value in metrics.items():
            if isinstance(value, Table):
                self._append(
                    key, [{"step": step, **dict(zip(value.columns, row))} for row in value.rows]
                )
            elif isinstance(value, torch.Tensor) and value.numel() > 1:
                counts, edges = histogram(value)
                self._append(key, [{"step": step, "edges": edges, "counts": counts}])

    def _append(self, key: str, rows: list[dict[str, Any]]) -> None:
        out = self.path.parent / "tables" / f"{key.replace('/', '.')}.jsonl"
        out.parent.mkdir(exist_ok=True)
        with open(out, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)

    def close(self) -> None:
        self._f.close()


class ConsoleLogger:
    """Eval results and stage summaries to the console (per-step numbers go to the progress bar on a
    terminal, to `step_line`s otherwise)."""

    def log(self, metrics: dict[str, Any], step: int) -> None:
        shown = {
            k: v for k, v in _scalars(metrics).items() if k.startswith("val/") and v is not None
        }
        if shown:  # numbered by the RL step (train/rl_step), as the step lines, not the row counter
            where = (
                f"rl_step {int(metrics[RL_STEP_KEY])}" if RL_STEP_KEY in metrics else f"row {step}"
            )
            log.info("%s: %s", where, "  ".join(f"{k}={v:.4f}" for k, v in sorted(shown.items())))

    def close(self) -> None:
        pass


class WandbLogger:
    """W&B run from LoggerConfig: project, entity, group, name, job_type, tags, notes, settings.
    Every metric namespace is plotted against the RL step (define_metric), SFT's against the SFT
    step (sft/step).
    `run_id` continues an existing W&B run (a resumed training run); steps it logged after the
    checkpoint are logged again; W&B keeps the values it already holds for those steps."""

    def __init__(
        self, cfg: LoggerConfig, run_dir: Path, config: dict[str, Any], run_id: str | None = None
    ):
        self.run = None
        self._defined: set[str] = set()
        mode = os.environ.get("WANDB_MODE") or cfg.mode
        try:
            import wandb

            self.wandb = wandb
            wdir = Path(cfg.dir or run_dir)
            wdir.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                project=cfg.project,
                entity=cfg.entity,
                group=cfg.group,
                name=cfg.run_name,
                job_type=cfg.job_type,
                tags=list(cfg.tags),
                notes=cfg.notes,
                config=config,
                dir=str(wdir),
                mode=mode,
                reinit="finish_previous",
                settings=wandb.Settings(**quiet_settings(cfg.settings)),
                id=run_id,
                resume="allow" if run_id else None,
            )
            self.run.define_metric(STEP_KEY)
            self.run.define_metric(RL_STEP_KEY)
            self.run.define_metric(SFT_STEP_KEY)
            _write_run_file(self.run, run_dir, mode)
            log.info(
                "W&B run %s (%s, id %s) in %s%s",
                self.run.name,
                mode,
                self.run.id,
                Path(self.run.dir).parent,
                f": {self.run.url}"
                if self.run.url
                else f"; upload with wandb sync {Path(self.run.dir).parent}",
            )
        except Exception as e:  # never let W&B stop training
            log.warning(
                "W&B disabled for this run (%s: %s); metrics.jsonl still records everything",
                type(e).__name__,
                e,
            )
            self.run = None

    def _define(self, key: str) -> None:
        """Plot `key`'s namespace against its step metric (one define_metric per namespace)."""
        prefix = key.split("/")[0]
        # train/* would catch the step keys themselves
        glob = key if prefix == "train" else f"{prefix}/*"
        if key in (STEP_KEY, RL_STEP_KEY) or glob in self._defined:
            return
        self.run.define_metric(glob, step_metric=STEP_OF_PREFIX.get(prefix, RL_STEP_KEY))
        self._defined.add(glob)

    def _convert(self, v: Any) -> Any:
        wandb = self.wandb
        if isinstance(v, torch.Tensor) and v.numel() > 1:
            counts, edges = histogram(v)
            return wandb.Histogram(np_histogram=(counts, edges))
        if isinstance(v, Table):
            return wandb.Table(columns=list(v.columns), data=[list(r) for r in v.rows])
        if isinstance(v, LinePlot):
            table = wandb.Table(
                columns=[v.x_label, v.y_label], data=[[x, y] for x, y in zip(v.x, v.y)]
            )
            return wandb.plot.line(table, v.x_label, v.y_label, title=v.title)
        return v

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.run is None:
            return
        try:
            data: dict[str, Any] = {STEP_KEY: step}
            for k, v in metrics.items():
                self._define(k)
                data.setdefault(k, self._convert(v))
            self.run.log(_drop_non_finite(data), step=step)
        except Exception as e:
            log.warning("W&B log failed (%s: %s); continuing without W&B", type(e).__name__, e)
            self.run = None

    def close(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception as e:
                log.warning("W&B finish failed: %s", e)


def quiet_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """wandb.Settings fields with W&B's own console lines off (`quiet`: its ~35 lines per run, the
    run history and summary printed at the end; errors still show), unless logger.settings sets
    `quiet` itself. The one line skyexp logs instead names the run and where it is; only rank 0
    starts W&B (make_logger)."""
    return {"quiet": True, **settings}


def _write_run_file(run: Any, run_dir: Path, mode: str) -> None:
    """wandb_run.json: the W&B run's id, name, group, project, job type, tags, mode and local
    directory (what `wandb sync` takes), read back from the run W&B created."""
    info = {
        "id": run.id,
        "name": run.name,
        "group": run.group,
        "project": run.project,
        "entity": run.entity or None,
        "job_type": run.job_type,
        "tags": list(run.tags),
        "mode": mode,
        "dir": str(Path(run.dir).parent.resolve()),
        "url": run.url,
    }
    (run_dir / RUN_FILE).write_text(json.dumps(info, indent=2) + "\n")


def histogram(values: torch.Tensor, bins: int = HIST_BINS) -> tuple[list[int], list[float]]:
    """(counts [bins], edges [bins + 1]) over the finite values' range, as numpy.histogram."""
    import numpy as np

    v = values.detach().float().flatten().cpu().numpy()
    counts, edges = np.histogram(v[np.isfinite(v)], bins=bins)
    return counts.tolist(), edges.tolist()


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


@functools.cache
def git_commit(path: Path | None = None) -> str | None:
    """HEAD of the repository holding skyexp, with "-dirty" when tracked files changed; None outside
    git.
    Read once per process (the summary and the W&B config both record it)."""
    cwd = path or Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")



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
        sinks.append(WandbLogger(cfg, run_dir, {**config, "git_commit": git_commit()}, run_id))
    return MultiLogger(sinks)
