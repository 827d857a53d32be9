"""SFT off a terminal: one greppable line every logger.line_every_sft steps (about 20 per stage by
default), in the RL step lines' form; on a terminal the bar instead."""

from __future__ import annotations

import logging
import re

from conftest import run_skyexp

from skyexp.rl.sft import SftLines, line_every

LINE = re.compile(
    r"sft step:(\d+) - progress:(\d+)/(\d+) - sft/loss:[\d.e+-]+ - sft/lr:[\d.e+-]+ - "
    r"sft/grad_norm:[\d.e+-]+ - perf/tokens_per_s:\d+ - eta_s:\d+$"
)


def test_about_twenty_lines_per_stage_by_default():
    assert line_every(-1, 500) == 25
    assert line_every(-1, 7) == 1
    assert line_every(0, 500) == 0 and line_every(10, 500) == 10


def test_lines_at_the_first_every_nth_and_last_step(caplog):
    lines = SftLines(steps=50, every=10)
    with caplog.at_level(logging.INFO, logger="skyexp"):
        for step in range(50):
            lines.after(
                step,
                {"sft/loss": 1.5 - step / 100, "sft/lr": 2e-3, "sft/grad_norm": 0.75},
                tokens=1000,
            )
    msgs = [r.getMessage() for r in caplog.records]
    assert [int(LINE.search(m)[1]) for m in msgs] == [0, 10, 20, 30, 40, 49]
    assert all(LINE.search(m) for m in msgs), msgs
    assert "progress:50/50" in msgs[-1] and msgs[-1].endswith("eta_s:0")
    caplog.clear()
    quiet = SftLines(steps=50, every=0)  # on a terminal (the bar) or logger.line_every_sft=0
    with caplog.at_level(logging.INFO, logger="skyexp"):
        for step in range(50):
            quiet.after(step, {"sft/loss": 1.0}, tokens=10)
    assert not caplog.records


def test_a_run_in_a_log_file_prints_sft_lines(tmp_path):
    """A real run with its output captured (not a terminal): 40 SFT steps print 21 lines
    (steps 0, 2, ..., 38 and 39), with the loss and lr of metrics.jsonl's rows."""
    r = run_skyexp(
        [
            "sft.steps=40",
            "sft.batch_size=8",
            "sft.cache=false",
            "eval.before=false",
            "eval.after=false",
            "context.stages=[{steps:1,max_response_len:16}]",
            "algo.n=2",
            "algo.batch_size=4",
            "trainer.threads=1",
            "logger.backends=[jsonl,console]",
            "trainer.save_final=false",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    steps = [int(m[1]) for m in re.finditer(r"sft step:(\d+) - progress:\d+/40 ", out)]
    assert steps == list(range(0, 40, 2)) + [39], out[-3000:]
    assert all(LINE.search(line) for line in out.splitlines() if "sft step:" in line)
    assert "\r" not in out  # no bar redraws in a log file
