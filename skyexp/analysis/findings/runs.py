"""Runs of the findings sweeps as plain records: which arm each belongs to (from its resolved
config in .hydra/), its per-step curves (metrics.jsonl) and its held-out evals. Read-only over the
run directories, through skyexp.analysis.load."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from skyexp.analysis.load import RL_STEP, find_runs, load_run

log = logging.getLogger("skyexp")
_VAL = re.compile(r"^val/(?P<bench>[^/]+)/(?P<what>pass@\d+|entropy)$")


@dataclass(frozen=True)
class Arm:
    """What the findings vary: rollout temperature, optimizer steps per rollout batch
    (ppo_epochs x mini_batches), and the entropy mechanism (with the adaptive target)."""

    temperature: float = 1.0
    sgd_steps: int = 1
    entropy: str = "none"
    target: float | None = None

    @property
    def label(self) -> str:
        bonus = self.entropy if self.target is None else f"{self.entropy} (target {self.target:g})"
        steps = f"{self.sgd_steps} SGD step{'s' if self.sgd_steps > 1 else ''}/batch"
        return f"T={self.temperature:g}, {steps}, {bonus}"


@dataclass
class Eval:
    """One held-out evaluation: pass@k by k, and the samples' mean token entropy at the eval
    temperature (nan when the run did not log it)."""

    passk: dict[int, float]
    entropy: float = math.nan


@dataclass
class RunRecord:
    name: str
    path: Path
    arm: Arm
    seed: int
    bench: str
    eval_temperature: float
    # actor/entropy by RL step: at the rollout temperature
    entropy: dict[int, float] = field(default_factory=dict)
    reward: dict[int, float] = field(default_factory=dict)  # critic/score/mean by RL step
    coef: dict[int, float] = field(default_factory=dict)  # actor/entropy_coeff by RL step
    evals: dict[int, Eval] = field(default_factory=dict)  # by RL step (0: before RL, the SFT start)
    steps: int = 0  # RL steps run
    coef_max: float = math.nan  # entropy.coef_max: the cap of an adaptive controller

    @property
    def before(self) -> Eval | None:
        return self.evals.get(0)

    @property
    def final(self) -> Eval | None:
        later = [s for s in self.evals if s > 0]
        return self.evals[max(later)] if later else None


def arm_of(config: dict) -> Arm:
    algo, ent, temp = (
        config.get("algo", {}),
        config.get("entropy", {}),
        config.get("temperature", {}),
    )
    name = ent.get("name", "none")
    return Arm(temperature=float(temp.get("value", 1.0)),
               sgd_steps=int(algo.get("ppo_epochs", 1)) * int(algo.get("mini_batches", 1)),
               entropy=name, target=float(ent["target"]) if name == "adaptive" else None)


def _curve(m: pd.DataFrame, key: str) -> dict[int, float]:
    if key not in m or RL_STEP not in m:
        return {}
    rows = m[m[key].notna() & m[RL_STEP].notna() & m.get("actor/entropy", m[key]).notna()]
    return {int(s): float(v) for s, v in zip(rows[RL_STEP], rows[key])}


def _evals(m: pd.DataFrame, bench: str) -> dict[int, Eval]:
    """Rows holding val/<bench>/pass@k, keyed by the RL step they were logged at."""
    cols = {c: _VAL.match(c) for c in m.columns}
    cols = {c: mt["what"] for c, mt in cols.items() if mt and mt["bench"] == bench}
    passcols = [c for c, w in cols.items() if w.startswith("pass@")]
    if not passcols or RL_STEP not in m:
        return {}
    out = {}
    for _, row in m[m[passcols].notna().any(axis=1)].iterrows():
        passk = {int(cols[c][5:]): float(row[c]) for c in passcols if pd.notna(row[c])}
        ent = row.get(f"val/{bench}/entropy", math.nan)
        out[int(row[RL_STEP])] = Eval(passk, float(ent) if pd.notna(ent) else math.nan)
    return out


def load_record(path: Path) -> RunRecord:
    run = load_run(path)
    cfg = run.config
    bench = cfg.get("eval", {}).get("name", "arith")
    m = run.metrics
    return RunRecord(
        name=run.name,
        path=Path(path),
        arm=arm_of(cfg),
        seed=int(cfg.get("trainer", {}).get("seed", 0)),
        bench=bench,
        eval_temperature=float(cfg.get("eval", {}).get("temperature", math.nan)),
        entropy=_curve(m, "actor/entropy"),
        reward=_curve(m, "critic/score/mean"),
        coef=_curve(m, "actor/entropy_coeff"),
        evals=_evals(m, bench),
        steps=int(run.summary.get("rl_steps", 0)) or len(_curve(m, "actor/entropy")),
        coef_max=float(cfg.get("entropy", {}).get("coef_max", math.nan)),
    )


def load_records(sweeps: list[str | Path]) -> list[RunRecord]:
    """Every finished run directory (one with summary.json, written at the end of a run) under the
    given sweep directories (or run directories); runs still going or killed are left out."""
    paths = [p for s in sweeps for p in find_runs(s)]
    if not paths:
        raise FileNotFoundError(
            f"no run directories (metrics.jsonl) under {[str(s) for s in sweeps]}"
        )
    unfinished = [p for p in paths if not (p / "summary.json").exists()]
    if unfinished:
        log.warning(
            "left out %d unfinished runs (no summary.json): %s",
            len(unfinished),
            ", ".join(map(str, unfinished)),
        )
    return [load_record(p) for p in paths if p not in unfinished]


def by_arm(records: list[RunRecord]) -> dict[Arm, list[RunRecord]]:
    out: dict[Arm, list[RunRecord]] = {}
    for r in records:
        out.setdefault(r.arm, []).append(r)
    return dict(
        sorted(
            out.items(),
            key=lambda kv: (kv[0].entropy != "none", kv[0].sgd_steps, kv[0].temperature),
        )
    )
