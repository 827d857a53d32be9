"""Load runs into pandas DataFrames for analysis (the notebooks in notebooks/ import this).

Sources, all giving the same `RunData` (metrics rows keyed like metrics.jsonl: "step" is the
global step, "train/rl_step" the RL step):
- run directories: `metrics.jsonl`, `summary.json`, `.hydra/{config,overrides}.yaml`,
  `wandb_run.json` (which W&B run it is) and `tables/<key>.jsonl` (sample tables, per-step
  histograms as bin edges and counts: `load_table`); a sweep's directory holds one run directory
  per job. Offline W&B runs need nothing else: everything W&B got is in these files, and W&B's
  own `.wandb` record files are a private format (`wandb sync` them to read them in W&B);
- the W&B API, for online runs: `load_wandb_api("entity/project", group="entropy_collapse")`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from skyexp.config.overrides import (  # run_name: the name it had on W&B
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
    # wandb_run.json: id, name, group, project, mode, dir, url
    wandb: dict[str, Any] = field(default_factory=dict)


def find_runs(root: str | Path) -> list[Path]:
    """Run directories (holding metrics.jsonl) under root, in job order (0, 1, 2, ..., then by
    name)."""
    dirs = {p.parent for p in Path(root).rglob("metrics.jsonl")}
    return sorted(dirs, key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, str(p)))


def latest_sweep(root: str | Path = "multirun") -> Path:
    """The newest sweep directory (`<root>/<date>/<time>`) that holds runs."""
    sweeps = sorted(
        (p for p in Path(root).glob("*/*") if p.is_dir() and find_runs(p)),
        key=lambda p: p.stat().st_mtime,
    )
    if not sweeps:
        raise FileNotFoundError(f"no sweep with runs under {root}")
    return sweeps[-1]


def load_run(path: str | Path) -> RunData:
    path = Path(path)
    rows = [
        json.loads(line)
        for line in (path / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    summary = (
        json.loads((path / "summary.json").read_text()) if (path / "summary.json").exists() else {}
    )
    hydra = path / ".hydra"
    config = (
        OmegaConf.to_container(OmegaConf.load(hydra / "config.yaml"))
        if (hydra / "config.yaml").exists()
        else {}
    )
    overrides = (
        list(OmegaConf.load(hydra / "overrides.yaml"))
        if (hydra / "overrides.yaml").exists()
        else []
    )
    wandb = (
        json.loads((path / "wandb_run.json").read_text())
        if (path / "wandb_run.json").exists()
        else {}
    )
    name = (
        wandb.get("name")
        or (config.get("logger") or {}).get("run_name")
        or run_name_from_overrides(overrides)
        or path.name
    )
    return RunData(
        name=name,
        metrics=pd.DataFrame(rows),
        summary=summary,
        config=config,
        overrides=overrides,
        path=path,
        wandb=wandb,
    )


def load_table(run: RunData | str | Path, key: str) -> pd.DataFrame:
    """A table or histogram a run logged (`samples/completions`, `actor/entropy_hist`), from
    tables/<key with / as .>.jsonl: one row per table row (histograms: per step, with `edges` and
    `counts`), each with the global `step`. Empty when the run logged none."""
    path = (
        Path(run.path if isinstance(run, RunData) else run)
        / "tables"
        / f"{key.replace('/', '.')}.jsonl"
    )
    if not path.exists():
        return pd.DataFrame(columns=["step"])
    return pd.DataFrame([json.loads(x) for x in path.read_text().splitlines() if x.strip()])


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
    return (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(columns=["run", RL_STEP, "actor/entropy"])
    )


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
        swept = {
            override_key(o): o.split("=", 1)[1] for o in swept_overrides(r.overrides) if "=" in o
        }
        rows.append({"run": r.name, **swept, **r.summary})
    return pd.DataFrame(rows)


# --- W&B (online runs)
# -----------------------------------------------------------------------------

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
        info = {k: getattr(run, k, None) for k in ("id", "name", "group", "project", "url")}
        out.append(
            RunData(
                name=run.name,
                metrics=history,
                summary=dict(run.summary),
                config=dict(run.config),
                wandb={**info, "mode": "online"},
            )
        )
    return out
