"""python -m skyexp.report <sweep dir>... [--out report.html] [--wandb entity/project]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from skyexp.report.html import write_html
from skyexp.report.runs import differing_keys, group_runs, load_runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m skyexp.report",
        description=(
            "One report for one or more sweeps: a self-contained HTML page (entropy, reward and "
            "entropy coefficient "
            "vs train/rl_step, pass@k over training and before/after, final values mean ± sd over "
            "seeds), grouped by "
            "the config keys that differ between the runs; with --wandb also a W&B Report of the "
            "same panels."
        ),
    )
    p.add_argument(
        "dirs", nargs="+", help="sweep directories (multirun/<date>/<time>) or run directories"
    )
    p.add_argument("--out", default="", help="HTML file (default: <first dir>/report.html)")
    p.add_argument(
        "--wandb",
        default="",
        metavar="ENTITY/PROJECT",
        help="also save a W&B Report there and print its URL",
    )
    p.add_argument("--title", default="", help="the W&B report's title")
    a = p.parse_args(argv)
    runs = load_runs(a.dirs)
    keys = differing_keys(runs)
    groups = group_runs(runs, keys)
    out = write_html(runs, a.dirs, Path(a.out) if a.out else Path(a.dirs[0]) / "report.html")
    print(f"{len(runs)} runs, {len(groups)} groups by {', '.join(keys) or '(no differing key)'}")
    print(f"html: {out}")
    if a.wandb:
        from skyexp.report.wandb_report import build_report, publish

        entity, _, project = a.wandb.partition("/")
        if not entity or not project:
            p.error("--wandb takes entity/project")
        try:
            url = publish(build_report(runs, entity, project, a.title))
        # not logged in, no network, no access: the HTML is written all the same
        except Exception as e:
            print(
                f"wandb report not saved ({type(e).__name__}: {e}); the HTML page is at {out}",
                file=sys.stderr,
            )
            return 1
        print(f"wandb report: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
