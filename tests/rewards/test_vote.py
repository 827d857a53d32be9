"""Grouping wrong answers for maj@k: text first, then math-verify (faked here, real in one test)."""

from __future__ import annotations

from skyexp.rewards.vote import group_wrong_answers


def fake_verify(calls: list):
    """Equivalent when both sides evaluate to the same fraction (stands in for math-verify)."""

    def value(s: str) -> float | None:
        s = s.replace("\\frac{1}{2}", "0.5").replace("1/2", "0.5")
        try:
            return float(s)
        except ValueError:
            return None

    def verify(items):
        calls.append(list(items))
        return [
            (1.0 if value(a) is not None and value(a) == value(b) else 0.0, "ok") for a, b in items
        ]

    return verify


def test_groups_by_text_then_equivalence():
    calls: list = []
    samples = [
        ("7", False),
        (" 7 ", False),
        ("1/2", False),
        ("\\frac{1}{2}", False),
        ("0.5", False),
        ("9", True),
        (None, False),
        ("x", False),
    ]
    [groups] = group_wrong_answers([samples], fake_verify(calls), max_pairs=100)
    # "7" twice (same text after normalising), the three spellings of 1/2 merged, "x" alone;
    # the correct "9" and the missing answer never vote
    assert sorted(m for _, m in groups) == [1, 2, 3]
    assert groups[0] == ("1/2", 3) and ("7", 2) in groups
    # pairs of plain integers are decided here, never sent to the pool
    assert all(not (a.isdigit() and b.isdigit()) for batch in calls for a, b in batch)


def test_integer_answers_never_reach_the_pool():
    calls: list = []
    samples = [("12", False), ("012", False), ("13", False), ("13", False)]
    [groups] = group_wrong_answers([samples], fake_verify(calls), max_pairs=100)
    assert sorted(m for _, m in groups) == [2, 2]  # "012" equals 12 as an integer
    assert calls == []


def test_pair_budget_and_failed_checks_keep_groups_apart():
    calls: list = []
    samples = [("0.5", False), ("1/2", False), ("\\frac{1}{2}", False)]
    # no pair may be checked: three singleton groups
    [groups] = group_wrong_answers([samples], fake_verify(calls), max_pairs=0)
    assert [m for _, m in groups] == [1, 1, 1] and calls == []
    # a verify that times out on everything merges nothing
    [groups] = group_wrong_answers(
        [samples], lambda items: [(0.0, "timeout")] * len(items), max_pairs=10
    )
    assert [m for _, m in groups] == [1, 1, 1]
    # without a pool, text equality only
    [groups] = group_wrong_answers([samples + [("0.5 ", False)]], None, max_pairs=10)
    assert sorted(m for _, m in groups) == [1, 1, 2]


def test_overlong_answers_do_not_vote():
    [groups] = group_wrong_answers(
        [[("1" * 50, False), ("2", False)]], None, max_pairs=10, max_chars=10
    )
    assert groups == [("2", 1)]


def test_real_math_verify_merges_equivalent_spellings():
    from skyexp.rewards.pool import ScoringPool

    pool = ScoringPool(workers=1, timeout_s=5.0)
    try:
        [groups] = group_wrong_answers(
            [[("\\frac{1}{2}", False), ("0.5", False), ("(x+1)^2", False), ("x^2+2x+1", False)]],
            pool.verify,
            max_pairs=10,
        )
    finally:
        pool.close()
    assert sorted(m for _, m in groups) == [
        2,
        2,
    ]  # known math-verify verdicts (ENV.md, test_rewards)
