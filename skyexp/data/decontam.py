"""Decontamination: find training problems that are eval benchmark problems.

Two tests, on the normalised text of `skyexp.data.mix.normalise_text` (case, LaTeX spacing and
delimiters ignored):
- exact: identical normalised text;
- n-gram: the share of the shorter problem's token n-grams that also occur in the other problem
  is at least `threshold` (containment, so a benchmark problem embedded in a longer training
  problem is caught). Tokens are words and single symbols of the lower-cased text; a problem
  with fewer than n tokens has no n-grams and is tested by exact match only.

Defaults (n = 10, threshold 0.6), measured on ../shared/data: AIME 1983-2023 against MATH-500
flags 7 problems, all with the same answer — the 4 verbatim copies, 1 that moves punctuation
inside $...$, 1 with \\cdots for \\dots, 1 reworded (overlap 0.62); MATH train against MATH-500
flags 30, nearly all sharing a diagram or set-up with a MATH-500 problem but asking another
question (threshold 0.5 flags 53, including unrelated short problems; 0.7 misses the reworded one).

Candidates come from an inverted index of benchmark n-grams, so a check costs about the number
of n-grams in the training set, not training × benchmark pairs.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass

from skyexp.data.mix import normalise_text

_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def tokens(text: str) -> list[str]:
    s = unicodedata.normalize("NFKC", text).lower()
    return _TOKEN.findall(s.replace("$", " "))


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    t = tokens(text)
    return {tuple(t[i : i + n]) for i in range(len(t) - n + 1)}


@dataclass(frozen=True)
class Hit:
    train_index: int
    bench_index: int
    match: str  # exact | ngram
    overlap: float  # 1.0 for exact matches


class BenchmarkIndex:
    """Benchmark problems indexed by normalised text and by n-gram."""

    def __init__(self, problems: list[str], n: int = 10):
        self.problems, self.n = problems, n
        self.exact = {normalise_text(p): i for i, p in enumerate(problems)}
        self.grams = [ngrams(p, n) for p in problems]
        self.index: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for i, gs in enumerate(self.grams):
            for g in gs:
                self.index[g].append(i)

    def match(self, text: str, threshold: float) -> tuple[int, str, float] | None:
        """(benchmark index, exact | ngram, overlap) of the closest benchmark problem at or above
        the threshold, or None."""
        j = self.exact.get(normalise_text(text))
        if j is not None:
            return j, "exact", 1.0
        mine = ngrams(text, self.n)
        if not mine:
            return None
        shared = Counter(j for g in mine for j in self.index.get(g, ()))
        best = None
        for j, c in shared.items():
            overlap = c / min(len(mine), len(self.grams[j]))
            if overlap >= threshold and (best is None or overlap > best[2]):
                best = (j, "ngram", overlap)
        return best


def find_contaminated(
    train: list[str], bench: list[str], n: int = 10, threshold: float = 0.6
) -> list[Hit]:
    """Every training problem that matches a benchmark problem, with the closest match."""
    idx = BenchmarkIndex(bench, n)
    hits = []
    for i, text in enumerate(train):
        m = idx.match(text, threshold)
        if m is not None:
            hits.append(Hit(i, *m))
    return hits
