"""Reward terms (skyexp.rewards.terms) against hand-computed values; composition and logging
names."""

from __future__ import annotations

import math

import pytest
import torch

from skyexp.cli import run_identity
from skyexp.config import RewardConfig
from skyexp.config.names import random_reward
from skyexp.rewards.terms import (
    REWARD_TERMS,
    ScoreInput,
    accuracy,
    combine,
    cosine,
    follows_template,
    format_term,
    overlong,
    random_term,
    uniform_key,
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
    assert set(REWARD_TERMS) == {"accuracy", "format", "overlong", "cosine", "random"}


# --- the random-reward control (arXiv 2509.26114) ---


def _rx(n, seed=0, step=0, stream=0, correct=None):
    x = _x(correct or [0] * n, [5] * n)
    return ScoreInput(
        x.texts, x.correct, x.lengths, x.truncated, x.max_len, seed=seed, step=step, stream=stream
    )


def test_random_term_is_reproducible_and_keyed_by_seed_step_and_sample():
    c = RewardConfig(random_p=0.5)
    a, b = random_term(_rx(64, seed=3, step=7), c), random_term(_rx(64, seed=3, step=7), c)
    assert torch.equal(a, b)
    assert set(a.tolist()) <= {0.0, 1.0}
    others = (_rx(64, seed=4, step=7), _rx(64, seed=3, step=8), _rx(64, seed=3, step=7, stream=1))
    for other in others:
        assert not torch.equal(random_term(other, c), a)
    # a sample's draw does not depend on the batch size (counter-based, not a generator's stream)
    assert torch.equal(random_term(_rx(10, seed=3, step=7), c), a[:10])
    # hand-computed: sample i is rewarded iff uniform_key(seed, step, stream, i) < p
    assert a.tolist() == [float(uniform_key(3, 7, 0, i) < 0.5) for i in range(64)]


def test_random_term_is_independent_of_the_answer():
    c = RewardConfig(random_p=0.5)
    wrong, right = _rx(32, seed=1, correct=[0] * 32), _rx(32, seed=1, correct=[1] * 32)
    texts = ScoreInput(
        ["\\boxed{7}"] * 32, wrong.correct, wrong.lengths, wrong.truncated, 100, seed=1
    )
    assert torch.equal(random_term(wrong, c), random_term(right, c))
    assert torch.equal(random_term(wrong, c), random_term(texts, c))


def test_random_term_rate_and_edges_and_values():
    n = 4000
    r = random_term(_rx(n, seed=11, step=2), RewardConfig(random_p=0.3))
    assert abs(r.mean().item() - 0.3) < 4 * math.sqrt(0.3 * 0.7 / n)
    assert random_term(_rx(50), RewardConfig(random_p=0.0)).sum() == 0
    assert random_term(_rx(50), RewardConfig(random_p=1.0)).tolist() == [1.0] * 50
    pm = random_term(_rx(50, seed=5), RewardConfig(random_p=0.5, wrong=-1.0))  # the +-1 form
    assert set(pm.tolist()) == {1.0, -1.0}
    u = [uniform_key(9, i) for i in range(2000)]
    assert min(u) >= 0 and max(u) < 1 and abs(sum(u) / len(u) - 0.5) < 0.03


def test_random_term_in_combine_and_logged_as_its_own_term():
    c = RewardConfig(terms={"accuracy": 0.0, "random": 1.0}, random_p=0.5)
    x = _rx(16, seed=2, correct=[1] * 16)
    total, parts = combine(x, c)
    # logged as reward/random/mean; accuracy (weight 0) is not a part
    assert set(parts) == {"random"}
    assert torch.equal(total, random_term(x, c))


def test_random_reward_guard_names():
    assert random_reward({"accuracy": 0.0, "random": 1.0}) and not random_reward({"accuracy": 1.0})
    assert not random_reward({"accuracy": 1.0, "random": 0.0})
    overrides = ["reward=random", "algo.clip_low=0.1"]
    name, _ = run_identity(overrides, None, None, "r", random_reward=True)
    assert name == "RANDOM-REWARD:algo.clip_low=0.1,reward=random"
    assert run_identity([], "mine", None, "r", random_reward=True)[0] == "RANDOM-REWARD:mine"
    assert run_identity([], "mine", None, "r")[0] == "mine"
