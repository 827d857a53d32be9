"""The guard for runs that train nothing (skyexp.rl.idle)."""

from __future__ import annotations

import logging

from skyexp.rl.idle import check_idle, idle_streak

IDLE = {"train/rl_step": 4, "actor/optimizer_steps": 0, "batch/kept_groups": 0.0}
IDLE |= {"batch/solve_none": 1.0, "batch/solve_all": 0.0}


def test_the_streak_counts_steps_without_an_optimizer_step():
    assert idle_streak(2, IDLE) == 3
    assert idle_streak(2, {**IDLE, "actor/optimizer_steps": 1}) == 0


def test_a_warning_says_why_then_a_stop_when_configured(caplog):
    with caplog.at_level(logging.WARNING, logger="skyexp"):
        assert check_idle(3, IDLE, max_idle=5, stop=False) == (4, None)
        assert not caplog.records
        assert check_idle(4, IDLE, max_idle=5, stop=False) == (5, None)
    (rec,) = caplog.records
    assert "5 RL steps in a row made 0 optimizer steps" in rec.message
    assert "every group was filtered out" in rec.message
    assert "solved by no sample: 100%" in rec.message
    # warned again every max_idle steps while it lasts, not every step
    assert check_idle(5, IDLE, max_idle=5, stop=False) == (6, None) and len(caplog.records) == 1
    streak, stop = check_idle(4, IDLE, max_idle=5, stop=True)
    assert streak == 5 and "trainer.stop_idle=true: stopping" in stop
    assert check_idle(99, IDLE, max_idle=0, stop=True) == (100, None)  # 0: off
