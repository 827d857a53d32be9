"""Run directories of one or more sweeps, read straight from their files (metrics.jsonl,
summary.json, .hydra/config.yaml, wandb_run.json), and the grouping a comparison needs: the
config keys whose values differ between the runs, found from the configs themselves.

Seeds are not a grouping key: runs that differ only in `trainer.seed` form one group, and the
report shows their mean ± sd. A key that the value of its group's `name` already fixes (for
example `entropy.controller` when `entropy` itself was swapped) is left out of the labels, so
`entropy=adaptive` reads as one key, not five.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RL_STEP = "train/rl_step"
SEED_KEYS = ("trainer.seed",)
# Keys that differ between any two runs without making them different experiments.
VOLATILE = (
    "trainer.resume",
    "logger.run_name",
    "logger.dir",
    "logger.notes",
    "trainer.cache_dir",
    "hydra",
)
_PASS = re.compile(r"^val/(?P<bench>[^/]+)/pass@(?P<k>\d+)$")


@dataclass
class Run:
    path: Path
    rows: list[dict[str, Any]]  # metrics.jsonl, one dict per logged step
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # flattened: "algo.n" -> 8
    # wandb_run.json: id, name, group, project, ...
    wandb: dict[str, Any] = field(default_factory=dict)

    @property
    def seed(self) -> Any:
        return self.config.get("trainer.seed")

    @property
    def group(self) -> str | None:
        return self.wandb.get("group") or self.config.get("logger.group")

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(RL steps, values) of a metric over the RL rows that hold it."""
        xs, ys = [], []
        for r in self.rows:
            v = r.get(key)
            if (
                RL_STEP in r
                and isinstance(v, (int, float))
                and not isinstance(v, bool)
                and math.isfinite(v)
            ):
                xs.append(float(r[RL_STEP]))
                ys.append(float(v))
        return xs, ys


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{"algo": {"n": 8}} -> {"algo.n": 8}; lists stay whole values (compared as JSON)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(flatten(v, key) if isinstance(v, dict) else {key: v})
    return out


def find_run_dirs(roots: list[str | Path]) -> list[Path]:
    """Every directory holding a metrics.jsonl under the given sweep (or run) directories, in job
    order (0, 1, 2, ..., then by name); each directory once."""
    found: dict[Path, None] = {}
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"not a directory: {root}")
        dirs = {p.parent.resolve() for p in root.rglob("metrics.jsonl")}
        for p in sorted(
            dirs,
            key=lambda p: (
                str(p.parent),
                (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name),
            ),
        ):
            found[p] = None
    return list(found)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a run killed mid-write leaves a partial last line
                continue
    return rows


def load_run(path: str | Path) -> Run:
    path = Path(path)
    summary = (
        json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else {}
    )
    cfg_file = path / ".hydra" / "config.yaml"
    config = flatten(yaml.safe_load(cfg_file.read_text()) or {}) if cfg_file.is_file() else {}
    wb = (
        json.loads((path / "wandb_run.json").read_text())
        if (path / "wandb_run.json").is_file()
        else {}
    )
    return Run(path, _read_jsonl(path / "metrics.jsonl"), summary, config, wb)


def load_runs(roots: list[str | Path]) -> list[Run]:
    runs = [load_run(p) for p in find_run_dirs(roots)]
    if not runs:
        raise FileNotFoundError(
            f"no run directories (with metrics.jsonl) under {', '.join(map(str, roots))}"
        )
    return runs


def _canon(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def differing_keys(runs: list[Run]) -> list[str]:
    """Config keys whose values differ between the runs (seeds and per-run paths excluded), less
    those that their group's `name` key already determines."""
    keys = sorted({k for r in runs for k in r.config})
    diff = [
        k
        for k in keys
        if not k.startswith(VOLATILE)
        and k not in SEED_KEYS
        and len({_canon(r.config.get(k)) for r in runs}) > 1
    ]
    out = []
    for k in diff:
        head = k.rsplit(".", 1)[0] if "." in k else ""
        name_key = f"{head}.name"
        if head and name_key in diff and k != name_key:
            by_name: dict[str, set[str]] = {}
            for r in runs:
                by_name.setdefault(_canon(r.config.get(name_key)), set()).add(
                    _canon(r.config.get(k))
                )
            if all(len(v) == 1 for v in by_name.values()):
                continue  # fixed by the group's choice: the name says it
        out.append(k)
    return out


def _short(v: Any) -> str:
    return v if isinstance(v, str) else _canon(v)


def label(run: Run, keys: list[str]) -> str:
    """The run's group label: `key=value` for every differing key (the last segment of a
    `<group>.name` key is dropped: `entropy=adaptive`)."""
    if not keys:
        return run.group or "all runs"
    return ",".join(
        f"{k[:-5] if k.endswith('.name') else k}={_short(run.config.get(k))}" for k in keys
    )


def group_runs(runs: list[Run], keys: list[str]) -> dict[str, list[Run]]:
    """Label -> the runs (seeds) under it, in first-seen order."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(label(r, keys), []).append(r)
    return groups


def pass_keys(runs: list[Run]) -> dict[str, list[int]]:
    """Benchmark -> the k values of its logged val/<bench>/pass@k metrics."""
    out: dict[str, set[int]] = {}
    for r in runs:
        for row in r.rows:
            for key in row:
                m = _PASS.match(key)
                if m:
                    out.setdefault(m["bench"], set()).add(int(m["k"]))
    return {b: sorted(ks) for b, ks in sorted(out.items())}


def summary_passk(run: Run, label_: str) -> dict[int, float]:
    """summary.json's pass@k_<label_> (label_: before | after) as k -> value."""
    pat = re.compile(rf"^pass@(\d+)_{label_}$")
    return {
        int(m[1]): float(v)
        for k, v in run.summary.items()
        if (m := pat.match(k)) and isinstance(v, (int, float))
    }


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample sd (0 for one value)."""
    n = len(values)
    mu = sum(values) / n
    sd = math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mu, sd
