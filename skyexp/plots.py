"""PNG figures in the run directory: entropy dynamics and pass@k curves (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter  # noqa: E402


def _moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_entropy(steps: list[int], entropy: list[float], reward: list[float], path: Path,
                 coef: list[float] | None = None, target: float | None = None,
                 boundaries: list[int] | None = None) -> None:
    """Two panels against the RL step. Top: token entropy (left axis, from 0, so that a drift of
    a few thousandths looks as small as it is), the entropy controller's target as a dashed line
    and its coefficient `actor/entropy_coeff` on the right axis (when given). Bottom: the batch
    mean reward, faint per step with its trailing mean over about a tenth of the run (at least 1,
    at most 25 steps) on top. Stage boundaries (the first RL step of each later stage) are dotted
    vertical lines in both. Tick labels are absolute values (no offset such as +4.5e-1)."""
    fig, (ax, axr) = plt.subplots(2, 1, sharex=True, figsize=(7, 6), height_ratios=[3, 2])
    lines = ax.plot(steps, entropy, color="tab:blue", label="actor/entropy")
    if target is not None:
        label = f"entropy target ({target:g}, read on actor/entropy_trained)"
        lines.append(ax.axhline(target, color="tab:blue", linestyle="--", linewidth=1, label=label))
    top = max([*entropy, target or 0.0]) if entropy else 1.0
    ax.set_ylim(0, top * 1.15 or 1.0)
    ax.set_ylabel("mean token entropy (nats)", color="tab:blue")
    if coef is not None:
        axc = ax.twinx()
        lines += axc.plot(steps, coef, color="tab:green", linewidth=1.2,
                          label="actor/entropy_coeff")
        axc.set_ylim(0, max(max(coef, default=0.0) * 1.15, 1e-4))
        axc.set_ylabel("entropy coefficient", color="tab:green")
        _absolute_ticks(axc)
    ax.legend(lines, [ln.get_label() for ln in lines], loc="lower left", fontsize="small")
    ax.set_title("Entropy dynamics during RL")
    window = max(1, min(25, len(reward) // 10))
    axr.plot(steps, reward, color="tab:orange", alpha=0.3, linewidth=0.8,
             label="critic/score/mean (per step)")
    if window > 1:
        axr.plot(steps, _moving_average(reward, window), color="tab:orange", linewidth=2,
                 label=f"critic/score/mean (mean of {window} steps)")
    axr.set_ylabel("batch mean reward", color="tab:orange")
    axr.set_xlabel("RL step")
    axr.legend(fontsize="small", loc="best")
    for a in (ax, axr):
        _absolute_ticks(a)
        a.grid(alpha=0.3)
        for b in boundaries or []:
            a.axvline(b - 0.5, color="grey", linestyle=":", linewidth=1)
    if boundaries:
        for k, b in enumerate(boundaries, start=1):
            ax.annotate(f"stage {k}", (b - 0.5, 1), xycoords=("data", "axes fraction"),
                        xytext=(2, -10), textcoords="offset points", fontsize="x-small",
                        color="grey")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _absolute_ticks(ax) -> None:
    """Tick labels as the values themselves: no offset (+4.5e-1) and no scientific multiplier."""
    fmt = ScalarFormatter(useOffset=False)
    fmt.set_scientific(False)
    ax.yaxis.set_major_formatter(fmt)


def metric_by_step(metrics_path: Path, key: str) -> dict[int, float]:
    """{RL step: value} of one metric in a run's metrics.jsonl (rows without it skipped)."""
    import json

    out: dict[int, float] = {}
    if not Path(metrics_path).exists():
        return out
    for line in Path(metrics_path).read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        if row.get(key) is not None and row.get("train/rl_step") is not None:
            out[int(row["train/rl_step"])] = row[key]
    return out


def _counts(n: int | None, problems: int | None) -> str:
    """`n=16 samples, 200 problems` (what a pass@k estimate rests on), or "" when unknown."""
    parts = ([f"n={n} samples"] if n else []) + ([f"{problems} problems"] if problems else [])
    return ", ".join(parts)


# before / after RL stay apart where they meet: the first curve dashed with large hollow squares
# drawn above the second (solid, small dots), so neither hides the other
_PASSK_STYLES = [
    {"linestyle": "--", "marker": "s", "markersize": 9, "fillstyle": "none", "markeredgewidth": 1.5,
     "zorder": 3},
    {"linestyle": "-", "marker": "o", "markersize": 4, "zorder": 2},
    {"linestyle": ":", "marker": "^", "markersize": 6, "zorder": 2},
]


def plot_passk(
    curves: dict[str, dict[int, float]],
    path: Path,
    title: str = "pass@k",
    n: int | None = None,
    problems: int | None = None,
) -> None:
    """One line per label (e.g. before / after RL), k on a log2 axis labelled 1, 2, 4, ...; `n`
    (samples per problem) and `problems` join the title."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, curve) in enumerate(curves.items()):
        ks = sorted(curve)
        ax.plot(ks, [curve[k] for k in ks], label=label, **_PASSK_STYLES[i % len(_PASSK_STYLES)])
    counts = _counts(n, problems)
    _finish_passk(
        fig,
        ax,
        path,
        f"{title}\n{counts}" if counts else title,
        [k for c in curves.values() for k in c],
    )


def plot_passk_benchmarks(
    curves: dict[str, dict[str, dict[int, float]]],
    path: Path,
    title: str = "pass@k",
    counts: dict[str, tuple[int, int]] | None = None,
) -> None:
    """curves[benchmark][checkpoint] = {k: pass@k}: one colour per benchmark, one line style per
    checkpoint (e.g. before / after RL), k on a log2 axis labelled 1, 2, 4, ...; counts[benchmark]
    = (samples per problem, problems) joins that benchmark's legend entry."""
    styles = ["-", "--", ":", "-."]
    labels = list(dict.fromkeys(lbl for per in curves.values() for lbl in per))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (bench, per) in enumerate(curves.items()):
        shown = f"{bench} ({_counts(*counts[bench])})" if counts and bench in counts else bench
        for lbl, curve in per.items():
            ks = sorted(curve)
            name = shown if len(labels) == 1 else f"{shown} · {lbl}"
            ax.plot(
                ks,
                [curve[k] for k in ks],
                marker="o",
                color=f"C{i % 10}",
                linestyle=styles[labels.index(lbl) % len(styles)],
                label=name,
            )
    ks = [k for per in curves.values() for c in per.values() for k in c]
    _finish_passk(fig, ax, path, title, ks, legend_size="small")


def _finish_passk(
    fig, ax, path: Path, title: str, ks: list[int], legend_size: str = "medium"
) -> None:
    """Shared look of the pass@k figures: k on a log2 axis with a tick at each k drawn, written
    1, 2, 4, ... (not 2^0, 2^1, ...); pass@k in [0, 1]."""
    ax.set_xscale("log", base=2)
    ticks = sorted(set(ks))
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(ticks, [f"{k:g}" for k in ticks])
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("pass@k")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- pass@k over training ------------------------------------------------------------------------

def passk_by_step(metrics_path: Path, bench: str) -> dict[int, dict[int, float]]:
    """Every held-out eval in a run's metrics.jsonl: {RL step: {k: val/<bench>/pass@k}} (before RL
    is step 0, eval.every rows their step, after RL the last step)."""
    import json
    import re

    pattern = re.compile(rf"^val/{re.escape(bench)}/pass@(\d+)$")
    out: dict[int, dict[int, float]] = {}
    if not Path(metrics_path).exists():
        return out
    for line in Path(metrics_path).read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        curve = {
            int(m[1]): v for key, v in row.items() if (m := pattern.match(key)) and v is not None
        }
        if curve and row.get("train/rl_step") is not None:
            out[int(row["train/rl_step"])] = curve
    return out


def plot_passk_over_training(
    evals: dict[int, dict[int, float]], path: Path, title: str = "pass@k over training"
) -> None:
    """pass@k against the RL step, one line per k (darker = larger k): when does pass@k at large k
    start to fall while pass@1 rises?"""
    steps = sorted(evals)
    ks = sorted({k for curve in evals.values() for k in curve})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("viridis")
    for i, k in enumerate(ks):
        xs = [s for s in steps if k in evals[s]]
        ax.plot(
            xs,
            [evals[s][k] for s in xs],
            marker="o",
            color=cmap(1 - (i + 0.5) / len(ks)),
            label=f"pass@{k}",
        )
    ax.set_xlabel("RL step")
    ax.set_ylabel("held-out pass@k")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_passk_over_training(run_dir: Path, bench: str, log=None) -> Path | None:
    """At the end of a run: draw passk_over_training.png from the run's metrics.jsonl (needs two
    or more evals: eval.before / eval.every / eval.after) and, given the run's `log`, log it to W&B
    as val/<bench>/pass@k_over_training at the last RL step. Returns the figure's path, or None."""
    evals = passk_by_step(Path(run_dir) / "metrics.jsonl", bench)
    if len(evals) < 2:
        return None
    path = Path(run_dir) / "passk_over_training.png"
    plot_passk_over_training(evals, path, f"pass@k on {bench} (held out) over RL")
    if log is not None:
        try:
            import wandb
        except ImportError:
            return path
        log(
            {
                f"val/{bench}/pass@k_over_training": wandb.Image(str(path)),
                "train/rl_step": max(evals),
            }
        )
    return path
