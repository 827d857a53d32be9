"""W&B and local logging: what a dashboard gets (the calls W&B receives, and the run it reports
back in wandb_run.json), the local record, step lines off a terminal, and that a W&B failure never
stops a run."""

from __future__ import annotations

import io
import json
import logging
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from skyexp.cli import run_identity
from skyexp.config import LoggerConfig
from skyexp.config.overrides import run_name_from_overrides
from skyexp.tracking import (
    RUN_FILE,
    JsonlLogger,
    LinePlot,
    Table,
    WandbLogger,
    git_commit,
    line_due,
    make_logger,
    step_line,
    use_bars,
)


def test_run_name_is_the_overrides_without_sweep_and_hydra_settings():
    assert (
        run_name_from_overrides(["temperature=t1_0", "entropy=adaptive", "+sweep=tiny_kl"])
        == "entropy=adaptive,temperature=t1_0"
    )
    assert run_name_from_overrides(["+experiment=dapo", "hydra.run.dir=/x"]) is None
    assert run_name_from_overrides(["+logger.tags=[a,b]", "~eval"]) == "+logger.tags=[a,b],~eval"


def test_single_runs_get_a_wandb_name_and_group():
    recipe = "tiny-arith-rloo"
    assert run_identity([], None, None, recipe) == (
        "default",
        recipe,
    )  # was an empty name and group
    assert run_identity(["algo.n=4", "hydra.run.dir=x"], None, None, recipe) == ("algo.n=4", recipe)
    assert run_identity(["+experiment=dapo"], None, None, recipe) == ("dapo", "dapo")
    assert run_identity(["+experiment=dapo", "algo.n=4"], None, None, recipe) == (
        "algo.n=4",
        "dapo",
    )
    assert run_identity(["+sweep=tiny_kl", "algo.kl_coef=0.1"], None, "tiny_kl", recipe) == (
        "algo.kl_coef=0.1",
        "tiny_kl",
    )
    assert run_identity(["algo.n=4"], "mine", "g", recipe) == (
        "mine",
        "g",
    )  # logger.run_name / group win


def test_git_commit_is_head():
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    assert git_commit().split("-")[0] == head
    assert (
        git_commit(ROOT.parent.parent) is None or len(git_commit(ROOT.parent.parent)) >= 40
    )  # outside the repo: no crash


def test_jsonl_writes_scalars_per_step_and_tables_beside(tmp_path):
    lg = JsonlLogger(tmp_path / "metrics.jsonl")
    lg.log(
        {
            "a/x": 1.5,
            "a/t": torch.tensor(2.0),
            "a/hist": torch.rand(10),
            "a/nan": float("nan"),
            "samples/completions": Table(["p", "c"], [["1+1", "2"], ["2+2", "5"]]),
            "c": LinePlot([1], [0.5], "k", "p", "t"),
        },
        3,
    )
    lg.close()
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row == {"step": 3, "a/x": 1.5, "a/t": 2.0, "a/nan": None}
    rows = [
        json.loads(x)
        for x in (tmp_path / "tables" / "samples.completions.jsonl").read_text().splitlines()
    ]
    assert rows == [{"step": 3, "p": "1+1", "c": "2"}, {"step": 3, "p": "2+2", "c": "5"}]


def _cfg(tmp_path, **kw) -> LoggerConfig:
    return LoggerConfig(
        **{
            "group": "g1",
            "run_name": "algo.n=4",
            "job_type": "sweep",
            "tags": ["t1"],
            "notes": "hello",
            "project": "p1",
            "dir": str(tmp_path / "wb"),
            **kw,
        }
    )


class _Recorder:
    """Stands in for the wandb.Run that wandb.init returns: records what skyexp sends W&B."""

    id, entity, url = "abc123", "", None

    def __init__(self, **kw):
        self.kw, self.defined, self.rows, self.finished = kw, {}, [], False
        self.name, self.group, self.project, self.job_type, self.tags = (
            kw["name"],
            kw["group"],
            kw["project"],
            kw["job_type"],
            tuple(kw["tags"]),
        )
        self.dir = str(Path(kw["dir"]) / "wandb" / "offline-run-x" / "files")

    def define_metric(self, name, step_metric=None):
        self.defined[name] = step_metric

    def log(self, data, step):
        self.rows.append((step, data))

    def finish(self):
        self.finished = True


def test_wandb_gets_group_name_step_metrics_and_media(tmp_path, monkeypatch):
    import wandb

    runs = []
    monkeypatch.setattr(wandb, "init", lambda **kw: runs.append(_Recorder(**kw)) or runs[-1])
    lg = WandbLogger(_cfg(tmp_path), tmp_path, {"algo": {"n": 4}, "git_commit": "abc"})
    lg.log({"sft/step": 0, "sft/loss": 1.0}, 0)
    for s in range(2):
        lg.log(
            {
                "train/rl_step": s,
                "actor/entropy": 1.0 - s / 10,
                "actor/entropy_hist": torch.rand(50),
                "samples/completions": Table(["prompt", "completion"], [["q", "a"]]),
            },
            1 + s,
        )
    lg.log(
        {
            "train/rl_step": 2,
            "val/arith/pass@1": 0.5,
            "val/arith/pass@k_curve/after": LinePlot([1, 2], [0.5, 0.7], "k", "pass@k", "t"),
            "val/bad": float("nan"),
        },
        3,
    )
    lg.close()
    (run,) = runs
    assert {
        k: run.kw[k] for k in ("group", "name", "job_type", "tags", "notes", "project", "mode")
    } == {
        "group": "g1",
        "name": "algo.n=4",
        "job_type": "sweep",
        "tags": ["t1"],
        "notes": "hello",
        "project": "p1",
        "mode": "offline",
    }
    assert run.kw["config"] == {"algo": {"n": 4}, "git_commit": "abc"} and run.finished
    d = run.defined
    assert (
        d["actor/*"] == d["val/*"] == d["samples/*"] == "train/rl_step"
        and d["sft/*"] == "sft/step"
    )
    assert run.rows[0][1]["sft/step"] == 0  # the SFT step's own number travels with its row
    assert "train/*" not in d  # would re-plot the step keys against themselves
    assert [step for step, _ in run.rows] == [0, 1, 2, 3]
    step1 = run.rows[1][1]
    assert (
        isinstance(step1["actor/entropy_hist"], wandb.Histogram)
        and len(step1["actor/entropy_hist"].histogram) == 64
    )
    assert isinstance(step1["samples/completions"], wandb.Table) and step1["train/global_step"] == 1
    last = run.rows[3][1]
    assert (
        last["val/arith/pass@1"] == 0.5 and "val/bad" not in last
    )  # W&B rejects NaN: dropped, not sent
    assert type(last["val/arith/pass@k_curve/after"]).__name__ == "CustomChart"
    info = json.loads((tmp_path / RUN_FILE).read_text())  # which W&B run this run directory is
    assert (
        info["id"] == "abc123"
        and info["name"] == "algo.n=4"
        and info["group"] == "g1"
        and info["mode"] == "offline"
    )
    assert info["dir"].endswith("offline-run-x")


def test_real_offline_wandb_run_reports_itself(tmp_path, monkeypatch):
    """With the real wandb (offline): the run directory names the W&B run and where `wandb sync`
    finds it."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    lg = WandbLogger(_cfg(tmp_path), tmp_path, {"algo": {"n": 4}})
    assert lg.run is not None
    lg.log({"train/rl_step": 0, "actor/entropy": 1.0}, 0)
    lg.close()
    info = json.loads((tmp_path / RUN_FILE).read_text())
    assert {k: info[k] for k in ("name", "group", "project", "job_type", "tags", "mode")} == {
        "name": "algo.n=4",
        "group": "g1",
        "project": "p1",
        "job_type": "sweep",
        "tags": ["t1"],
        "mode": "offline",
    }
    run_files = Path(info["dir"])
    assert (
        run_files.is_dir()
        and run_files.name.startswith("offline-run-")
        and run_files.name.endswith(info["id"])
    )


def test_histograms_are_kept_locally_as_bins(tmp_path):
    lg = JsonlLogger(tmp_path / "metrics.jsonl")
    lg.log(
        {
            "train/rl_step": 0,
            "actor/entropy_hist": torch.tensor([0.0, 1.0, 1.0, float("inf")] + [0.5] * 4),
        },
        7,
    )
    lg.close()
    (row,) = [
        json.loads(x)
        for x in (tmp_path / "tables" / "actor.entropy_hist.jsonl").read_text().splitlines()
    ]
    assert (
        row["step"] == 7 and len(row["edges"]) == 65 and sum(row["counts"]) == 7
    )  # the infinite value is left out
    assert row["edges"][0] == 0.0 and row["edges"][-1] == 1.0 and row["counts"][32] == 4


def test_step_line_reads_in_a_file():
    m = {
        "train/rl_step": 12,
        "train/stage": 1,
        "critic/score/mean": 0.53125,
        "batch/pass@1": 0.52,
        "actor/entropy": 0.11234,
        "timing_s/step": 1.4234,
        "perf/throughput": 9812.4,
        "actor/pg_loss": 0.3,
        "actor/entropy_hist": torch.rand(5),
        "samples/completions": Table(["a"], [["b"]]),
    }
    assert step_line(m, 150) == (
        "step:12 - progress:13/150 - train/stage:1 - critic/score/mean:0.5312 - batch/pass@1:0.52 "
        "- "
        "actor/entropy:0.1123 - timing_s/step:1.423 - perf/throughput:9812"
    )
    evaluated = step_line(
        {**m, "val/arith/pass@1": 0.61, "val/arith/pass@4": 0.8, "actor/entropy": float("nan")}
    )
    assert evaluated.startswith("step:12 - train/stage:1") and evaluated.endswith(
        "perf/throughput:9812 - val/arith/pass@1:0.61"
    )
    assert "actor/entropy" not in evaluated and "\r" not in evaluated and "\n" not in evaluated
    assert step_line({"train/rl_step": 0}) == "step:0"


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_bars_only_on_a_terminal_and_lines_otherwise():
    tty, file = _Stream(True), _Stream(False)
    assert use_bars(True, (tty, tty))
    assert not use_bars(True, (file, file))  # SLURM, nohup, CI
    assert not use_bars(True, (tty, file)) and not use_bars(
        True, (file, tty)
    )  # half redirected: lines in the file
    assert not use_bars(False, (tty, tty))
    assert [s for s in range(25) if line_due(1, s, bars=False)] == list(range(25))
    assert [s for s in range(25) if line_due(10, s, bars=False)] == [0, 10, 20]
    assert not any(line_due(1, s, bars=True) for s in range(5)) and not any(
        line_due(0, s, bars=False) for s in range(5)
    )


@pytest.mark.parametrize("bad", ["settings", "dir"])
def test_wandb_init_failure_is_logged_once_and_logging_continues(
    tmp_path, monkeypatch, caplog, bad
):
    monkeypatch.setenv("WANDB_MODE", "offline")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    kw = (
        {"settings": {"no_such_setting": 1}}
        if bad == "settings"
        else {"dir": str(blocker / "wandb")}
    )
    with caplog.at_level(logging.WARNING, logger="skyexp"):
        lg = make_logger(_cfg(tmp_path, **kw), tmp_path, {}, is_main=True)
        for s in range(3):
            lg.log(
                {"train/rl_step": s, "actor/entropy": 1.0, "actor/entropy_hist": torch.rand(5)}, s
            )
        lg.close()
    assert [type(s).__name__ for s in lg.sinks] == ["JsonlLogger", "ConsoleLogger", "WandbLogger"]
    assert lg.sinks[2].run is None
    warnings = [r.getMessage() for r in caplog.records if "W&B" in r.getMessage()]
    assert len(warnings) == 1 and "W&B disabled" in warnings[0]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3
