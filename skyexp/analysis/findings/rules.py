"""The measures the findings read from a run (curve ends, relative drops, final held-out pass@k,
second-half entropy, the controller's time at its cap) and the verdict rules that turn a difference
into reproduced / mixed / not reproduced (skyexp.analysis.findings.verdicts states them)."""

from __future__ import annotations

import math

import numpy as np

from skyexp.analysis.findings.runs import Arm, RunRecord
from skyexp.analysis.findings.stats import Agg, aggregate, welch_diff

REPRODUCED, MIXED, NOT = "reproduced", "mixed", "not reproduced"
EDGE = 5  # steps averaged at each end of a curve (single steps are noisy)


def edge_mean(curve: dict[int, float], last: bool) -> float:
    steps = sorted(curve)
    pick = steps[-EDGE:] if last else steps[:EDGE]
    return float(np.mean([curve[s] for s in pick])) if pick else math.nan


def relative_drop(curve: dict[int, float]) -> float:
    """1 - H_end / H_start of a per-step entropy curve (means of the first / last EDGE steps)."""
    start = edge_mean(curve, last=False)
    return 1.0 - edge_mean(curve, last=True) / start if start else math.nan


def start_entropy_t1(records: list[RunRecord]) -> float:
    """The shared SFT start's entropy at the eval temperature: mean over the runs that evaluated
    it."""
    vals = [
        r.before.entropy
        for r in records
        if r.before is not None and math.isfinite(r.before.entropy)
    ]
    return float(np.mean(vals)) if vals else math.nan


def final_pass(r: RunRecord, k: int) -> float:
    f = r.final
    return f.passk.get(k, math.nan) if f else math.nan


def final_entropy_t1(r: RunRecord) -> float:
    return r.final.entropy if r.final else math.nan


def sign_verdict(diff: Agg, sign: int) -> str:
    """sign = +1: the finding predicts diff > 0; -1: diff < 0."""
    if diff.n == 0 or not math.isfinite(diff.mean) or sign * diff.mean <= 0:
        return NOT
    return REPRODUCED if math.isfinite(diff.ci) and sign * diff.mean - diff.ci > 0 else MIXED


def base_runs(records: list[RunRecord]) -> list[RunRecord]:
    return [r for r in records if r.arm == Arm() and r.before is not None and r.final is not None]


def arm_rows(groups: dict[Arm, list[RunRecord]]) -> list[list[str]]:
    """Per arm: sampling entropy at the start and end, its relative drop, the entropy at T = 1 of
    the final held-out samples, the final batch reward and held-out pass@1 / pass@16."""
    rows = []
    for arm, runs in groups.items():
        rows.append([arm.label, str(len(runs)),
                     aggregate([edge_mean(r.entropy, False) for r in runs]).fmt(),
                     aggregate([edge_mean(r.entropy, True) for r in runs]).fmt(),
                     aggregate([relative_drop(r.entropy) for r in runs]).fmt(2),
                     aggregate([final_entropy_t1(r) for r in runs]).fmt(),
                     aggregate([edge_mean(r.reward, True) for r in runs]).fmt(),
                     aggregate([final_pass(r, 1) for r in runs]).fmt(),
                     aggregate([final_pass(r, 16) for r in runs]).fmt()])
    return rows


ARM_HEADER = [
    "arm",
    "seeds",
    "H sampling, start",
    "H sampling, end",
    "relative drop",
    "H at T=1, final eval",
    "batch reward, end",
    "final pass@1",
    "final pass@16",
]


def monotone(values: list[float], sign: int) -> bool:
    return all(sign * (b - a) > 0 for a, b in zip(values, values[1:]))


def ordered_effect(
    groups: dict[Arm, list[RunRecord]], order, metric, sign: int
) -> tuple[bool, Agg]:
    """Arms sorted by `order`: are the per-arm means of `metric` strictly monotone in direction
    `sign`, and the difference last − first arm (Welch 95% CI)."""
    arms = sorted(groups, key=order)
    means = [float(np.nanmean([metric(r) for r in groups[a]])) for a in arms]
    diff = welch_diff([metric(r) for r in groups[arms[-1]]], [metric(r) for r in groups[arms[0]]])
    return monotone(means, sign), diff


def two_claims(first: tuple[bool, Agg], second: tuple[bool, Agg], sign1: int, sign2: int) -> str:
    ok1 = first[0] and sign_verdict(first[1], sign1) == REPRODUCED
    ok2 = second[0] and sign_verdict(second[1], sign2) == REPRODUCED
    some = (
        first[0]
        or second[0]
        or sign_verdict(first[1], sign1) != NOT
        or sign_verdict(second[1], sign2) != NOT
    )
    return REPRODUCED if ok1 and ok2 else MIXED if some else NOT


def second_half_entropy(r: RunRecord) -> float:
    steps = sorted(r.entropy)
    half = steps[len(steps) // 2:]
    return float(np.mean([r.entropy[s] for s in half])) if half else math.nan


def at_cap(r: RunRecord) -> float:
    """Share of the second half's steps whose entropy coefficient sits at entropy.coef_max (the
    controller saturated: it can push no harder)."""
    steps = sorted(r.coef)[len(r.coef) // 2:]
    if not steps or not math.isfinite(r.coef_max):
        return math.nan
    return float(np.mean([r.coef[s] >= r.coef_max * (1 - 1e-6) for s in steps]))


def all_or_none(verdicts: list[str]) -> str:
    """reproduced if every comparison is, not reproduced if none is, else mixed."""
    if all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    return NOT if all(v == NOT for v in verdicts) else MIXED
