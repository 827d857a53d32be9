"""`python -m skyexp.findings` on a real tiny sweep."""

from __future__ import annotations

import math

import pytest

from skyexp.analysis.findings.__main__ import main
from skyexp.analysis.findings.runs import load_records


@pytest.mark.slow
def test_command_on_a_real_tiny_sweep(tmp_path):
    """findings_base as a user runs it, shrunk (2 seeds x 2 RL steps, 4 problems x 4 samples, the
    untrained tiny model), then the findings command over its directory."""
    from conftest import run_skyexp

    tiny = [
        "context.stages.0.steps=2",
        "algo.batch_size=4",
        "algo.n=2",
        "eval.size=4",
        "eval.n=4",
        "eval.every=1",
        "trainer.seed=1,2",
        "trainer.micro_batch_size=8",
        "logger.mode=disabled",
        "trainer.threads=1",
    ]
    r = run_skyexp(["-m", "+sweep=findings_base", *tiny], tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    (sweep,) = list((tmp_path / "out").glob("*/*"))
    recs = load_records([sweep])
    assert sorted(r.seed for r in recs) == [1, 2] and all(
        sorted(r.evals) == [0, 1, 2] for r in recs
    )
    assert all(
        math.isfinite(e.entropy) for r in recs for e in r.evals.values()
    )  # val/arith/entropy at T = 1
    assert all((r.path / "passk_over_training.png").exists() for r in recs)
    out = tmp_path / "docs" / "findings.md"
    assert main([str(sweep), "--out", str(out)]) == 0
    assert "## F1" in out.read_text() and (out.parent / "findings" / "f1_f2_passk.png").exists()
