"""Groups of equivalent wrong answers, for majority voting (maj@k).

Correct samples need no grouping: each is math-verify-equivalent to the gold answer, so they
form one group. Wrong answers are grouped in two passes: identical text after `normalise`
first, then pairs of distinct texts are merged when math-verify finds them equivalent
(`1/2` and `0.5`). Pairs of plain integers are decided here; the others go through the scoring
pool, with its timeouts and memory cap (model text is never evaluated as Python). A problem
with d distinct wrong answers needs d(d-1)/2 checks, so at most `max_pairs` are made per
problem, largest groups first; the rest stay apart (a departure from exact grouping that can
only overstate maj@k, and only when the model scatters many distinct symbolic answers).
"""

from __future__ import annotations

from collections.abc import Callable

from skyexp.rewards.extract import fast_verdict, normalise

Verify = Callable[[list[tuple[str, str]]], list[tuple[float, str]]]


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def group_wrong_answers(
    problems: list[list[tuple[str | None, bool]]],
    verify: Verify | None,
    max_pairs: int,
    max_chars: int = 1000,
) -> list[list[tuple[str, int]]]:
    """Per problem, its samples as (extracted answer or None, correct?) -> the groups of equivalent
    wrong answers as (representative text, size), largest first. Samples without an answer, or
    with one longer than max_chars (scored as errors), do not vote."""
    keyed: list[
        list[tuple[str, int]]
    ] = []  # per problem: (first raw text, count) per normalised key
    for samples in problems:
        counts: dict[str, list] = {}
        for ans, ok in samples:
            if ok or ans is None or len(ans) > max_chars:
                continue
            counts.setdefault(normalise(ans), [ans, 0])[1] += 1
        keyed.append(sorted(((a, m) for a, m in counts.values()), key=lambda x: -x[1]))
    parents = [list(range(len(g))) for g in keyed]
    pending: list[tuple[int, int, int]] = []  # (problem, i, j) that need the symbolic check
    for p, groups in enumerate(keyed):
        pairs = [(i, j) for i in range(len(groups)) for j in range(i + 1, len(groups))][:max_pairs]
        for i, j in pairs:
            verdict = fast_verdict(groups[i][0], groups[j][0])
            if verdict is None:
                pending.append((p, i, j))
            elif verdict == 1.0:
                parents[p][_find(parents[p], j)] = _find(parents[p], i)
    if pending and verify is not None:
        results = verify([(keyed[p][j][0], keyed[p][i][0]) for p, i, j in pending])
        for (p, i, j), (score, _status) in zip(pending, results):
            if score == 1.0:  # a timeout or an error keeps the two apart
                parents[p][_find(parents[p], j)] = _find(parents[p], i)
    out = []
    for groups, parent in zip(keyed, parents):
        merged: dict[int, list] = {}
        for i, (text, m) in enumerate(groups):
            merged.setdefault(_find(parent, i), [text, 0])[1] += (
                m  # the largest group's text represents it
            )
        out.append(sorted(((t, m) for t, m in merged.values()), key=lambda x: -x[1]))
    return out
