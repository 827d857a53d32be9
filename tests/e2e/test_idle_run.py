"""A run that trains nothing says so, and stops when asked (trainer.max_idle_steps, stop_idle)."""

from __future__ import annotations

from conftest import run_skyexp, tiny


def test_an_untrained_model_behind_a_group_filter_stops_with_why(tmp_path):
    # no SFT: the untrained tiny model answers nothing, every reward is 0, the filter drops every
    # group, so no RL step makes an optimizer step
    args = tiny(
        "algo.filter_groups=zero_variance",
        "context.stages.0.steps=4",
        "trainer.max_idle_steps=2",
        "trainer.stop_idle=true",
    )
    r = run_skyexp(args, tmp_path)
    assert r.returncode == 4, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "RL step 1: 2 RL steps in a row made 0 optimizer steps" in out
    assert "every group was filtered out" in out and "trainer.stop_idle=true: stopping" in out
    assert "step:2" not in out  # stopped after the second step
