"""Logging through `python -m skyexp`: a W&B failure never stops a run; a single run is named and
grouped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import only_run_dir, run_skyexp, tiny

from skyexp.cli import run_name_from_overrides
from skyexp.tracking import (
    RUN_FILE,
)

# W&B (offline) is what these tests are about: logger=default, not the overlay's local logger
TINY = tiny(
    "logger=default", "algo.n=2", "context.stages.0.max_response_len=8", "trainer.save_final=false"
)


@pytest.mark.slow
@pytest.mark.parametrize("bad", ["settings", "dir"])
def test_cli_run_survives_wandb_init_failure(tmp_path, bad):
    """Acceptance: invalid W&B settings or an unwritable W&B dir leave training running and
    metrics.jsonl complete."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    arg = (
        "+logger.settings.no_such_setting=1" if bad == "settings" else f"logger.dir={blocker}/wandb"
    )
    r = run_skyexp(TINY + [arg], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (r.stdout + r.stderr).count("W&B disabled for this run") == 1
    run_dir = only_run_dir(tmp_path)
    rl = [
        json.loads(x)
        for x in (run_dir / "metrics.jsonl").read_text().splitlines()
        if "actor/pg_loss" in x
    ]
    assert [x["train/rl_step"] for x in rl] == [0, 1]
    assert json.loads((run_dir / "summary.json").read_text())["rl_steps"] == 2
    assert not list(run_dir.rglob("offline-run-*"))


@pytest.mark.slow
def test_cli_names_and_groups_a_single_run(tmp_path):
    """A run outside any sweep gets a W&B name (what its command line changed) and a group (its
    recipe), and its run directory says which W&B run it is."""
    r = run_skyexp(TINY, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads((only_run_dir(tmp_path) / RUN_FILE).read_text())
    assert (
        info["name"] == run_name_from_overrides(TINY)
        and info["group"] == "tiny-arith-rloo"
        and info["mode"] == "offline"
    )
    assert Path(info["dir"]).is_dir()
