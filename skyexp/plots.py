"""PNG figures in the run directory: entropy dynamics and pass@k curves (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_entropy(steps: list[int], entropy: list[float], reward: list[float], path: Path) -> None:
    """Token entropy (left axis) and batch mean reward (right axis) against the RL step."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, entropy, color="tab:blue", label="actor/entropy")
    ax.set_xlabel("RL step")
    ax.set_ylabel("mean token entropy (nats)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(steps, reward, color="tab:orange", alpha=0.6, label="critic/score/mean")
    ax2.set_ylabel("batch mean reward", color="tab:orange")
    ax.set_title("Entropy dynamics during RL")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_passk(curves: dict[str, dict[int, float]], path: Path, title: str = "pass@k") -> None:
    """One line per label (e.g. before / after RL), k on a log2 axis."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, curve in curves.items():
        ks = sorted(curve)
        ax.plot(ks, [curve[k] for k in ks], marker="o", label=label)
    _finish_passk(fig, ax, path, title)


def plot_passk_benchmarks(curves: dict[str, dict[str, dict[int, float]]], path: Path, title: str = "pass@k") -> None:
    """curves[benchmark][checkpoint] = {k: pass@k}: one colour per benchmark, one line style per
    checkpoint (e.g. before / after RL), k on a log2 axis."""
    styles = ["-", "--", ":", "-."]
    labels = list(dict.fromkeys(lbl for per in curves.values() for lbl in per))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (bench, per) in enumerate(curves.items()):
        for lbl, curve in per.items():
            ks = sorted(curve)
            name = bench if len(labels) == 1 else f"{bench} · {lbl}"
            ax.plot(ks, [curve[k] for k in ks], marker="o", color=f"C{i % 10}", linestyle=styles[labels.index(lbl) % len(styles)],
                    label=name)
    _finish_passk(fig, ax, path, title, legend_size="small")


def _finish_passk(fig, ax, path: Path, title: str, legend_size: str = "medium") -> None:
    """Shared look of the pass@k figures: k on a log2 axis, pass@k in [0, 1]."""
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("pass@k")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
