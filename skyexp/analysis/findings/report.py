"""docs/findings.md and its figures from the findings sweeps' run directories."""

from __future__ import annotations

import math
from pathlib import Path

from skyexp.analysis.findings import figures
from skyexp.analysis.findings.rules import base_runs
from skyexp.analysis.findings.runs import Arm, RunRecord, by_arm
from skyexp.analysis.findings.stats import LawFit, fit_entropy_law
from skyexp.analysis.findings.verdicts import Finding, f1, f2, f3, f4, f5, f6

RULES = (
    "Verdict rules (fixed before the runs): **reproduced** — the effect has the published sign in "
    "every "
    "comparison it needs and the 95% interval of the key difference excludes 0; **mixed** — right "
    "sign on "
    "average but an interval includes 0, or only some of the needed comparisons hold; **not "
    "reproduced** — "
    "the key difference has the wrong sign. Numbers are mean ± sd over RL seeds; intervals are "
    "95% Student t "
    "(paired where the same seed is compared with itself, Welch between arms). Sampling-entropy "
    "ends are means "
    "of the first / last 5 RL steps."
)


def law_points(records: list[RunRecord]) -> list[tuple[str, float, float]]:
    """(arm label, held-out entropy at the eval temperature, held-out pass@1) at every eval of every
    run."""
    return [(r.arm.label, e.entropy, e.passk[1]) for r in records for e in r.evals.values()
            if math.isfinite(e.entropy) and 1 in e.passk]


def law_fits(records: list[RunRecord], findings: dict[str, Finding]) -> dict[str, LawFit]:
    """The entropy-performance law on all runs, and on each of F3-F5's runs."""
    out = {"all runs": fit_entropy_law(*_xy(law_points(records)))}
    for key in ("F3", "F4", "F5"):
        arms = set(findings[key].arms)
        pts = law_points([r for r in records if r.arm.label in arms])
        if pts:
            out[f"{key} runs"] = fit_entropy_law(*_xy(pts))
    return out


def _xy(points):
    return [p[1] for p in points], [p[2] for p in points]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _setup(records: list[RunRecord], sweeps: list[str]) -> str:
    steps = sorted({r.steps for r in records})
    seeds = sorted({r.seed for r in records})
    evals = sorted({s for r in records for s in r.evals})
    temps = sorted({r.eval_temperature for r in records})
    arms = by_arm(records)
    lines = [
        f"- {len(records)} runs in {len(arms)} arms, RL seeds {seeds}, "
        f"{'/'.join(map(str, steps))} RL steps each, "
        f"held-out evals at RL steps {evals} (0: the shared SFT start) at eval temperature "
        f"{temps}.",
        f"- sweep directories: {', '.join(f'`{s}`' for s in sweeps)}",
    ]
    lines += [f"- arm `{a.label}`: {len(rs)} runs" for a, rs in arms.items()]
    return "\n".join(lines)


def _finding_md(f: Finding, fig_dir: str) -> str:
    parts = [f"## {f.key}: {f.title}", "", f"**Verdict: {f.verdict}.** {f.why}", ""]
    if f.arms:
        parts += ["Arms: " + "; ".join(f"`{a}`" for a in f.arms) + ".", ""]
    if f.entropy_kind:
        parts += [f"Entropy shown: {f.entropy_kind}.", ""]
    if f.rows:
        parts += [_table(f.header, f.rows), ""]
    if f.figure:
        parts += [f"![{f.key}]({fig_dir}/{f.figure})", ""]
    return "\n".join(parts)


def draw(
    records: list[RunRecord], findings: dict[str, Finding], fits: dict[str, LawFit], out: Path
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    base = base_runs(records)
    if base:
        figures.passk_before_after(base, out / "f1_f2_passk.png")
        figures.passk_over_training(base, out / "passk_over_training.png")
    groups = by_arm(records)
    for key, title, target in (
        ("F3", "F3: rollout temperature", None),
        ("F4", "F4: SGD steps per rollout batch", None),
        ("F5", "F5: adaptive entropy control", "target"),
    ):
        arms = {a: rs for a, rs in groups.items() if a.label in set(findings[key].arms)}
        if arms:
            tgt = next((a.target for a in arms if a.target is not None), None) if target else None
            figures.arm_dynamics(arms, out / findings[key].figure, title, tgt)
    if findings["F6"].extra.get("points"):
        figures.premature(findings["F6"].extra["points"], out / "f6_premature.png")
    pts = law_points(records)
    if pts:
        figures.law(pts, fits["all runs"], out / "entropy_law.png")


def _law_section(fits: dict, fig_dir: str) -> str:
    """The entropy-performance law's fits and the pass@k-over-training figure."""
    law_rows = [
        [k, str(v.n), f"{v.a:.3f}", f"{v.b:.3f}", f"{v.r2:.3f}", f"{v.ceiling:.3f}"]
        for k, v in fits.items()
    ]
    return "\n".join(
        [
            "## The entropy–performance law (Cui et al., arXiv 2505.22617)",
            "",
            "R = −a·exp(H) + b fitted by least squares to (H, R) = (held-out entropy at T = 1, "
            "held-out pass@1) at every eval of every run in the set (the SFT start included "
            "where a run evaluated it); the ceiling is the predicted R at H → 0, b − a. H and R "
            "come from the same held-out samples (T = 1), so the fit says how tightly accuracy "
            "tracks the policy's entropy under each intervention, not that one causes the other.",
            "",
            _table(["runs", "points", "a", "b", "R²", "ceiling (H→0)"], law_rows),
            "",
            f"![entropy law]({fig_dir}/entropy_law.png)",
            "",
            "## pass@k over training (reference arm)",
            "",
            "Held-out pass@k (T = 1) against the RL step, one line per k, seed means ± 95% CI: "
            "when does pass@k at large k start to fall?",
            "",
            f"![pass@k over training]({fig_dir}/passk_over_training.png)",
            "",
        ]
    )


def build(records: list[RunRecord], sweeps: list[str], doc: Path) -> dict[str, Finding]:
    """Compute F1-F6 and the law fits, draw the figures under <doc's folder>/findings/, write
    doc. Sweeps are named by their directory's name, never by a path of the machine that ran
    them."""
    findings = {
        f.key: f
        for f in (f1(records), f2(records), f3(records), f4(records), f5(records), f6(records))
    }
    fits = law_fits(records, findings)
    fig_dir = doc.parent / doc.stem
    draw(records, findings, fits, fig_dir)
    names = [Path(s).name for s in sweeps]
    summary = _table(
        ["#", "finding", "verdict", "numbers"],
        [[f.key, f.title, f"**{f.verdict}**", f.why] for f in findings.values()],
    )
    text = "\n".join(
        [
            "# Findings on the tiny twin",
            "",
            f"Generated by `python -m skyexp.findings {' '.join(names)}` (the sweep directories) "
            "from the runs' metrics.jsonl, summary.json and .hydra/ files (the runs are not "
            f"committed); do not edit by hand. Reference arm: `{Arm().label}`.",
            "",
            _setup(records, names),
            "",
            RULES,
            "",
            summary,
            "",
            *[_finding_md(f, fig_dir.name) for f in findings.values()],
            _law_section(fits, fig_dir.name),
        ]
    )
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    return findings
