"""What `python -m skyexp.eval` leaves behind: summary rows, a console table, eval/summary.json,
eval/passk.png, and in W&B the pass@k curves as line plots plus a table of samples.

W&B is optional at every step: any failure there is logged once and everything else carries on.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from skyexp import plots
from skyexp.config import EvalConfig
from skyexp.evaluation.estimators import EvalResult

log = logging.getLogger("skyexp")

Results = list[tuple[str, EvalConfig, EvalResult]]  # (checkpoint label, benchmark config, result)


def summarise(
    results: Results, labels: list[str], paths: list[str], wall_s: float
) -> dict[str, Any]:
    rows = [
        {
            "checkpoint": label,
            **res.summary(),
            "temperature": e.temperature,
            "top_p": e.top_p,
            "source": e.path or e.hub or e.source,
        }
        for label, e, res in results
    ]
    return {"checkpoints": dict(zip(labels, paths)), "results": rows, "wall_s": round(wall_s, 1)}


def table(summary: dict[str, Any]) -> str:
    """One line per (benchmark, checkpoint): the protocol's headline numbers."""
    head = [
        "benchmark",
        "checkpoint",
        "problems",
        "n",
        "mean@n",
        "pass@1",
        "pass@n",
        "maj@n",
        "timeouts",
        "errors",
        "samples/s",
    ]
    lines = []
    for r in summary["results"]:
        n = r["n"]
        maj = r["maj@k"].get(n)
        lines.append(
            [
                r["benchmark"],
                r["checkpoint"],
                str(r["problems"]),
                str(n),
                f"{r[f'mean@{n}']:.4f}",
                f"{r['pass@k'][1]:.4f}",
                f"{r['pass@k'][n]:.4f}",
                "-" if maj is None else f"{maj:.4f}",
                str(r["reward/timeouts"]),
                str(r["reward/errors"]),
                f"{r['samples_per_s']:.1f}",
            ]
        )
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(
        [
            fmt.format(*head),
            fmt.format(*("-" * w for w in widths)),
            *(fmt.format(*line) for line in lines),
        ]
    )


def curves(results: Results) -> dict[str, dict[str, dict[int, float]]]:
    """benchmark -> checkpoint label -> {k: pass@k}."""
    out: dict[str, dict[str, dict[int, float]]] = {}
    for label, e, res in results:
        out.setdefault(e.name, {})[label] = res.pass_at
    return out


def write(out_dir: Path, summary: dict[str, Any], results: Results) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    counts = {e.name: (res.n, len(res.correct)) for _, e, res in results}
    plots.plot_passk_benchmarks(curves(results), out_dir / "passk.png", counts=counts)


def _wandb(logger) -> tuple[Any, Any]:
    """The wandb module and live run behind a MultiLogger, or (None, None)."""
    for sink in getattr(logger, "sinks", []):
        if getattr(sink, "run", None) is not None and hasattr(sink, "wandb"):
            return sink.wandb, sink.run
    return None, None


def sample_rows(label: str, e: EvalConfig, res: EvalResult) -> list[list[Any]]:
    """Up to e.log_samples rows (one per sample, problems in order) for the W&B table."""
    rows: list[list[Any]] = []
    for r in res.records:
        for j, s in enumerate(r["samples"]):
            if len(rows) >= e.log_samples:
                return rows
            rows.append(
                [
                    e.name,
                    label,
                    r["id"],
                    r["problem"],
                    r["answer"],
                    j,
                    s["text"],
                    s["extracted"],
                    s["score"],
                    s["status"],
                    s["length"],
                    s["truncated"],
                ]
            )
    return rows


def log_wandb(logger, results: Results) -> None:
    wandb, run = _wandb(logger)
    if run is None:
        return
    try:
        for bench, by_label in curves(results).items():
            ks = sorted(next(iter(by_label.values())))
            plot = wandb.plot.line_series(
                xs=ks,
                ys=[[c[k] for k in ks] for c in by_label.values()],
                keys=list(by_label),
                title=f"pass@k on {bench}",
                xname="k",
            )
            run.log({f"val/{bench}/pass@k_curve": plot})
        columns = [
            "benchmark",
            "checkpoint",
            "id",
            "problem",
            "answer",
            "sample",
            "text",
            "extracted",
            "score",
            "status",
            "length",
            "truncated",
        ]
        samples = wandb.Table(
            columns=columns,
            data=[row for lab, e, res in results for row in sample_rows(lab, e, res)],
        )
        run.log({"eval/samples": samples})
    except Exception as err:  # W&B must never stop an evaluation
        log.warning(
            "W&B curve/table logging failed (%s: %s); files in eval/ are complete",
            type(err).__name__,
            err,
        )
