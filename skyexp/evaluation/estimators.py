"""Unbiased pass@k, mean@n, maj@k and best@k estimators, and EvalResult, which applies them to
the per-problem counts of one benchmark run (skyexp.evaluation.runner).

Every metric is the exact expectation over the k-subsets of the n samples of a problem, drawn
without replacement, averaged over problems:

- pass@k = 1 - C(n-c, k) / C(n, k) (Chen et al., arXiv 2107.03374), c correct of n; computed as
  a product so it stays exact in floating point for n up to thousands;
- mean@n = c / n, the average accuracy of the n samples (= pass@1; Sky-T1 reports AIME pass@1
  as mean@8);
- maj@k = P(the majority answer of k samples is correct). Answers are grouped by math-verify
  equivalence; samples without an answer do not vote; a tie between the correct group and t
  others counts 1 / (t + 1) (a uniformly random tie-break). Computed exactly by counting the
  subsets (`maj_at_k`), not by bootstrap resampling as verl's `process_validation_metrics` does;
- best@k = E[max score of k samples] (verl's best@N): equal to pass@k for 0/1 rewards, different
  once rewards carry format or length terms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is
    correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    # the product below rounds; c / n is the exact value (one correctly rounded division)
    if k == 1:
        return c / n
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):  # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def mean_at_n(scores: list[float]) -> float:
    """Average score of the n samples of one problem."""
    if not scores:
        raise ValueError("mean_at_n needs at least one score")
    return sum(scores) / len(scores)


def best_at_k(scores: list[float], k: int) -> float:
    """E[max of k scores drawn without replacement from n].

    With the scores sorted ascending s_1 <= ... <= s_n, s_i is the maximum of a k-subset exactly
    when the subset holds i and k-1 of the i-1 smaller ones: E = sum_i s_i C(i-1, k-1) / C(n, k).
    """
    n = len(scores)
    if not 1 <= k <= n:
        raise ValueError(f"best_at_k needs 1 <= k <= n (n={n}, k={k})")
    total = math.comb(n, k)
    return sum(
        s * (math.comb(i - 1, k - 1) / total)
        for i, s in enumerate(sorted(scores), start=1)
        if i >= k
    )


def maj_at_k(n: int, correct: int, wrong: list[int], k: int) -> float:
    """Exact maj@k of one problem.

    n samples: `correct` of them equivalent to the gold answer (one group), `wrong` the sizes of
    the groups of equivalent wrong answers, the remaining n - correct - sum(wrong) without an
    answer (they fill subset slots but never vote). See `maj_at_k_all` for the counting."""
    return maj_at_k_all(n, correct, wrong)[k]


def maj_at_k_all(n: int, correct: int, wrong: list[int]) -> dict[int, float]:
    """maj@k for every k = 1..n at once, counting subsets exactly.

    For j >= 1 correct samples in the subset, the correct group wins (or ties) when every wrong
    group contributes at most j. Groups smaller than j, and the no-answer samples, can never
    reach j: together they are one free pool of F samples, C(F, s) ways to take s of them.
    Each group of size a >= j contributes sum_{x<j} C(a, x) z^x + C(a, j) z^j w, where w marks a
    tie. The product over groups, a polynomial P_j[s, t] (s = samples taken, t = tied groups),
    gives credit_j(k) = C(correct, j) * sum_t P_j[k-j, t] / (t+1); maj@k = sum_j credit_j / C(n, k).
    Counts are float64: exact up to 2^53 and at most C(1024, 512) ~ 4e306 < float max.
    """
    none = n - correct - sum(wrong)
    if correct < 0 or none < 0 or any(a < 1 for a in wrong):
        raise ValueError(
            f"maj_at_k: need 0 <= correct, groups >= 1, correct + sum(groups) <= n (n={n}, "
            f"c={correct}, groups={wrong})"
        )
    credit = np.zeros(n + 1)  # credit[k], summed over j
    for j in range(1, correct + 1):
        big = [a for a in wrong if a >= j]
        free = none + sum(a for a in wrong if a < j)
        poly = np.zeros((n - j + 1, len(big) + 1))  # [s, t]
        poly[: free + 1, 0] = [math.comb(free, s) for s in range(min(free, n - j) + 1)]
        for a in big:
            nxt = np.zeros_like(poly)
            for x in range(j + 1):
                if x < j:
                    nxt[x:, :] += math.comb(a, x) * poly[: poly.shape[0] - x, :]
                else:
                    nxt[x:, 1:] += math.comb(a, x) * poly[: poly.shape[0] - x, :-1]
            poly = nxt
        per_s = (poly / np.arange(1, len(big) + 2)).sum(1)  # [s] sum_t P[s, t] / (t+1)
        credit[j:] += math.comb(correct, j) * per_s[: n - j + 1]
    # float rounding can land a hair above 1 for large n
    return {k: min(1.0, float(credit[k] / math.comb(n, k))) for k in range(1, n + 1)}


def ks_for(n: int) -> list[int]:
    """1, 2, 4, ... up to n (n itself included)."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


@dataclass
class EvalResult:
    name: str
    n: int
    correct: list[int]  # [P] per problem, number of correct samples out of n
    records: list[dict[str, Any]] = field(default_factory=list)
    timeouts: int = 0
    errors: int = 0
    # [P] sizes of the groups of equivalent wrong answers
    wrong_groups: list[list[int]] | None = None
    scores: list[list[float]] | None = None  # [P][n] every sample's score
    max_response_len: int = 0  # the cap actually used
    seconds: float = 0.0  # wall time: generation, scoring, grouping

    @property
    def pass_at(self) -> dict[int, float]:
        return {
            k: sum(pass_at_k(self.n, c, k) for c in self.correct) / len(self.correct)
            for k in ks_for(self.n)
        }

    @property
    def mean_at_n(self) -> float:
        return sum(self.correct) / (self.n * len(self.correct))

    @property
    def maj_at(self) -> dict[int, float]:
        if self.wrong_groups is None:
            return {}
        per = [maj_at_k_all(self.n, c, w) for c, w in zip(self.correct, self.wrong_groups)]
        return {k: sum(p[k] for p in per) / len(per) for k in ks_for(self.n)}

    @property
    def best_at(self) -> dict[int, float]:
        scores = self.scores or [[1.0] * c + [0.0] * (self.n - c) for c in self.correct]
        return {k: sum(best_at_k(s, k) for s in scores) / len(scores) for k in ks_for(self.n)}

    def metrics(self, prefix: str = "val") -> dict[str, float]:
        """pass@k, maj@k and mean@n under the names of docs/design.md. best@k stays in the summary:
        with 0/1
        rewards it repeats pass@k and would only double the charts."""
        out = {f"{prefix}/{self.name}/pass@{k}": v for k, v in self.pass_at.items()}
        out.update({f"{prefix}/{self.name}/maj@{k}": v for k, v in self.maj_at.items()})
        out[f"{prefix}/{self.name}/mean@{self.n}"] = self.mean_at_n
        return out

    def summary(self) -> dict[str, Any]:
        """Everything a results table needs, JSON-ready."""
        samples = [s for r in self.records for s in r.get("samples", [])]
        num = max(len(samples), 1)
        return {
            "benchmark": self.name,
            "problems": len(self.correct),
            "n": self.n,
            f"mean@{self.n}": self.mean_at_n,
            "pass@k": self.pass_at,
            "maj@k": self.maj_at,
            "best@k": self.best_at,
            "reward/timeouts": self.timeouts,
            "reward/errors": self.errors,
            "no_answer": sum(s["extracted"] is None for s in samples) / num,
            "truncated": sum(s["truncated"] for s in samples) / num,
            "response_length/mean": sum(s["length"] for s in samples) / num,
            "max_response_len": self.max_response_len,
            "seconds": round(self.seconds, 2),
            "samples_per_s": len(samples) / self.seconds if self.seconds else 0.0,
        }
