"""Load runs into pandas DataFrames for analysis (the notebooks in notebooks/ import this).

Sources, all giving the same `RunData` (metrics rows keyed like metrics.jsonl: "step" is the
global step, "train/rl_step" the RL step):
- run directories: `metrics.jsonl`, `summary.json`, `.hydra/{config,overrides}.yaml`; a sweep's
  directory holds one run directory per job;
- W&B offline run directories (`wandb/offline-run-*/run-*.wandb`), read without syncing;
- the W&B API, for online runs: `load_wandb_api("entity/project", group="entropy_collapse")`.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from skyexp.cli import (  # run_name: the name it had on W&B
    override_key,
    run_name_from_overrides,
    swept_overrides,
)

RL_STEP = "train/rl_step"
_PASS = re.compile(r"^val/(?P<bench>[^/]+)/pass@(?P<k>\d+)$")


@dataclass
class RunData:
    name: str  # the W&B run name: the job's overrides, e.g. "entropy=adaptive,temperature=t1_0"
    metrics: pd.DataFrame  # one row per logged step
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    path: Path | None = None


def find_runs(root: str | Path) -> list[Path]:
    """Run directories (holding metrics.jsonl) under root, in job order (0, 1, 2, ..., then by name)."""
    dirs = {p.parent for p in Path(root).rglob("metrics.jsonl")}
    return sorted(dirs, key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, str(p)))


def latest_sweep(root: str | Path = "multirun") -> Path:
    """The newest sweep directory (`<root>/<date>/<time>`) that holds runs."""
    sweeps = sorted((p for p in Path(root).glob("*/*") if p.is_dir() and find_runs(p)), key=lambda p: p.stat().st_mtime)
    if not sweeps:
        raise FileNotFoundError(f"no sweep with runs under {root}")
    return sweeps[-1]


def load_run(path: str | Path) -> RunData:
    path = Path(path)
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line.strip()]
    summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").exists() else {}
    hydra = path / ".hydra"
    config = OmegaConf.to_container(OmegaConf.load(hydra / "config.yaml")) if (hydra / "config.yaml").exists() else {}
    overrides = list(OmegaConf.load(hydra / "overrides.yaml")) if (hydra / "overrides.yaml").exists() else []
    name = (config.get("logger") or {}).get("run_name") or run_name_from_overrides(overrides) or path.name
    return RunData(name=name, metrics=pd.DataFrame(rows), summary=summary, config=config, overrides=overrides, path=path)


def load_runs(root: str | Path) -> list[RunData]:
    runs = [load_run(p) for p in find_runs(root)]
    if not runs:
        raise FileNotFoundError(f"no run directories (metrics.jsonl) under {root}")
    return runs


def rl_frame(runs: list[RunData]) -> pd.DataFrame:
    """Every RL step of every run (rows with actor/entropy), with a `run` column."""
    parts = []
    for r in runs:
        m = r.metrics
        if "actor/entropy" in m:
            parts.append(m[m["actor/entropy"].notna()].assign(run=r.name))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["run", RL_STEP, "actor/entropy"])


def eval_frame(runs: list[RunData]) -> pd.DataFrame:
    """Long form of every eval: run, step (global), rl_step, benchmark, k, pass@k."""
    out = []
    for r in runs:
        for _, row in r.metrics.iterrows():
            for key, value in row.items():
                m = _PASS.match(str(key))
                if m and pd.notna(value):
                    out.append({"run": r.name, "step": row.get("step"), "rl_step": row.get(RL_STEP),
                                "benchmark": m["bench"], "k": int(m["k"]), "pass@k": float(value)})
    return pd.DataFrame(out, columns=["run", "step", "rl_step", "benchmark", "k", "pass@k"])


def summary_frame(runs: list[RunData]) -> pd.DataFrame:
    """One row per run: name, the swept values (one column per override key), summary.json."""
    rows = []
    for r in runs:
        swept = {override_key(o): o.split("=", 1)[1] for o in swept_overrides(r.overrides) if "=" in o}
        rows.append({"run": r.name, **swept, **r.summary})
    return pd.DataFrame(rows)


# --- W&B -------------------------------------------------------------------------------------------

def _wandb_records(path: Path):
    """Records of a .wandb file: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of
    chunks, each with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, buf = path.read_bytes(), 32768, 7, b""
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the rest of a block too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            yield rec
        elif kind == 0:
            buf = b""


@dataclass
class WandbOfflineRun:
    info: dict[str, Any]  # group, name, job_type, tags, notes, project, git_commit
    config: dict[str, Any]
    history: pd.DataFrame  # scalar history rows
    metrics_defined: dict[str, str]  # glob or name -> its step metric
    media: list[str]  # non-scalar history keys: histograms, tables, charts
    complete: bool  # the file ends with the run's exit record (W&B's service writes it after finish() returns)


def load_wandb_offline(run_dir: str | Path) -> list[WandbOfflineRun]:
    """Every W&B offline run under run_dir (a run directory or its wandb/ folder)."""
    out = []
    for f in sorted(Path(run_dir).rglob("offline-run-*/run-*.wandb")):
        info: dict[str, Any] = {}
        config: dict[str, Any] = {}
        rows, defined, media, complete = [], {}, set(), False
        for rec in _wandb_records(f):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                r = rec.run
                info = {"group": r.run_group, "name": r.display_name, "job_type": r.job_type, "tags": list(r.tags),
                        "notes": r.notes, "project": r.project, "git_commit": r.git.commit}
                config.update({i.key: json.loads(i.value_json) for i in r.config.update})
            elif kind == "config":
                config.update({i.key: json.loads(i.value_json) for i in rec.config.update})
            elif kind == "exit":
                complete = True
            elif kind == "metric":
                defined[rec.metric.glob_name or rec.metric.name] = rec.metric.step_metric
            elif kind == "history":
                row = {}
                for item in rec.history.item:
                    key = item.key or "/".join(item.nested_key)
                    value = json.loads(item.value_json)
                    if isinstance(value, (int, float)) and not isinstance(value, bool) and len(item.nested_key) <= 1:
                        row[key] = value
                    elif key.endswith("/_type"):
                        media.add(f"{key[: -len('/_type')]}:{value}")
                rows.append(row)
        out.append(WandbOfflineRun(info, config, pd.DataFrame(rows), defined, sorted(media), complete))
    return out


def load_wandb_api(path: str, group: str | None = None, api: Any = None) -> list[RunData]:
    """Runs of an online W&B project ("entity/project"), optionally one group, as RunData
    (history renamed like metrics.jsonl: "_step" -> "step")."""
    if api is None:
        import wandb

        api = wandb.Api()
    runs = api.runs(path, filters={"group": group} if group else None)
    out = []
    for run in runs:
        history = pd.DataFrame(list(run.scan_history())).rename(columns={"_step": "step"})
        out.append(RunData(name=run.name, metrics=history, summary=dict(run.summary), config=dict(run.config)))
    return out
