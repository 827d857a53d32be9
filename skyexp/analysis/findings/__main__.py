"""python -m skyexp.findings <sweep dirs...> [--out docs/findings.md]: regenerate the findings
report and its figures from the findings sweeps' run directories."""

from __future__ import annotations

import argparse
from pathlib import Path

from skyexp.analysis.findings.report import build
from skyexp.analysis.findings.runs import load_records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m skyexp.findings", description=__doc__)
    p.add_argument(
        "sweeps", nargs="+", help="sweep (or run) directories, e.g. multirun/<date>/<time>"
    )
    p.add_argument(
        "--out",
        default="docs/findings.md",
        help="the report; figures go to <its folder>/<its stem>/",
    )
    args = p.parse_args(argv)
    findings = build(load_records(args.sweeps), args.sweeps, Path(args.out))
    for f in findings.values():
        print(f"{f.key} {f.verdict:15s} {f.why}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
