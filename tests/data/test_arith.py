"""The built-in arithmetic task: exact answers, correct worked solutions, a fixed held-out split."""

from __future__ import annotations

import ast
import collections
import operator
import random
import re

from skyexp.data.arith import MAX_VALUE, generate, load, make_problem
from skyexp.rewards.extract import last_boxed

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _calc(node):
    """Evaluate +, -, * over integer literals only (an independent check of the generator)."""
    if isinstance(node, ast.Expression):
        return _calc(node.body)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_calc(node.left), _calc(node.right))
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    raise ValueError(f"unexpected node {ast.dump(node)}")


def test_answers_and_solutions_are_exact():
    rng = random.Random(7)
    for _ in range(500):
        level = rng.randint(1, 6)
        p = make_problem(rng, level)
        expr = re.fullmatch(r"Compute (.+)\.", p.problem).group(1)
        assert str(_calc(ast.parse(expr, mode="eval"))) == p.answer
        assert last_boxed(p.solution) == p.answer and p.solution.endswith(f"\\boxed{{{p.answer}}}")
        steps = re.findall(r"(\d+)([-+*])(\d+)=(\d+)\.", p.solution)
        assert len(steps) == level
        for a, op, b, r in steps:
            assert _OPS[{"+": ast.Add, "-": ast.Sub, "*": ast.Mult}[op]](int(a), int(b)) == int(r)
            assert 0 <= int(r) <= MAX_VALUE


def test_held_out_split_is_fixed_distinct_and_disjoint():
    train, ev = load([1, 2, 3, 4], 5000, 200, seed=3)
    train2, ev2 = load([1, 2, 3, 4], 5000, 200, seed=3)
    assert [p.problem for p in ev] == [p.problem for p in ev2]
    assert [p.problem for p in train] == [p.problem for p in train2]
    assert len({p.problem for p in ev}) == 200
    assert not {p.problem for p in ev} & {p.problem for p in train}
    assert collections.Counter(p.meta["level"] for p in ev) == {1: 50, 2: 50, 3: 50, 4: 50}


def test_levels_spread_in_length():
    probs = generate([1, 4], 100, seed=0)
    by_level = collections.defaultdict(list)
    for p in probs:
        by_level[p.meta["level"]].append(len(p.solution))
    assert min(by_level[4]) > max(by_level[1])


def test_slips_touch_only_training_solutions():
    clean, ev0 = load([1, 2, 3, 4], 4000, 100, seed=5)
    noisy, ev1 = load([1, 2, 3, 4], 4000, 100, seed=5, slip_rate=0.15)
    assert [(p.problem, p.answer) for p in clean] == [
        (p.problem, p.answer) for p in noisy
    ]  # same problems, exact answers
    assert [p.solution for p in ev0] == [p.solution for p in ev1]  # held-out split has no slips
    slipped = [p for p in noisy if p.meta["slipped"]]
    # P(a level-L solution ends wrong) is about 1 - 0.85^L (a slip is rarely undone later): ~0.32 on
    # average
    assert 0.25 < len(slipped) / len(noisy) < 0.38
    for p in slipped:
        assert last_boxed(p.solution) != p.answer
    assert not any(p.meta["slipped"] for p in clean)
