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

from skyexp.analysis.findings.rules import (
    ARM_HEADER,
    MIXED,
    NOT,
    REPRODUCED,
    all_or_none,
    arm_rows,
    at_cap,
    base_runs,
    final_entropy_t1,
    final_pass,
    ordered_effect,
    relative_drop,
    second_half_entropy,
    sign_verdict,
    start_entropy_t1,
    two_claims,
)
from skyexp.analysis.findings.runs import Arm, RunRecord, by_arm
from skyexp.analysis.findings.stats import Agg, aggregate, spearman


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
        sign_verdict(diff, +1),
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
    verdict = sign_verdict(diffs[kmax], -1)
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
    level = ordered_effect(groups, lambda a: a.temperature, final_entropy_t1, +1)
    drop = ordered_effect(groups, lambda a: a.temperature, lambda r: relative_drop(r.entropy), -1)
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
        arm_rows(groups),
        two_claims(level, drop, +1, -1),
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
    level = ordered_effect(groups, lambda a: a.sgd_steps, final_entropy_t1, -1)
    drop = ordered_effect(groups, lambda a: a.sgd_steps, lambda r: relative_drop(r.entropy), +1)
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
        arm_rows(groups),
        two_claims(level, drop, -1, +1),
        why,
        figure="f4_offpolicy.png",
        entropy_kind=kind,
    )


def _f5_arm(arm: Arm, runs: list[RunRecord], none_runs: list[RunRecord], none_h: Agg,
            tolerance: float) -> tuple[str, list[str]]:
    """One adaptive arm of F5: its verdict and table row (second-half entropy against the
    target's ±tolerance band, beside the no-bonus arm)."""
    h = aggregate([second_half_entropy(r) for r in runs])
    lo, hi = arm.target * (1 - tolerance), arm.target * (1 + tolerance)
    held = lo <= h.low and h.high <= hi
    near = lo <= h.mean <= hi
    none_off = not (lo <= none_h.mean <= hi)
    verdict = REPRODUCED if held and none_off else MIXED if (near or h.mean > none_h.mean) else NOT
    row = [
        arm.label,
        str(h.n),
        f"{arm.target:g}",
        f"{h.fmt()} [{h.low:.3f}, {h.high:.3f}]",
        none_h.fmt(),
        aggregate([at_cap(r) for r in runs]).fmt(2),
        aggregate([final_pass(r, 1) for r in runs]).fmt(),
        aggregate([final_pass(r, 1) for r in none_runs]).fmt(),
    ]
    return verdict, row


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
    none_h = aggregate([second_half_entropy(r) for r in groups[Arm()]])
    arms = [_f5_arm(arm, groups[arm], groups[Arm()], none_h, tolerance) for arm in adaptive]
    rows, verdict = [row for _, row in arms], all_or_none([v for v, _ in arms])
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
