"""The pinned trajectory: the tiny default's SFT and RL metrics at trainer.deterministic=true and
one
thread equal the committed tests/e2e/trajectory.json at 1e-6 relative, timings excluded.

A deliberate change of the numbers is regenerated, and committed, with
`.venv/bin/python -m tests.e2e.pin_trajectory --regenerate` (see tests/e2e/pin_trajectory.py)."""

from __future__ import annotations

import json

from pin_trajectory import OVERRIDES, PINNED, differences, trajectory


def test_the_tiny_default_follows_its_pinned_trajectory(tmp_path):
    pinned = json.loads(PINNED.read_text())
    assert pinned["overrides"] == OVERRIDES, "OVERRIDES changed: regenerate the pinned trajectory"
    rows = pinned["rows"]
    assert [("sft/loss" in r, "actor/pg_loss" in r) for r in rows].count(
        (True, False)
    ) >= 2  # SFT steps
    assert [("sft/loss" in r, "actor/pg_loss" in r) for r in rows].count(
        (False, True)
    ) >= 2  # RL steps
    diff = differences(trajectory(tmp_path), rows)
    assert not diff, (
        "the run left its pinned trajectory (regenerate on purpose: "
        "`.venv/bin/python -m tests.e2e.pin_trajectory --regenerate`):\n" + "\n".join(diff[:40])
    )
