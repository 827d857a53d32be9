"""pass@k: unbiased, exact against brute-force subset enumeration."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from types import SimpleNamespace

import pytest

from skyexp.evaluation.estimators import (
    EvalResult,
    best_at_k,
    ks_for,
    maj_at_k,
    maj_at_k_all,
    mean_at_n,
    pass_at_k,
)
from skyexp.evaluation.runner import (
    eval_due,
    eval_template,
    generate_by_length,
    length_groups,
    run_eval,
)


def brute(n: int, c: int, k: int) -> float:
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 11))
def test_matches_brute_force(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute(n, c, k), abs=1e-12)


def test_exact_edge_cases():
    for n in range(1, 1025):
        for c in range(n + 1):
            assert pass_at_k(n, c, 1) == c / n  # exactly, not approximately
        assert pass_at_k(n, 0, n) == 0.0 and pass_at_k(n, 0, 1) == 0.0
    for n, c, k in [(16, 10, 7), (4, 1, 4), (1024, 1, 1024), (1024, 600, 425)]:
        assert pass_at_k(n, c, k) == 1.0  # n - c < k: every k-subset holds a correct sample
    for bad in [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)]:
        with pytest.raises(ValueError, match="pass_at_k"):
            pass_at_k(*bad)


def test_stable_at_n_1024():
    # against exact rational arithmetic, including the tails where the naive ratio of binomials
    # overflows (C(1024, 512) ~ 4e306) and where 1 - tiny must not cancel to garbage
    n = 1024
    for c in [1, 2, 3, 17, 100, 511, 512, 900, 1000, 1020]:
        prev = 0.0
        for k in ks_for(n):
            exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
            got = pass_at_k(n, c, k)
            assert got == pytest.approx(float(exact), rel=1e-12), (c, k)
            assert prev <= got <= 1.0  # non-decreasing in k
            prev = got


def test_ks_and_result_metrics():
    assert ks_for(16) == [1, 2, 4, 8, 16] and ks_for(6) == [1, 2, 4, 6] and ks_for(1) == [1]
    r = EvalResult(name="x", n=4, correct=[0, 4, 2])
    m = r.metrics()
    assert m["val/x/pass@1"] == pytest.approx(0.5) and m["val/x/mean@4"] == pytest.approx(0.5)
    assert m["val/x/pass@4"] == pytest.approx(2 / 3)


def brute_maj(n: int, correct: int, wrong: list[int], k: int) -> float:
    labels = ["C"] * correct + [f"w{g}" for g, a in enumerate(wrong) for _ in range(a)]
    labels += [None] * (n - len(labels))
    total = 0.0
    subsets = list(itertools.combinations(range(n), k))
    for s in subsets:
        votes: dict[str, int] = {}
        for i in s:
            if labels[i] is not None:
                votes[labels[i]] = votes.get(labels[i], 0) + 1
        if votes:
            top = max(votes.values())
            tied = [lab for lab, v in votes.items() if v == top]
            total += ("C" in tied) / len(tied)
    return total / len(subsets)


def test_maj_at_k_hand_computed():
    # n=4, 2 correct, one wrong group of 2. k=2: {C,C} wins (1 subset), {W,W} loses (1), {C,W} ties
    # (4 subsets, 1/2 each): (1 + 2) / 6 = 0.5. k=3: {C,C,W} x2 win, {C,W,W} x2 lose: 0.5.
    assert maj_at_k(4, 2, [2], 2) == pytest.approx(0.5)
    assert maj_at_k(4, 2, [2], 3) == pytest.approx(0.5)
    # n=5: C1 C2, wrong groups {w1}, {w2}, one sample without an answer; k=3, C(5,3)=10 subsets.
    # Both C (3 subsets): win. One C (2 x 3 subsets): with {w1,w2} a 3-way tie 1/3, with {w1,-} or
    # {w2,-} a 2-way tie 1/2: 2 * (1/3 + 1/2 + 1/2) = 8/3. No C: 0. maj@3 = (3 + 8/3) / 10 = 17/30.
    assert maj_at_k(5, 2, [1, 1], 3) == pytest.approx(17 / 30)
    # one sample: its answer is the vote, so maj@1 = c/n; a single wrong group larger than the
    # correct one makes maj@n = 0; nothing correct gives 0
    assert maj_at_k(8, 3, [2, 2], 1) == pytest.approx(3 / 8)
    assert maj_at_k(5, 2, [3], 5) == 0.0 and maj_at_k(4, 0, [1], 4) == 0.0
    # samples without an answer do not vote: 1 correct + 3 silent gives maj@4 = 1
    assert maj_at_k(4, 1, [], 4) == 1.0


def test_maj_at_k_matches_brute_force():
    import random

    rng = random.Random(0)
    for _ in range(60):
        n = rng.randint(1, 9)
        correct = rng.randint(0, n)
        wrong, left = [], n - correct
        while left and rng.random() < 0.8:
            a = rng.randint(1, left)
            wrong.append(a)
            left -= a
        for k in range(1, n + 1):
            assert maj_at_k(n, correct, wrong, k) == pytest.approx(
                brute_maj(n, correct, wrong, k), abs=1e-12
            ), (n, correct, wrong, k)


def test_maj_at_k_large_n_is_finite_and_bounded():
    m = maj_at_k_all(1024, 400, [300, 200, 100])
    assert all(0.0 <= v <= 1.0 for v in m.values())
    assert m[1] == pytest.approx(400 / 1024) and m[1024] == 1.0  # the full set: 400 beats 300


def test_best_at_k_and_mean():
    # scores 0, 0.5, 1; k=2 subsets {0,.5}->.5, {0,1}->1, {.5,1}->1: (0.5+1+1)/3 = 5/6
    assert best_at_k([0.0, 0.5, 1.0], 2) == pytest.approx(5 / 6)
    assert (
        best_at_k([0.0, 0.5, 1.0], 1) == pytest.approx(0.5) and best_at_k([0.0, 0.5, 1.0], 3) == 1.0
    )
    for n in range(1, 8):  # 0/1 scores: best@k is pass@k
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert best_at_k([1.0] * c + [0.0] * (n - c), k) == pytest.approx(
                    pass_at_k(n, c, k), abs=1e-12
                )
    assert mean_at_n([1.0, 0.0, 0.0, 1.0]) == 0.5


def test_result_maj_and_best_metrics():
    # problem 1: 2 correct, wrong groups [1,1] of n=4 -> maj@4: C has 2 votes, wins: 1
    # problem 2: 1 correct, wrong group [3] -> maj@4 = 0; maj@1 = mean@4 = (2+1)/8
    r = EvalResult(name="b", n=4, correct=[2, 1], wrong_groups=[[1, 1], [3]])
    m = r.metrics()
    assert m["val/b/maj@4"] == pytest.approx(0.5) and m["val/b/maj@1"] == pytest.approx(3 / 8)
    assert m["val/b/mean@4"] == pytest.approx(3 / 8) and "val/b/best@4" not in m
    assert r.best_at[4] == pytest.approx(r.pass_at[4])


def test_eval_due():
    # every 2 of 7 steps: after steps 2, 4, 6; eval.after covers step 7 either way
    assert [s for s in range(8) if eval_due(2, s, 7, after=True)] == [2, 4, 6]
    # the last step is skipped only when eval.after evaluates the same weights
    assert [s for s in range(7) if eval_due(3, s, 6, after=True)] == [3]
    assert [s for s in range(7) if eval_due(3, s, 6, after=False)] == [3, 6]
    assert not any(eval_due(0, s, 6, after=False) for s in range(7))  # eval.every=0: never


def test_length_groups():
    # sorted by length; a group's longest prompt at most twice its shortest
    assert length_groups([10, 3, 50, 4, 6, 7, 21, 100]) == [[1, 3, 4], [5, 0], [6], [2, 7]]
    assert length_groups([5, 5, 5]) == [[0, 1, 2]] and length_groups([]) == []
    assert length_groups([0, 1, 2, 3]) == [[0, 1, 2], [3]]  # an empty prompt counts as length 1


class _EchoEngine:
    """Each sample's response is [prompt's first token, sample index]; records every call."""

    def __init__(self):
        self.calls = []

    def generate(self, ids, n, max_len, temperature, top_p):
        import torch

        self.calls.append([len(x) for x in ids])
        responses = [[p[0], s] for p in ids for s in range(n)]
        return SimpleNamespace(
            responses=responses,
            response_lengths=torch.tensor([len(p) for p in ids for _ in range(n)]),
            truncated=torch.tensor([p[0] % 2 == 1 for p in ids for _ in range(n)]),
        )


class _ListTokenizer:
    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(map(str, r)) for r in rows]


def test_generate_by_length_returns_samples_in_prompt_order():
    ids = [[7] * 40, [1] * 3, [2] * 90, [3] * 5]  # first token identifies the prompt
    eng = _EchoEngine()
    texts, lengths, truncated = generate_by_length(eng, _ListTokenizer(), ids, 2, 16, 1.0, 1.0)
    assert eng.calls == [[3, 5], [40], [90]]  # one call per length group, shortest first
    assert texts == ["7 0", "7 1", "1 0", "1 1", "2 0", "2 1", "3 0", "3 1"]
    assert lengths == [40, 40, 3, 3, 90, 90, 5, 5] and truncated == [
        True,
        True,
        True,
        True,
        False,
        False,
        True,
        True,
    ]


class _CharTokenizer:
    """One token per character; no chat template, so prompts are plain text."""

    chat_template = None

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(c) for c in t] for t in texts]}

    def batch_decode(self, rows, skip_special_tokens=True):
        return ["".join(map(chr, r)) for r in rows]


class _ScriptedEngine:
    """Answers every prompt with the replies in turn (one per sample); records the prompts seen."""

    def __init__(self, replies):
        self.replies, self.prompts = replies, []

    def generate(self, ids, n, max_len, temperature, top_p):
        import torch

        self.prompts += ["".join(map(chr, p)) for p in ids]
        responses = [[ord(c) for c in self.replies[s]] for _ in ids for s in range(n)]
        return SimpleNamespace(
            responses=responses,
            response_lengths=torch.tensor([len(r) for r in responses]),
            truncated=torch.zeros(len(responses), dtype=torch.bool),
        )


class _ExactReward:
    """Scores the last \\boxed{} by exact text; no pool, so maj@k groups wrong answers by text."""

    cfg = SimpleNamespace(max_answer_chars=100)

    def score(self, texts, golds):
        from skyexp.rewards import Scored
        from skyexp.rewards.extract import last_boxed

        got = [last_boxed(t) for t in texts]
        return Scored([float(g == a) for g, a in zip(got, golds)], got, ["ok"] * len(texts))


def test_run_eval_renders_the_eval_template_and_counts_votes():
    from skyexp.config import EvalConfig
    from skyexp.records import Problem

    cfg = EvalConfig(
        name="t",
        n=4,
        prompt_template="Q: {problem}",
        system_prompt="SYS",
        response_prefix="<think>",
    )
    problems = [
        Problem(id="a", problem="1+1", answer="2"),
        Problem(id="b", problem="2+2", answer="4"),
    ]
    engine = _ScriptedEngine(["\\boxed{2}", "\\boxed{5}", "\\boxed{5}", "no answer"])
    res = run_eval(
        engine, _ExactReward(), _CharTokenizer(), problems, cfg, eval_template(cfg), chat=False
    )
    # plain-text rendering: system prompt, blank line, user text, then the response prefix
    assert engine.prompts == ["SYS\n\nQ: 1+1<think>", "SYS\n\nQ: 2+2<think>"]
    assert res.correct == [1, 0] and res.wrong_groups == [[2], [2, 1]]  # largest group first
    assert [v["count"] for v in res.records[0]["votes"]] == [
        1,
        2,
    ]  # the correct group, then "5" twice
    assert res.records[1]["samples"][3] == {
        "text": "no answer",
        "extracted": None,
        "score": 0.0,
        "status": "ok",
        "length": 9,
        "truncated": False,
    }
    # maj@4: on problem a "5" (twice) outvotes the correct answer (once); b has no correct sample
    assert res.maj_at[4] == 0.0 and res.maj_at[1] == pytest.approx(1 / 8)
    assert res.pass_at[1] == pytest.approx(1 / 8) and res.metrics()[
        "val/t/mean@4"
    ] == pytest.approx(1 / 8)
