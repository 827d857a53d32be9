"""`python -m skyexp.findings <sweep dirs...> [--out docs/findings.md]`: regenerate the findings
report and its figures from the findings sweeps' run directories. The study itself is
skyexp.analysis.findings; this is its entry point under the name the docs and sweeps use."""

from __future__ import annotations

import sys

from skyexp.analysis.findings.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
