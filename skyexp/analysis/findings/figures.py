"""The findings' figures: small PNGs, seed means with 95% t-interval bands (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from skyexp.analysis.findings.runs import Arm, RunRecord  # noqa: E402
from skyexp.analysis.findings.stats import LawFit, aggregate_curves  # noqa: E402

SIZE, DPI = (9, 3.4), 90


def _band(ax, curves: list[dict[int, float]], label: str, color, marker: str | None = None) -> None:
    agg = aggregate_curves(curves)
    xs = list(agg)
    mean = np.array([agg[s].mean for s in xs])
    ci = np.nan_to_num(np.array([agg[s].ci for s in xs]))
    ax.plot(xs, mean, color=color, label=label, marker=marker, markersize=3)
    ax.fill_between(xs, mean - ci, mean + ci, color=color, alpha=0.2, linewidth=0)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def passk_before_after(runs: list[RunRecord], path: Path) -> None:
    """F1/F2: held-out pass@k (k on log2) of the SFT start and after RL, seed means ± 95% CI."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for label, pick, color in (
        ("SFT start", lambda r: r.before, "tab:gray"),
        ("after RL", lambda r: r.final, "tab:red"),
    ):
        _band(ax, [pick(r).passk for r in runs if pick(r)], label, color, marker="o")
    ax.set_xscale("log", base=2)
    ax.set(
        xlabel="k",
        ylabel="held-out pass@k",
        ylim=(0, 1.02),
        title=f"pass@k at T=1, {len(runs)} seeds",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def arm_dynamics(
    groups: dict[Arm, list[RunRecord]], path: Path, title: str, target: float | None = None
) -> None:
    """Three panels per arm (seed mean ± 95% CI): sampling entropy (actor/entropy, at the arm's
    rollout temperature) and batch reward per RL step; held-out entropy at the common eval
    temperature T = 1 at each eval (step 0: the shared SFT start)."""
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=SIZE)
    start = [r.before.entropy for rs in groups.values() for r in rs if r.before is not None]
    for i, (arm, runs) in enumerate(groups.items()):
        c = f"C{i}"
        _band(a1, [r.entropy for r in runs], arm.label, c)
        _band(a2, [r.reward for r in runs], arm.label, c)
        evals = [{s: e.entropy for s, e in r.evals.items() if s > 0} for r in runs]
        if start:
            evals = [{0: float(np.mean(start)), **e} for e in evals]
        _band(a3, evals, arm.label, c, marker="o")
    if target is not None:
        a1.axhline(target, color="k", linestyle=":", label=f"target {target:g}")
    a1.set(xlabel="RL step", ylabel="nats", title="entropy at rollout T (actor/entropy)")
    a2.set(xlabel="RL step", ylabel="mean reward", title="batch reward")
    a3.set(xlabel="RL step", ylabel="nats", title="held-out entropy at T=1")
    for a in (a1, a2, a3):
        a.grid(alpha=0.3)
    a1.legend(fontsize="x-small")
    fig.suptitle(title, fontsize="medium")
    _save(fig, path)


def premature(points: list[tuple[str, float, float, float]], path: Path) -> None:
    """F6: each run's early entropy drop (at T=1) against its final held-out pass@1 and pass@16."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
    labels = list(dict.fromkeys(p[0] for p in points))
    for ax, j, name in ((axes[0], 2, "pass@1"), (axes[1], 3, "pass@16")):
        for i, lbl in enumerate(labels):
            pts = [p for p in points if p[0] == lbl]
            ax.scatter([p[1] for p in pts], [p[j] for p in pts], color=f"C{i}", label=lbl, s=18)
        ax.set(xlabel="early entropy drop at T=1 (nats)", ylabel=f"final held-out {name}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="xx-small")
    _save(fig, path)


def law(points: list[tuple[str, float, float]], fit: LawFit, path: Path) -> None:
    """(held-out entropy at T=1, held-out pass@1) at every eval of every run, with the fitted
    R = -a exp(H) + b (Cui et al., arXiv 2505.22617)."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    labels = list(dict.fromkeys(p[0] for p in points))
    for i, lbl in enumerate(labels):
        pts = [p for p in points if p[0] == lbl]
        ax.scatter([p[1] for p in pts], [p[2] for p in pts], color=f"C{i}", s=12, label=lbl)
    if np.isfinite(fit.a):
        h = np.linspace(0, max(p[1] for p in points) * 1.05, 100)
        ax.plot(h, fit.predict(h), "k--", label=f"a={fit.a:.2f}, b={fit.b:.2f}, R²={fit.r2:.2f}")
    ax.set(
        xlabel="held-out entropy at T=1 (nats)",
        ylabel="held-out pass@1",
        title="entropy-performance law",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="xx-small")
    _save(fig, path)


def passk_over_training(runs: list[RunRecord], path: Path) -> None:
    """pass@k against the RL step, one line per k, seed means ± 95% CI (the per-run figure of
    skyexp.plots, aggregated)."""
    ks = sorted({k for r in runs for e in r.evals.values() for k in e.passk})
    fig, ax = plt.subplots(figsize=(5, 3.4))
    cmap = plt.get_cmap("viridis")
    for i, k in enumerate(ks):
        _band(
            ax,
            [{s: e.passk[k] for s, e in r.evals.items() if k in e.passk} for r in runs],
            f"pass@{k}",
            cmap(1 - (i + 0.5) / len(ks)),
            marker="o",
        )
    ax.set(
        xlabel="RL step",
        ylabel="held-out pass@k",
        ylim=(0, 1.02),
        title=f"pass@k over RL, {len(runs)} seeds",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="xx-small", ncol=2)
    _save(fig, path)
