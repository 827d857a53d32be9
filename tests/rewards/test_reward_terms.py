"""Reward terms (skyexp.rewards.terms) against hand-computed values; composition and logging
names."""

from __future__ import annotations

import math

import pytest
import torch

from skyexp.config import RewardConfig
from skyexp.rewards.terms import (
    REWARD_TERMS,
    ScoreInput,
    accuracy,
    combine,
    cosine,
    follows_template,
    format_term,
    overlong,
)


def _x(correct, lengths, truncated=None, max_len=100, texts=None):
    n = len(correct)
    return ScoreInput(
        texts or [""] * n,
        torch.tensor(correct, dtype=torch.float32),
        torch.tensor(lengths),
        torch.tensor(truncated or [False] * n),
        max_len,
    )


def test_accuracy_one_zero_and_plus_minus_one():
    x = _x([1, 0, 1], [5, 5, 5])
    assert accuracy(x, RewardConfig()).tolist() == [1.0, 0.0, 1.0]
    assert accuracy(x, RewardConfig(wrong=-1.0)).tolist() == [1.0, -1.0, 1.0]  # DAPO


def test_overlong_soft_punishment_hand_values():
    # cap 100, buffer 0.2 -> L_cache 20, free up to 80: 80 -> 0, 90 -> (80-90)/20 = -0.5, 100 -> -1
    x = _x([1, 1, 1, 1], [50, 80, 90, 100])
    assert overlong(x, RewardConfig(overlong_buffer=0.2)).tolist() == pytest.approx(
        [0.0, 0.0, -0.5, -1.0]
    )
    assert overlong(
        x, RewardConfig(overlong_buffer=0.2, overlong_penalty=0.5)
    ).tolist() == pytest.approx([0, 0, -0.25, -0.5])


def test_cosine_length_scaled_hand_values():
    # correct: 1 + (2 - 1) * (1 + cos(pi t)) / 2 -> t=0: 2, t=0.5: 1.5, t=1: 1
    # wrong:   0 + (-10 - 0) * (1 + cos(pi t)) / 2 -> t=0: -10, t=0.5: -5, t=1: 0 ; truncated: -10
    c = RewardConfig()
    x = _x([1, 1, 1, 0, 0, 0, 1], [0, 50, 100, 0, 50, 99, 100], truncated=[False] * 6 + [True])
    wrong_99 = -10 * (1 + math.cos(math.pi * 0.99)) / 2
    assert cosine(x, c).tolist() == pytest.approx(
        [2.0, 1.5, 1.0, -10.0, -5.0, wrong_99, -10.0], abs=1e-5
    )
    # the point of the shaping: shorter is better when right, longer is better when wrong
    short_long = cosine(_x([1, 1, 0, 0], [10, 60, 10, 60]), c).tolist()
    assert short_long[0] > short_long[1] and short_long[2] < short_long[3]


def test_format_template():
    good = "<think>6*9=54</think> The answer is \\boxed{54}."
    assert follows_template(good, think=True)
    assert not follows_template("6*9=54. \\boxed{54}", think=True)
    assert follows_template("6*9=54. \\boxed{54}", think=False)
    assert not follows_template(
        "<think>a</think><think>b</think>\\boxed{1}", think=True
    )  # two blocks
    assert not follows_template(
        "\\boxed{1} <think>late</think>", think=True
    )  # answer before thinking
    assert not follows_template("<think>no answer</think> 54", think=True)
    assert not follows_template("<think>unclosed \\boxed{5}", think=True)
    x = _x([1, 1], [3, 3], texts=[good, "54"])
    assert format_term(x, RewardConfig()).tolist() == [1.0, 0.0]


def test_format_check_is_linear_on_adversarial_text():
    # many openings and closings: plain substring work, no backtracking regex
    text = "<think>" + "</think>{" * 200_000 + "\\boxed{" * 1000
    assert follows_template(text, think=True) is False


def test_combine_weights_and_parts():
    x = _x([1, 0], [90, 10], texts=["<think>x</think>\\boxed{1}", "\\boxed{2}"])
    c = RewardConfig(
        terms={"accuracy": 1.0, "format": 0.5, "overlong": 2.0, "cosine": 0.0}, wrong=-1.0
    )
    total, parts = combine(x, c)
    # sample 0: 1 + 0.5*1 + 2*(-0.5) = 0.5 ; sample 1: -1 + 0.5*0 + 2*0 = -1 ; cosine (weight 0)
    # skipped
    assert total.tolist() == pytest.approx([0.5, -1.0])
    assert set(parts) == {"accuracy", "format", "overlong"}
    assert parts["overlong"].tolist() == pytest.approx([-0.5, 0.0])
    assert set(REWARD_TERMS) == {"accuracy", "format", "overlong", "cosine"}
