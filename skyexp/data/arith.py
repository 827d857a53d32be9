"""Built-in task: multi-step integer arithmetic with worked solutions.

`Compute ((6*9)+4)*1.`  ->  `6*9=54. 54+4=58. 58*1=58. \\boxed{58}`

Level L has L operations on one-digit operands, applied left to right (the parentheses make the
order explicit), with every running value kept in [0, 99]. Each step of the solution is one
operation, so a level-L answer needs L correct steps: longer chains make the difficulty spread
that RL needs.

`slip_rate` models noisy SFT data (distilled traces contain mistakes): each step of a training
solution is wrong with that probability, the error carrying through to the boxed answer, while
the problem's `answer` stays exact. A model fine-tuned on such traces imitates the slips when it
samples (sampled pass@1 well below greedy); removing them is exactly what RL with a verifiable
reward does, and what it trades pass@k at large k for. The held-out split is unaffected.
"""

from __future__ import annotations

import random

from skyexp.records import Problem

OPS = "+-*"
MAX_VALUE = 99  # running values stay in [0, 99]: every step is a fact a small model can learn


def _allowed_ops(value: int, operand: int) -> str:
    ops = "+" if value + operand <= MAX_VALUE else ""
    ops += "-" if value - operand >= 0 else ""
    ops += "*" if value <= 9 and value * operand <= MAX_VALUE else ""
    return ops


SLIPS = (-10, -2, -1, 1, 2, 10)  # how a slipped step's result is off: carries and off-by-ones


def _apply(value: int, op: str, operand: int) -> int:
    return value + operand if op == "+" else value - operand if op == "-" else value * operand


def make_problem(
    rng: random.Random, level: int, slip_rate: float = 0.0, slip_rng: random.Random | None = None
) -> Problem:
    """A level-`level` problem. Its `answer` is always exact; with slip_rate > 0 each step of the
    worked `solution` is wrong with that probability (the error carries through to the boxed
    answer), as in noisy distilled SFT traces. `slip_rng` draws the slips, so the problems
    themselves do not depend on the slip rate."""
    value = rng.randint(1, 9)
    expr = str(value)
    chain = []
    for _ in range(level):
        operand = rng.randint(1, 9)
        op = rng.choice(_allowed_ops(value, operand))
        chain.append((op, operand))
        expr = f"({expr}){op}{operand}" if not expr.isdigit() else f"{expr}{op}{operand}"
        value = _apply(value, op, operand)
    shown = int(expr.lstrip("(")[0])
    steps = []
    for op, operand in chain:
        new = _apply(shown, op, operand)
        if slip_rate > 0 and slip_rng is not None and slip_rng.random() < slip_rate:
            new = max(0, new + slip_rng.choice(SLIPS))
        steps.append(f"{shown}{op}{operand}={new}.")
        shown = new
    solution = " ".join(steps) + f" \\boxed{{{shown}}}"
    return Problem(id="", problem=f"Compute {expr}.", answer=str(value), solution=solution,
                   meta={"level": level, "slipped": shown != value})


def generate(
    levels: list[int],
    count: int,
    seed: int,
    exclude: set[str] | None = None,
    distinct: bool = True,
    slip_rate: float = 0.0,
) -> list[Problem]:
    """`count` problems, levels cycled evenly, deterministic in `seed`, none of them in `exclude`.
    With distinct=False a problem may repeat (level 1 has only 243 different problems)."""
    rng = random.Random(seed)
    slip_rng = random.Random(seed * 7919 + 1)
    banned = set(exclude or ())
    out: list[Problem] = []
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > 50 * count + 1000:
            raise ValueError(
                f"arith: cannot draw {count} distinct problems from levels {levels}; lower the size"
            )
        level = levels[len(out) % len(levels)]
        p = make_problem(rng, level, slip_rate, slip_rng)
        if p.problem in banned:
            continue
        if distinct:
            banned.add(p.problem)
        out.append(
            Problem(
                id=f"arith-{seed}-{len(out)}",
                problem=p.problem,
                answer=p.answer,
                solution=p.solution,
                meta=p.meta,
            )
        )
    return out


def load(
    levels: list[int], train_size: int, eval_size: int, seed: int, slip_rate: float = 0.0
) -> tuple[list[Problem], list[Problem]]:
    """(train, held-out eval): the eval split is distinct problems fixed by `seed`; train problems
    may repeat but never equal an eval problem. Slips only ever touch the train solutions."""
    held_out = generate(levels, eval_size, seed + 1)
    train = generate(
        levels,
        train_size,
        seed,
        exclude={p.problem for p in held_out},
        distinct=False,
        slip_rate=slip_rate,
    )
    return train, held_out
