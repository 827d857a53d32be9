"""skyexp.analysis on hand-made run directories (the files a run writes, W&B's private run files
never) and a stand-in for the W&B API."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from skyexp import analysis


def _run(
    d: Path, overrides: list[str], entropy: list[float], passk_after: dict[int, float]
) -> None:
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (d / ".hydra" / "config.yaml").write_text(
        "logger:\n  run_name: null\n  group: g\nalgo:\n  n: 4\n"
    )
    rows = [{"step": 0, "sft/loss": 2.0},
            {"step": 1, "train/rl_step": 0, "val/arith/pass@1": 0.1, "val/arith/pass@2": 0.2}]
    rows += [
        {"step": 2 + i, "train/rl_step": i, "actor/entropy": e, "batch/pass@1": 0.1 * i}
        for i, e in enumerate(entropy)
    ]
    rows.append({"step": 2 + len(entropy), "train/rl_step": len(entropy),
                 **{f"val/arith/pass@{k}": v for k, v in passk_after.items()}})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "summary.json").write_text(
        json.dumps({"rl_steps": len(entropy), "entropy_end": entropy[-1]})
    )


@pytest.fixture
def sweep(tmp_path) -> Path:
    s = tmp_path / "multirun" / "2026-01-01" / "10-00-00"
    for i, (ent, over) in enumerate([("none", [1.0, 0.8, 0.5]), ("adaptive", [1.0, 0.95, 0.9])]):
        _run(
            s / str(i),
            ["+sweep=tiny_x", f"entropy={ent}", "temperature=t1_0"],
            over,
            {1: 0.3 + i / 10, 2: 0.5},
        )
    _run(s / "10", ["+sweep=tiny_x", "entropy=fixed", "temperature=t1_0"], [1.0], {1: 0.2, 2: 0.4})
    return s


def test_runs_load_in_job_order_named_by_overrides(sweep):
    runs = analysis.load_runs(sweep)
    assert [r.path.name for r in runs] == ["0", "1", "10"]  # numeric, not lexical
    assert [r.name for r in runs] == [
        "entropy=none,temperature=t1_0",
        "entropy=adaptive,temperature=t1_0",
        "entropy=fixed,temperature=t1_0",
    ]
    assert runs[0].config["algo"]["n"] == 4 and runs[0].summary["rl_steps"] == 3


def test_frames(sweep):
    runs = analysis.load_runs(sweep)
    rl = analysis.rl_frame(runs)
    assert len(rl) == 3 + 3 + 1 and "sft/loss" not in rl.dropna(axis=1, how="all")
    assert rl[rl["run"] == runs[0].name]["actor/entropy"].tolist() == [1.0, 0.8, 0.5]
    ev = analysis.eval_frame(runs)
    first = ev[ev["run"] == runs[0].name]
    assert first[first["rl_step"] == 0][["k", "pass@k"]].values.tolist() == [[1, 0.1], [2, 0.2]]
    assert first[first["rl_step"] == 3][["k", "pass@k"]].values.tolist() == [[1, 0.3], [2, 0.5]]
    summ = analysis.summary_frame(runs)
    assert summ["entropy"].tolist() == ["none", "adaptive", "fixed"] and "sweep" not in summ
    assert summ["entropy_end"].tolist() == [0.5, 0.9, 1.0]


def test_wandb_identity_and_tables_come_from_the_run_directory(sweep):
    run0 = sweep / "0"
    (run0 / "wandb_run.json").write_text(
        json.dumps(
            {
                "id": "x1",
                "name": "entropy=none,temperature=t1_0",
                "group": "tiny_x",
                "mode": "offline",
                "dir": str(run0 / "wandb" / "offline-run-1-x1"),
            }
        )
    )
    (run0 / "tables").mkdir()
    (run0 / "tables" / "actor.entropy_hist.jsonl").write_text(
        "".join(
            json.dumps({"step": 2 + i, "edges": [0.0, 0.5, 1.0], "counts": [i, 3 - i]}) + "\n"
            for i in range(3)
        )
    )
    runs = analysis.load_runs(sweep)
    assert (
        runs[0].wandb["group"] == "tiny_x" and runs[0].wandb["id"] == "x1" and runs[1].wandb == {}
    )
    hist = analysis.load_table(runs[0], "actor/entropy_hist")
    assert hist["step"].tolist() == [2, 3, 4] and hist["counts"].tolist() == [
        [0, 3],
        [1, 2],
        [2, 1],
    ]
    assert analysis.load_table(runs[1], "samples/completions").empty
    assert not hasattr(
        analysis, "load_wandb_offline"
    )  # W&B's .wandb record files are private: not parsed


def test_latest_sweep_and_errors(sweep, tmp_path):
    older = tmp_path / "multirun" / "2025-12-31" / "09-00-00"
    _run(older / "0", ["algo.n=2"], [1.0], {1: 0.1})
    os.utime(older, (0, 0))
    assert analysis.latest_sweep(tmp_path / "multirun") == sweep
    with pytest.raises(FileNotFoundError):
        analysis.load_runs(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError):
        analysis.latest_sweep(tmp_path / "nothing")


class _FakeRun:
    def __init__(self, name, rows):
        self.name, self._rows = name, rows
        self.summary, self.config = {"actor/entropy": rows[-1]["actor/entropy"]}, {"algo": {"n": 4}}

    def scan_history(self):
        return iter(self._rows)


class _FakeApi:
    def __init__(self):
        self.calls = []

    def runs(self, path, filters=None):
        self.calls.append((path, filters))
        return [
            _FakeRun(
                "entropy=none",
                [
                    {"_step": 1, "train/rl_step": 0, "actor/entropy": 1.0},
                    {
                        "_step": 2,
                        "train/rl_step": 1,
                        "actor/entropy": 0.7,
                        "val/aime24/pass@1": 0.2,
                    },
                ],
            )
        ]


def test_wandb_api_runs_become_the_same_frames():
    api = _FakeApi()
    runs = analysis.load_wandb_api("me/skyexp", group="entropy_collapse", api=api)
    assert api.calls == [("me/skyexp", {"group": "entropy_collapse"})]
    assert runs[0].wandb["name"] == "entropy=none" and runs[0].wandb["mode"] == "online"
    rl = analysis.rl_frame(runs)
    assert rl["actor/entropy"].tolist() == [1.0, 0.7] and rl["step"].tolist() == [1, 2]
    ev = analysis.eval_frame(runs)
    assert ev[["benchmark", "k", "pass@k", "rl_step"]].values.tolist() == [["aime24", 1, 0.2, 1]]
