"""Eval outputs: the console table, summary.json and PNG, and W&B failures that must not stop
anything."""

from __future__ import annotations

import json

from skyexp.config import EvalConfig
from skyexp.evaluation import report
from skyexp.evaluation.estimators import EvalResult


def _results():
    sample = {
        "text": "\\boxed{1}",
        "extracted": "1",
        "score": 1.0,
        "status": "ok",
        "length": 3,
        "truncated": False,
    }
    rec = {
        "id": "p0",
        "problem": "1?",
        "answer": "1",
        "correct": 1,
        "votes": [],
        "samples": [sample, {**sample, "score": 0.0}],
    }
    res = EvalResult(
        name="b",
        n=2,
        correct=[1],
        records=[rec],
        wrong_groups=[[1]],
        scores=[[1.0, 0.0]],
        seconds=2.0,
    )
    return [
        ("before", EvalConfig(name="b", n=2, log_samples=1), res),
        ("after", EvalConfig(name="b", n=2), res),
    ]


def test_summary_table_and_files(tmp_path):
    results = _results()
    s = report.summarise(results, ["before", "after"], ["/a", "/b"], 3.0)
    row = s["results"][0]
    # n=2, one problem with 1 correct: mean@2 = pass@1 = 0.5, pass@2 = 1; maj@2: the two samples
    # (correct, one wrong group) tie, so 1/2
    assert row["mean@2"] == 0.5 and row["pass@k"] == {1: 0.5, 2: 1.0} and row["maj@k"][2] == 0.5
    assert row["samples_per_s"] == 1.0 and row["checkpoint"] == "before"
    text = report.table(s)
    assert text.splitlines()[0].split()[:4] == ["benchmark", "checkpoint", "problems", "n"]
    assert "0.5000" in text and len(text.splitlines()) == 4
    report.write(tmp_path, s, results)
    assert json.loads((tmp_path / "summary.json").read_text())["checkpoints"] == {
        "before": "/a",
        "after": "/b",
    }
    assert (tmp_path / "passk.png").stat().st_size > 1000


class _BrokenRun:
    def log(self, *_a, **_k):
        raise RuntimeError("network down")


class _Sink:
    def __init__(self):
        import wandb

        self.wandb, self.run = wandb, _BrokenRun()


class _Logger:
    sinks = [_Sink()]


def test_wandb_failures_never_raise(caplog):
    report.log_wandb(_Logger(), _results())  # must not raise
    assert "W&B curve/table logging failed" in caplog.text
    report.log_wandb(object(), _results())  # no W&B sink at all: nothing to do


def test_sample_rows_respect_the_limit():
    label, e, res = _results()[0]
    assert len(report.sample_rows(label, e, res)) == 1  # log_samples=1
