"""Data mixes: several sources with weights or counts, repeated problems removed.

The mix is materialised once into one list of problems, deterministically from `seed`, and the
PromptSampler then runs shuffled epochs over it, sharded across ranks and resumable — so a mix
needs no sampler of its own. A source with weight w contributes round(w * rows) problems per
epoch (w = 1: every row once; w < 1: a seeded subset; w > 1: every row repeated, the remainder a
seeded subset); count > 0 asks for exactly that many instead.

Duplicates: problems are compared by a hash of their normalised text (see `normalise_text`).
Within the whole mix the first occurrence wins in the order the sources are listed; every
removal is counted against the source that lost it, within or across sources.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import unicodedata
from dataclasses import dataclass, field, replace

from skyexp.records import Problem

log = logging.getLogger(__name__)

_LATEX_NOISE = re.compile(r"\\left|\\right|\\displaystyle|\\!|\\,|\\;|\\:|\$|\\\(|\\\)|\\\[|\\\]")
_FRAC = re.compile(r"\\[dt]frac")
_SPACE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """Canonical form for duplicate detection: Unicode NFKC, lower case, no math delimiters or
    LaTeX sizing/spacing commands, \\dfrac and \\tfrac as \\frac, no whitespace at all (LaTeX
    spacing differs between copies of the same problem)."""
    s = unicodedata.normalize("NFKC", text).lower()
    s = _FRAC.sub(r"\\frac", _LATEX_NOISE.sub("", s))
    return _SPACE.sub("", s)


def text_key(text: str) -> str:
    return hashlib.sha1(normalise_text(text).encode()).hexdigest()


@dataclass
class SourceStats:
    label: str
    rows: int  # usable rows loaded
    bad: int = 0
    filtered: int = 0
    dup_within: int = 0  # repeats of a problem seen earlier in the same source
    # repeats of a problem kept from another source
    dup_across: dict[str, int] = field(default_factory=dict)
    taken: int = 0  # problems this source puts in each epoch

    def line(self) -> str:
        across = sum(self.dup_across.values())
        detail = ", ".join(f"{n} in {s}" for s, n in self.dup_across.items())
        return (
            f"{self.label}: {self.rows} rows, {self.bad} bad, {self.filtered} filtered, "
            f"{self.dup_within} repeated, "
            f"{across} duplicates of other sources{f' ({detail})' if detail else ''}, "
            f"{self.taken} per epoch"
        )


def dedup(groups: list[tuple[str, list[Problem]]]) -> tuple[list[list[Problem]], list[SourceStats]]:
    """Drop problems whose normalised text was already seen (first listed source wins)."""
    seen: dict[str, str] = {}
    out, stats = [], []
    for label, problems in groups:
        st = SourceStats(label, len(problems))
        kept = []
        for p in problems:
            k = text_key(p.problem)
            owner = seen.get(k)
            if owner is None:
                seen[k] = label
                kept.append(p)
            elif owner == label:
                st.dup_within += 1
            else:
                st.dup_across[owner] = st.dup_across.get(owner, 0) + 1
        out.append(kept)
        stats.append(st)
    return out, stats


def take(problems: list[Problem], weight: float, count: int, rng: random.Random) -> list[Problem]:
    """count > 0: exactly `count` problems; else round(weight * len). Whole copies of the source
    first (upsampling), then a seeded sample without replacement for the remainder."""
    k = count if count > 0 else round(weight * len(problems))
    if not problems or k <= 0:
        return []
    whole, rest = divmod(k, len(problems))
    return problems * whole + rng.sample(problems, rest)


def labels_for(sources: list[str]) -> list[str]:
    """Unique labels for mix entries: the source name, numbered when a source appears twice."""
    out = []
    for i, s in enumerate(sources):
        out.append(s if sources.count(s) == 1 else f"{s}{sources[: i + 1].count(s)}")
    return out


def build_mix(
    groups: list[tuple[str, list[Problem]]],
    weights: list[float],
    counts: list[int],
    seed: int,
    remove_duplicates: bool = True,
) -> tuple[list[Problem], list[SourceStats]]:
    """One problem list for the mix. Ids are prefixed with the entry's label (unique across the
    mix) and meta['mix_source'] records it. Deterministic in `seed`."""
    if remove_duplicates:
        kept, stats = dedup(groups)
    else:
        kept, stats = [g for _, g in groups], [SourceStats(lb, len(g)) for lb, g in groups]
    out: list[Problem] = []
    for i, ((label, _), problems, st) in enumerate(zip(groups, kept, stats)):
        rng = random.Random(seed * 1_000_003 + i)
        tagged = [
            replace(p, id=f"{label}/{p.id}", meta={**p.meta, "mix_source": label}) for p in problems
        ]
        chosen = take(tagged, weights[i], counts[i], rng)
        st.taken = len(chosen)
        out += chosen
    return out, stats
