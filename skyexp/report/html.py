"""The offline report: one self-contained HTML page (inline PNG figures, no scripts, no network)
with the sweep's panels and final-value tables, grouped by the config keys that differ."""

from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from skyexp.report.runs import (  # noqa: E402
    RL_STEP,
    Run,
    differing_keys,
    group_runs,
    mean_sd,
    pass_keys,
    summary_passk,
)

# (panel id, title, metric, y label): the per-step curves against train/rl_step
CURVES = [
    ("entropy", "Token entropy", "actor/entropy", "mean token entropy (nats)"),
    ("reward", "Reward", "critic/score/mean", "mean score"),
    ("entropy_coeff", "Entropy coefficient", "actor/entropy_coeff", "coefficient"),
]
# (column, summary.json key or a derived name)
FINAL = [
    ("entropy end", "entropy_end"),
    ("reward end", "reward_end"),
    ("pass@1 before", "pass@1_before"),
    ("pass@1 after", "pass@1_after"),
    ("Δ pass@1", "gain@1"),
    ("pass@kmax after", "pass@kmax_after"),
    ("RL steps", "rl_steps"),
    ("wall s", "wall_s"),
]
PANELS = [
    "entropy",
    "reward",
    "entropy_coeff",
    "passk_training",
    "passk_before_after",
    "final_table",
    "runs_table",
]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _mean_curve(runs: list[Run], key: str) -> tuple[list[float], list[float], list[float]]:
    """Steps, mean and sd over the runs of a metric (each step over the runs that logged it)."""
    at: dict[float, list[float]] = {}
    for r in runs:
        for x, y in zip(*r.series(key)):
            at.setdefault(x, []).append(y)
    xs = sorted(at)
    stats = [mean_sd(at[x]) for x in xs]
    return xs, [m for m, _ in stats], [s for _, s in stats]


def _curve_figure(groups: dict[str, list[Run]], key: str, title: str, ylabel: str) -> str | None:
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    drawn = False
    for name, runs in groups.items():
        xs, mu, sd = _mean_curve(runs, key)
        if not xs:
            continue
        drawn = True
        (line,) = ax.plot(
            xs, mu, marker="." if len(xs) < 30 else None, label=f"{name} (n={len(runs)})"
        )
        if len(runs) > 1:
            ax.fill_between(
                xs,
                [m - s for m, s in zip(mu, sd)],
                [m + s for m, s in zip(mu, sd)],
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
    if not drawn:
        plt.close(fig)
        return None
    ax.set(xlabel=RL_STEP, ylabel=ylabel, title=f"{title} (mean ± sd over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def _passk_training_figure(groups: dict[str, list[Run]], bench: str, ks: list[int]) -> str | None:
    show = sorted({ks[0], ks[-1]} | ({k for k in ks if k in (4, 8)} if len(ks) > 2 else set()))
    fig, axes = plt.subplots(1, len(show), figsize=(3.4 * len(show), 3.2), squeeze=False)
    drawn = False
    for ax, k in zip(axes[0], show):
        for name, runs in groups.items():
            xs, mu, sd = _mean_curve(runs, f"val/{bench}/pass@{k}")
            if xs:
                drawn = True
                ax.errorbar(
                    xs, mu, yerr=sd if len(runs) > 1 else None, marker="o", capsize=3, label=name
                )
        ax.set(xlabel=RL_STEP, ylabel=f"pass@{k}", title=f"{bench} pass@{k}")
        ax.grid(alpha=0.3)
    if not drawn:
        plt.close(fig)
        return None
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _before_after(runs: list[Run], which: str) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for r in runs:
        for k, v in summary_passk(r, which).items():
            out.setdefault(k, []).append(v)
    return out


def _passk_before_after_figure(groups: dict[str, list[Run]]) -> str | None:
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    drawn = False
    for name, runs in groups.items():
        color = None
        for which, style in (("before", "--"), ("after", "-")):
            pts = _before_after(runs, which)
            if not pts:
                continue
            drawn = True
            ks = sorted(pts)
            (line,) = ax.plot(
                ks,
                [mean_sd(pts[k])[0] for k in ks],
                style,
                marker="o",
                color=color,
                label=f"{name} {which}",
            )
            color = line.get_color()
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log", base=2)
    ax.set(
        xlabel="k",
        ylabel="pass@k",
        title="pass@k before (dashed) and after (solid) RL, mean over seeds",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def final_values(run: Run) -> dict[str, float]:
    """One run's final values for the table (missing ones left out)."""
    s = run.summary
    out = {k: float(s[k]) for _, k in FINAL if isinstance(s.get(k), (int, float))}
    if "pass@1_before" in out and "pass@1_after" in out:
        out["gain@1"] = out["pass@1_after"] - out["pass@1_before"]
    after = summary_passk(run, "after")
    if after:
        out["pass@kmax_after"] = after[max(after)]
    return out


def final_table(groups: dict[str, list[Run]]) -> list[list[str]]:
    """Rows of [group, seeds, 'mean ± sd' per FINAL column]."""
    rows = []
    for name, runs in groups.items():
        vals = [final_values(r) for r in runs]
        row = [name, ",".join(str(r.seed) for r in runs)]
        for _, key in FINAL:
            got = [v[key] for v in vals if key in v]
            if not got:
                row.append("–")
            else:
                mu, sd = mean_sd(got)
                digits = 1 if key in ("wall_s", "rl_steps") else 3
                row.append(
                    f"{mu:.{digits}f} ± {sd:.{digits}f}" if len(got) > 1 else f"{mu:.{digits}f}"
                )
        rows.append(row)
    return rows


def _table(header: list[str], rows: list[list[str]], cls: str) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _section(panel: str, title: str, inner: str, cls: str = "wide") -> str:
    head = f'<section id="{panel}" data-panel="{panel}" class="{cls}">'
    return f"{head}<h2>{html.escape(title)}</h2>{inner}</section>"


def _img(b64: str | None, alt: str) -> str:
    if b64 is None:
        return f'<p class="empty">no run logged {html.escape(alt)}</p>'
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222;
background:#fff}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}
th{background:#f3f3f3}img{max-width:100%}
section.fig{display:inline-block;width:49%;vertical-align:top}
code{background:#f5f5f5;padding:0 3px}.empty{color:#888}"""


def build_html(runs: list[Run], roots: list[str]) -> str:
    """The whole page for these runs."""
    keys = differing_keys(runs)
    groups = group_runs(runs, keys)
    parts = [
        f"<h1>Sweep report: {len(runs)} runs in {len(groups)} groups</h1>",
        "<p>Sources: " + ", ".join(f"<code>{html.escape(str(r))}</code>" for r in roots) + "</p>",
        "<p>Grouped by the config keys that differ between the runs: "
        + (", ".join(f"<code>{html.escape(k)}</code>" for k in keys) or "none (one group)")
        + "; seeds (<code>trainer.seed</code>) are averaged, bands and error bars are ± 1 sd over "
        "seeds.</p>",
    ]
    for panel, title, key, ylabel in CURVES:
        parts.append(
            _section(
                panel,
                f"{title} vs {RL_STEP}",
                _img(_curve_figure(groups, key, title, ylabel), key),
                "fig",
            )
        )
    figs = [
        _img(_passk_training_figure(groups, bench, ks), f"val/{bench}/pass@k")
        for bench, ks in pass_keys(runs).items()
    ]
    parts.append(_section("passk_training", "pass@k over training (held-out evaluations)",
                          "".join(figs) or _img(None, "val/<benchmark>/pass@k")))
    parts.append(
        _section(
            "passk_before_after",
            "pass@k before and after RL",
            _img(_passk_before_after_figure(groups), "pass@k_before / pass@k_after"),
            "fig",
        )
    )
    header = ["group", "seeds"] + [c for c, _ in FINAL]
    parts.append(
        _section(
            "final_table",
            "Final values (mean ± sd over seeds)",
            _table(header, final_table(groups), "final"),
        )
    )
    run_rows = [[str(r.path), name, str(r.seed), r.wandb.get("name", ""), r.group or ""]
                for name, rs in groups.items() for r in rs]
    parts.append(
        _section(
            "runs_table",
            "Runs",
            _table(["run dir", "group", "seed", "W&B name", "W&B group"], run_rows, "runs"),
        )
    )
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>skyexp sweep report</title>"
        f"<style>{STYLE}</style></head><body>{''.join(parts)}"
        f"<footer><p>python -m skyexp.report, {stamp}</p>"
        "</footer></body></html>"
    )


def write_html(runs: list[Run], roots: list[str], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_html(runs, roots), encoding="utf-8")
    return out
