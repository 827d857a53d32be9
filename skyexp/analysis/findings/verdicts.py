"""F1-F6 computed from run records: each finding's arms, per-arm numbers (mean ± sd over seeds,
95% t-intervals), and a verdict from rules fixed before looking at the runs:

- reproduced: the effect has the published sign in every comparison it needs and the 95%
  interval of the key difference excludes 0;
- mixed: the sign is right on average but an interval includes 0, or only some of the needed
  comparisons hold;
- not reproduced: the key difference has the wrong sign (or there is none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from skyexp.analysis.findings.runs import Arm, RunRecord, by_arm
from skyexp.analysis.findings.stats import Agg, aggregate, spearman, welch_diff

REPRODUCED, MIXED, NOT = "reproduced", "mixed", "not reproduced"
EDGE = 5  # steps averaged at each end of a curve (single steps are noisy)


@dataclass
class Finding:
    key: str  # F1..F6
    title: str
    arms: list[str]
    header: list[str]
    rows: list[list[str]]
    verdict: str
    why: str
    figure: str = ""
    entropy_kind: str = ""  # which entropy the numbers and figure show
    extra: dict = field(default_factory=dict)


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


def _sign_verdict(diff: Agg, sign: int) -> str:
    """sign = +1: the finding predicts diff > 0; -1: diff < 0."""
    if diff.n == 0 or not math.isfinite(diff.mean) or sign * diff.mean <= 0:
        return NOT
    return REPRODUCED if math.isfinite(diff.ci) and sign * diff.mean - diff.ci > 0 else MIXED


def base_runs(records: list[RunRecord]) -> list[RunRecord]:
    return [r for r in records if r.arm == Arm() and r.before is not None and r.final is not None]


def f1(records: list[RunRecord]) -> Finding:
    runs = base_runs(records)
    before = [r.before.passk.get(1, math.nan) for r in runs]
    after = [final_pass(r, 1) for r in runs]
    diff = aggregate([a - b for a, b in zip(after, before)])  # paired: same seed's start and end
    rows = [
        ["SFT start (before RL)", aggregate(before).fmt()],
        ["after RL", aggregate(after).fmt()],
        ["after − before (paired)", f"{diff.fmt()} (95% CI [{diff.low:+.3f}, {diff.high:+.3f}])"],
    ]
    return Finding(
        "F1",
        "RL raises pass@1 over the SFT start",
        [f"{Arm().label} ({len(runs)} seeds)"],
        ["held-out pass@1", "mean ± sd over seeds"],
        rows,
        _sign_verdict(diff, +1),
        f"pass@1 changes by {diff.mean:+.3f} (95% CI [{diff.low:+.3f}, {diff.high:+.3f}]).",
        figure="f1_f2_passk.png",
    )


def f2(records: list[RunRecord]) -> Finding:
    runs = base_runs(records)
    ks = (
        sorted(set.intersection(*[set(r.before.passk) & set(r.final.passk) for r in runs]))
        if runs
        else []
    )
    rows, diffs = [], {}
    for k in ks:
        b, a = [r.before.passk[k] for r in runs], [r.final.passk[k] for r in runs]
        diffs[k] = aggregate([x - y for x, y in zip(a, b)])
        rows.append([str(k), aggregate(b).fmt(), aggregate(a).fmt(),
                     f"{diffs[k].mean:+.3f} [{diffs[k].low:+.3f}, {diffs[k].high:+.3f}]"])
    if not ks:
        return Finding(
            "F2",
            "RL narrows pass@k at large k (curves cross)",
            [],
            [],
            [],
            NOT,
            "no before/after evals",
        )
    kmax = ks[-1]
    cross = next((k for k in ks if diffs[k].mean <= 0), None)
    verdict = _sign_verdict(diffs[kmax], -1)
    if verdict == REPRODUCED and diffs[ks[0]].mean <= 0:
        verdict = MIXED  # narrowed everywhere: no crossing
    why = (
        f"pass@{kmax} changes by {diffs[kmax].mean:+.3f} (95% CI [{diffs[kmax].low:+.3f}, "
        f"{diffs[kmax].high:+.3f}]); "
        + (
            f"the mean curves cross between k = {ks[ks.index(cross) - 1]} and k = {cross}."
            if cross and cross != ks[0]
            else "the mean curves do not cross."
        )
    )
    return Finding(
        "F2",
        "RL narrows pass@k at large k relative to SFT (the curves cross)",
        [f"{Arm().label} ({len(runs)} seeds)"],
        ["k", "SFT start", "after RL", "after − before (paired, 95% CI)"],
        rows,
        verdict,
        why,
        figure="f1_f2_passk.png",
        extra={"cross": cross, "kmax": kmax},
    )


def _arm_rows(groups: dict[Arm, list[RunRecord]]) -> list[list[str]]:
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


def _monotone(values: list[float], sign: int) -> bool:
    return all(sign * (b - a) > 0 for a, b in zip(values, values[1:]))


def _ordered_effect(
    groups: dict[Arm, list[RunRecord]], order, metric, sign: int
) -> tuple[bool, Agg]:
    """Arms sorted by `order`: are the per-arm means of `metric` strictly monotone in direction
    `sign`, and the difference last − first arm (Welch 95% CI)."""
    arms = sorted(groups, key=order)
    means = [float(np.nanmean([metric(r) for r in groups[a]])) for a in arms]
    diff = welch_diff([metric(r) for r in groups[arms[-1]]], [metric(r) for r in groups[arms[0]]])
    return _monotone(means, sign), diff


def _two_claims(first: tuple[bool, Agg], second: tuple[bool, Agg], sign1: int, sign2: int) -> str:
    ok1 = first[0] and _sign_verdict(first[1], sign1) == REPRODUCED
    ok2 = second[0] and _sign_verdict(second[1], sign2) == REPRODUCED
    some = (
        first[0]
        or second[0]
        or _sign_verdict(first[1], sign1) != NOT
        or _sign_verdict(second[1], sign2) != NOT
    )
    return REPRODUCED if ok1 and ok2 else MIXED if some else NOT


def f3(records: list[RunRecord]) -> Finding:
    groups = {
        a: rs for a, rs in by_arm(records).items() if a.sgd_steps == 1 and a.entropy == "none"
    }
    kind = ("H sampling = actor/entropy at each arm's rollout temperature; "
            "H at T=1 = held-out samples at T = 1")
    if len(groups) < 2:
        return Finding(
            "F3",
            "higher rollout temperature → higher entropy, slower collapse",
            [],
            [],
            [],
            NOT,
            "fewer than two temperature arms",
            entropy_kind=kind,
        )
    level = _ordered_effect(groups, lambda a: a.temperature, final_entropy_t1, +1)
    drop = _ordered_effect(groups, lambda a: a.temperature, lambda r: relative_drop(r.entropy), -1)
    why = (
        f"final entropy at T=1, highest − lowest temperature: {level[1].mean:+.3f} (95% CI "
        f"[{level[1].low:+.3f}, "
        f"{level[1].high:+.3f}]), monotone in T: {level[0]}; relative drop of the sampling "
        "entropy, highest − lowest: "
        f"{drop[1].mean:+.2f} (95% CI [{drop[1].low:+.2f}, {drop[1].high:+.2f}]), monotone "
        f"(falling) in T: {drop[0]}."
    )
    return Finding(
        "F3",
        "higher rollout temperature → higher entropy, slower collapse",
        [a.label for a in groups],
        ARM_HEADER,
        _arm_rows(groups),
        _two_claims(level, drop, +1, -1),
        why,
        figure="f3_temperature.png",
        entropy_kind=kind,
    )


def f4(records: list[RunRecord]) -> Finding:
    groups = {
        a: rs for a, rs in by_arm(records).items() if a.temperature == 1.0 and a.entropy == "none"
    }
    kind = ("all arms sample at T = 1, so H sampling and H at T=1 measure the same policy entropy "
            "(train vs held-out prompts)")
    if len(groups) < 2:
        return Finding(
            "F4",
            "more off-policy SGD steps per batch → faster collapse",
            [],
            [],
            [],
            NOT,
            "fewer than two SGD-step arms",
            entropy_kind=kind,
        )
    level = _ordered_effect(groups, lambda a: a.sgd_steps, final_entropy_t1, -1)
    drop = _ordered_effect(groups, lambda a: a.sgd_steps, lambda r: relative_drop(r.entropy), +1)
    why = (
        f"final entropy at T=1, most − fewest SGD steps: {level[1].mean:+.3f} (95% CI "
        f"[{level[1].low:+.3f}, "
        f"{level[1].high:+.3f}]), monotone: {level[0]}; relative drop of the sampling entropy, "
        "most − fewest: "
        f"{drop[1].mean:+.2f} (95% CI [{drop[1].low:+.2f}, {drop[1].high:+.2f}]), monotone "
        f"(rising): {drop[0]}."
    )
    return Finding(
        "F4",
        "more off-policy SGD steps per batch → faster collapse",
        [a.label for a in groups],
        ARM_HEADER,
        _arm_rows(groups),
        _two_claims(level, drop, -1, +1),
        why,
        figure="f4_offpolicy.png",
        entropy_kind=kind,
    )


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


def f5(records: list[RunRecord], tolerance: float = 0.1) -> Finding:
    """Adaptive control holds entropy near its target: the adaptive arm's mean entropy over the
    second half of training lies within `tolerance` (relative) of the target, 95% CI included,
    and the no-bonus arm's does not."""
    groups = {
        a: rs for a, rs in by_arm(records).items() if a.temperature == 1.0 and a.sgd_steps == 1
    }
    kind = "actor/entropy at the rollout temperature T = 1 (the quantity the controller reads)"
    adaptive = [a for a in groups if a.entropy == "adaptive"]
    if Arm() not in groups or not adaptive:
        return Finding(
            "F5",
            "adaptive entropy control holds entropy near its target",
            [],
            [],
            [],
            NOT,
            "needs the no-bonus arm and an adaptive arm",
            entropy_kind=kind,
        )
    rows, verdicts = [], []
    none_h = aggregate([second_half_entropy(r) for r in groups[Arm()]])
    for arm in adaptive:
        h = aggregate([second_half_entropy(r) for r in groups[arm]])
        lo, hi = arm.target * (1 - tolerance), arm.target * (1 + tolerance)
        held = lo <= h.low and h.high <= hi
        near = lo <= h.mean <= hi
        none_off = not (lo <= none_h.mean <= hi)
        verdicts.append(
            REPRODUCED if held and none_off else MIXED if (near or h.mean > none_h.mean) else NOT
        )
        rows.append(
            [
                arm.label,
                str(h.n),
                f"{arm.target:g}",
                f"{h.fmt()} [{h.low:.3f}, {h.high:.3f}]",
                none_h.fmt(),
                aggregate([at_cap(r) for r in groups[arm]]).fmt(2),
                aggregate([final_pass(r, 1) for r in groups[arm]]).fmt(),
                aggregate([final_pass(r, 1) for r in groups[Arm()]]).fmt(),
            ]
        )
    verdict = (
        REPRODUCED
        if all(v == REPRODUCED for v in verdicts)
        else NOT
        if all(v == NOT for v in verdicts)
        else MIXED
    )
    why = "; ".join(
        f"{r[0]}: mean entropy over the second half {r[3]} against target {r[2]}" for r in rows
    )
    why += (
        f"; without a bonus {none_h.fmt()}. 'Near' = the 95% CI inside ±{tolerance:.0%} of the "
        "target, and the "
        "no-bonus arm's mean outside it."
    )
    return Finding(
        "F5",
        "adaptive entropy control holds entropy near its target",
        [a.label for a in [Arm(), *adaptive]],
        [
            "arm",
            "seeds",
            "target",
            "H 2nd half (95% CI)",
            "H 2nd half, no bonus",
            "share of 2nd half at coef cap",
            "final pass@1",
            "final pass@1, no bonus",
        ],
        rows,
        verdict,
        why,
        figure="f5_adaptive.png",
        entropy_kind=kind,
    )


def f6(records: list[RunRecord], early_step: int | None = None) -> Finding:
    """Across every run: the early drop of the policy's entropy at T = 1 (shared SFT start minus the
    first held-out eval during RL) against the final held-out pass@1 and pass@16 (Spearman)."""
    h0 = start_entropy_t1(records)
    kind = ("entropy at the common T = 1 on held-out prompts (val/<bench>/entropy), "
            "so temperature arms compare")
    pts = []
    for r in records:
        during = sorted(s for s in r.evals if 0 < s < max(r.evals, default=0))
        s = early_step if early_step in r.evals else (during[0] if during else None)
        if s is not None and math.isfinite(r.evals[s].entropy) and r.final is not None:
            pts.append((r, h0 - r.evals[s].entropy, final_pass(r, 1), final_pass(r, 16), s))
    if len(pts) < 3 or not math.isfinite(h0):
        return Finding(
            "F6",
            "premature entropy collapse goes with a lower final test score",
            [],
            [],
            [],
            NOT,
            "fewer than 3 runs with an early eval entropy",
            entropy_kind=kind,
        )
    drop = [p[1] for p in pts]
    rho1, p1 = spearman(drop, [p[2] for p in pts])
    rho16, p16 = spearman(drop, [p[3] for p in pts])
    rows = [
        ["final pass@1", f"{rho1:+.2f}", f"{p1:.3f}"],
        ["final pass@16", f"{rho16:+.2f}", f"{p16:.3f}"],
    ]
    verdict = REPRODUCED if rho1 < 0 and p1 < 0.05 else MIXED if rho1 < 0 or rho16 < 0 else NOT
    why = (
        f"Spearman ρ (early drop, final pass@1) = {rho1:+.2f} (p = {p1:.3f}), (early drop, final "
        "pass@16) = "
        f"{rho16:+.2f} (p = {p16:.3f}); {len(pts)} runs; early drop = H(T=1) of the SFT start "
        f"({h0:.3f}) − H(T=1) at RL step {pts[0][4]}; "
        f"p from 10,000 random pairings. Arms differ in more than entropy, so this is "
        "a correlation across interventions, not an effect of entropy alone."
    )
    return Finding(
        "F6",
        "premature entropy collapse goes with a lower final test score",
        ["every run above"],
        ["early entropy drop vs", "Spearman ρ", "p"],
        rows,
        verdict,
        why,
        figure="f6_premature.png",
        entropy_kind=kind,
        extra={"points": [(p[0].arm.label, p[1], p[2], p[3]) for p in pts]},
    )
