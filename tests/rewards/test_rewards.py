"""Scoring: extraction, math-verify verdicts, and the pool's guarantees against hangs and
crashes."""

from __future__ import annotations

import os
import signal
import time

import pytest

from skyexp.config import RewardConfig
from skyexp.rewards import MathVerifyReward
from skyexp.rewards.extract import fast_verdict, last_boxed
from skyexp.rewards.pool import ScoringPool


def test_last_boxed():
    assert last_boxed("so \\boxed{1} then \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{a{b}c}") == "a{b}c"
    assert last_boxed("no answer") is None
    assert last_boxed("\\boxed{12") is None
    assert last_boxed("\\boxed{7} and broken \\boxed{") == "7"
    assert last_boxed("\\fbox{3}") == "3"


def test_fast_verdict():
    assert fast_verdict("58", "58") == 1.0
    assert fast_verdict(" 058 ", "58") == 1.0
    assert fast_verdict("57", "58") == 0.0
    assert fast_verdict("\\frac{1}{2}", "0.5") is None  # needs the symbolic check


@pytest.fixture(scope="module")
def reward():
    r = MathVerifyReward(RewardConfig(workers=1, timeout_s=3.0))
    yield r
    r.close()


def test_math_verify_verdicts(reward):
    texts = [
        "... \\boxed{\\frac{1}{2}}",
        "\\boxed{50\\%}",
        "\\boxed{1/3}",
        "\\boxed{x^2+2x+1}",
        "nothing",
        "\\boxed{58}",
    ]
    golds = ["0.5", "0.5", "0.333", "(x+1)^2", "1", "58"]
    s = reward.score(texts, golds)
    assert s.scores == [1.0, 0.0, 0.0, 1.0, 0.0, 1.0]  # known verdicts, see ENV.md
    assert s.extracted[4] is None and s.status == ["ok"] * 6


def test_pathological_answers_score_zero_in_bounded_time(reward):
    towers = [
        "\\boxed{" + "9^" * 40 + "9}",
        "\\boxed{2^{2^{2^{2^{2^{2^{2^{2}}}}}}}}",
        "\\boxed{10^{10^{10^{10}}}}",
    ]
    huge = ["\\boxed{" + "1+" * 20000 + "1}", "\\boxed{" + "x" * 100_000 + "}"]  # 40 kB, 100 kB
    odd = [
        "\\boxed{" + "(" * 5000 + "}",
        "\\boxed{\x00\x07\x1b}",
        "\\boxed{" + "{" * 300 + "}",
    ]  # unbalanced, control chars
    t = time.monotonic()
    s = reward.score(towers + huge + odd, ["1"] * 8)
    assert time.monotonic() - t < 60
    assert s.scores == [0.0] * 8
    # a value no machine can compute hits the time limit (or the memory cap) and is counted
    assert all(st in ("timeout", "error") for st in s.status[:3]), s.status
    assert s.status[3:5] == [
        "error",
        "error",
    ]  # longer than max_answer_chars: rejected before scoring
    assert s.timeouts + s.errors >= 5


def _hang(pred, gold, soft):
    if pred == "hang":
        time.sleep(3600)
    return 1.0, "ok"


def _soft_or_hang(pred, gold, soft):
    if pred == "hang":
        time.sleep(3600)
    return (
        (0.0, "timeout") if pred == "slow" else (1.0, "ok")
    )  # "slow": math-verify's own limit fired


def test_timeout_warning_names_the_limit_that_fired(caplog):
    """math-verify's soft limit (timeout_s // 3 per parse/compare) and the pool's hard kill at
    timeout_s are different limits: the warning says which fired how often."""
    pool = ScoringPool(workers=2, timeout_s=3.0, target=_soft_or_hang)
    try:
        with caplog.at_level("WARNING", logger="skyexp.rewards.pool"):
            out = pool.verify([("slow", "1"), ("a", "1")])
            assert out == [(0.0, "timeout"), (1.0, "ok")]
            assert (
                "1 of 2 items timed out: 1 at math-verify's 1s parse/compare limit, 0 killed at "
                "the 3.0s hard limit"
                in caplog.text
            )
            caplog.clear()
            pool.verify([("slow", "1"), ("hang", "1"), ("b", "1")])
            assert (
                "2 of 3 items timed out: 1 at math-verify's 1s parse/compare limit, 1 killed at "
                "the 3.0s hard limit"
                in caplog.text
            )
    finally:
        pool.close()


def _crash(pred, gold, soft):
    if pred == "crash":
        os._exit(1)
    return 1.0, "ok"


def test_pool_times_out_only_the_hanging_item():
    pool = ScoringPool(workers=2, timeout_s=1.0, target=_hang)
    try:
        t = time.monotonic()
        out = pool.verify([("a", "1"), ("hang", "1"), ("b", "1"), ("c", "1"), ("d", "1")])
        assert time.monotonic() - t < 30
        assert out == [(1.0, "ok"), (0.0, "timeout"), (1.0, "ok"), (1.0, "ok"), (1.0, "ok")]
        assert pool.restarts >= 1
        assert pool.verify([("e", "1")]) == [(1.0, "ok")]  # the replaced pool works
    finally:
        pool.close()


def test_pool_survives_a_crashing_worker():
    pool = ScoringPool(workers=1, timeout_s=1.0, target=_crash)
    try:
        out = pool.verify([("crash", "1"), ("fine", "1")])
        assert out[0][0] == 0.0 and out[0][1] in ("timeout", "error")
        assert out[1] == (1.0, "ok")
    finally:
        pool.close()


def test_a_worker_killed_while_idle_is_replaced_and_sigterm_is_ignored():
    """SLURM and torchrun send SIGTERM to the whole process group: scoring workers ignore it (the
    trainer checkpoints and stops them). A worker killed while waiting for work is replaced."""
    pool = ScoringPool(workers=2, timeout_s=2.0, target=_hang)
    try:
        assert pool.verify([("a", "1"), ("b", "1")]) == [(1.0, "ok")] * 2
        pids = [w.proc.pid for w in pool._workers]
        os.kill(pids[0], signal.SIGTERM)
        os.kill(pids[1], signal.SIGKILL)  # the OOM killer
        time.sleep(0.5)
        assert pool.verify([("c", "1"), ("d", "1"), ("e", "1")]) == [(1.0, "ok")] * 3
        assert pool.restarts == 1 and pool._workers[0].proc.pid == pids[0]
        t = time.monotonic()
        pool.close()
        assert time.monotonic() - t < 15 and not pool._workers
    finally:
        pool.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False
