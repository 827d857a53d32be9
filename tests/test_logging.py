"""W&B and local logging: what a dashboard gets (read back from the offline run file), and that
a W&B failure never stops a run."""

from __future__ import annotations

import json
import logging
import subprocess
import time

import pytest
import torch
from conftest import ROOT, only_run_dir, run_skyexp

from skyexp.analysis import load_wandb_offline
from skyexp.cli import run_name_from_overrides
from skyexp.config import LoggerConfig
from skyexp.tracking import (
    JsonlLogger,
    LinePlot,
    Table,
    WandbLogger,
    git_commit,
    make_logger,
)


def wait_for_wandb_files(path, count: int, timeout: float = 60.0):
    """W&B offline runs under path once all `count` are complete: run.finish() returns before
    W&B's service process has written the file out."""
    deadline = time.monotonic() + timeout
    while True:
        runs = load_wandb_offline(path)
        if (len(runs) == count and all(r.complete for r in runs)) or time.monotonic() > deadline:
            assert len(runs) == count and all(r.complete for r in runs), [(r.info, r.complete) for r in runs]
            return runs
        time.sleep(0.5)


def test_run_name_is_the_overrides_without_sweep_and_hydra_settings():
    assert run_name_from_overrides(["temperature=t1_0", "entropy=adaptive", "+sweep=tiny_kl"]) == "entropy=adaptive,temperature=t1_0"
    assert run_name_from_overrides(["+experiment=dapo", "hydra.run.dir=/x"]) is None
    assert run_name_from_overrides(["+logger.tags=[a,b]", "~eval"]) == "+logger.tags=[a,b],~eval"


def test_git_commit_is_head():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert git_commit().split("-")[0] == head
    assert git_commit(ROOT.parent.parent) is None or len(git_commit(ROOT.parent.parent)) >= 40  # outside the repo: no crash


def test_jsonl_writes_scalars_per_step_and_tables_beside(tmp_path):
    lg = JsonlLogger(tmp_path / "metrics.jsonl")
    lg.log({"a/x": 1.5, "a/t": torch.tensor(2.0), "a/hist": torch.rand(10), "a/nan": float("nan"),
            "samples/completions": Table(["p", "c"], [["1+1", "2"], ["2+2", "5"]]), "c": LinePlot([1], [0.5], "k", "p", "t")}, 3)
    lg.close()
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row == {"step": 3, "a/x": 1.5, "a/t": 2.0, "a/nan": None}
    rows = [json.loads(x) for x in (tmp_path / "tables" / "samples.completions.jsonl").read_text().splitlines()]
    assert rows == [{"step": 3, "p": "1+1", "c": "2"}, {"step": 3, "p": "2+2", "c": "5"}]


def _cfg(tmp_path, **kw) -> LoggerConfig:
    return LoggerConfig(**{"group": "g1", "run_name": "algo.n=4", "job_type": "sweep", "tags": ["t1"], "notes": "hello",
                           "project": "p1", "dir": str(tmp_path / "wb"), **kw})


def test_wandb_offline_run_carries_group_name_metrics_and_media(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    lg = WandbLogger(_cfg(tmp_path), tmp_path, {"algo": {"n": 4}, "git_commit": "abc"})
    assert lg.run is not None
    lg.log({"sft/loss": 1.0}, 0)
    for s in range(2):
        lg.log({"train/rl_step": s, "actor/entropy": 1.0 - s / 10, "actor/entropy_hist": torch.rand(50),
                "samples/completions": Table(["prompt", "completion"], [["q", "a"]])}, 1 + s)
    lg.log({"train/rl_step": 2, "val/arith/pass@1": 0.5, "val/arith/pass@k_curve/after": LinePlot([1, 2], [0.5, 0.7], "k", "pass@k", "t")}, 3)
    lg.close()
    (run,) = wait_for_wandb_files(tmp_path / "wb", 1)
    assert {k: run.info[k] for k in ("group", "name", "job_type", "tags", "notes", "project")} == {
        "group": "g1", "name": "algo.n=4", "job_type": "sweep", "tags": ["t1"], "notes": "hello", "project": "p1"}
    assert run.config["algo"] == {"n": 4} and run.config["git_commit"] == "abc"
    d = run.metrics_defined
    assert d["actor/*"] == d["val/*"] == d["samples/*"] == "train/rl_step" and d["sft/*"] == "train/global_step"
    assert "train/*" not in d  # would re-plot the step keys against themselves
    assert {"actor/entropy_hist:histogram", "samples/completions:table-file",
            "val/arith/pass@k_curve/after_table:table-file"} <= set(run.media)
    h = run.history
    assert h["actor/entropy"].dropna().tolist() == pytest.approx([1.0, 0.9]) and h["val/arith/pass@1"].dropna().tolist() == [0.5]


@pytest.mark.parametrize("bad", ["settings", "dir"])
def test_wandb_init_failure_is_logged_once_and_logging_continues(tmp_path, monkeypatch, caplog, bad):
    monkeypatch.setenv("WANDB_MODE", "offline")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    kw = {"settings": {"no_such_setting": 1}} if bad == "settings" else {"dir": str(blocker / "wandb")}
    with caplog.at_level(logging.WARNING, logger="skyexp"):
        lg = make_logger(_cfg(tmp_path, **kw), tmp_path, {}, is_main=True)
        for s in range(3):
            lg.log({"train/rl_step": s, "actor/entropy": 1.0, "actor/entropy_hist": torch.rand(5)}, s)
        lg.close()
    assert [type(s).__name__ for s in lg.sinks] == ["JsonlLogger", "ConsoleLogger", "WandbLogger"]
    assert lg.sinks[2].run is None
    warnings = [r.getMessage() for r in caplog.records if "W&B" in r.getMessage()]
    assert len(warnings) == 1 and "W&B disabled" in warnings[0]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


TINY = ["sft=none", "context.stages.0.steps=2", "algo.batch_size=4", "algo.n=2", "context.stages.0.max_response_len=8",
        "eval.before=false", "eval.after=false", "logger.progress=false", "trainer.save_final=false"]


@pytest.mark.slow
@pytest.mark.parametrize("bad", ["settings", "dir"])
def test_cli_run_survives_wandb_init_failure(tmp_path, bad):
    """Acceptance: invalid W&B settings or an unwritable W&B dir leave training running and
    metrics.jsonl complete."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    arg = "+logger.settings.no_such_setting=1" if bad == "settings" else f"logger.dir={blocker}/wandb"
    r = run_skyexp(TINY + [arg], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (r.stdout + r.stderr).count("W&B disabled for this run") == 1
    run_dir = only_run_dir(tmp_path)
    rl = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if "actor/pg_loss" in x]
    assert [x["train/rl_step"] for x in rl] == [0, 1]
    assert json.loads((run_dir / "summary.json").read_text())["rl_steps"] == 2
    assert not list(run_dir.rglob("offline-run-*"))
