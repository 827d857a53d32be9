"""Every tiny_ experiment runs, its stages in order with their caps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_experiments import REAL, typed

TINY_RUN = [
    "sft.steps=4",
    "sft.batch_size=8",
    "algo.batch_size=4",
    "eval.size=4",
    "eval.n=2",
    "eval.max_response_len=16",
    "logger=local",
    "logger.progress=false",
    "trainer.save_final=false",
    "trainer.micro_batch_size=16",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL)
def test_tiny_experiment_runs(name, tmp_path):
    """Each tiny_ recipe with every stage cut to one step: the stages run in order, with their
    caps."""
    from skyexp.train import train

    base = typed([f"+experiment=tiny_{name}"])
    cut = [f"context.stages.{i}.steps=1" for i in range(len(base.context.stages))]
    cfg = typed([f"+experiment=tiny_{name}", *TINY_RUN, *cut, f"algo.n={min(base.algo.n, 4)}"])
    summary = train(cfg, tmp_path)
    assert summary["rl_steps"] == len(base.context.stages)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rows if "actor/pg_loss" in r]
    assert [r["train/stage"] for r in rl] == list(range(len(base.context.stages)))
    caps = [s.max_response_len for s in base.context.stages]
    assert all(r["response_length/max"] <= cap for r, cap in zip(rl, caps))
    assert any("val/arith/pass@1" in r for r in rows) and "pass@2_after" in summary
    assert Path(tmp_path / "summary.json").exists()
