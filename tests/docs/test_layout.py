"""docs/layout.md names every file of the package, and no file that is gone."""

from __future__ import annotations

import re

from conftest import ROOT


def test_every_package_file_is_in_the_layout_page():
    page = (ROOT / "docs" / "layout.md").read_text()
    listed = set(re.findall(r"`(skyexp/[\w/]+\.py)`", page))
    present = {p.relative_to(ROOT).as_posix() for p in (ROOT / "skyexp").rglob("*.py")}
    missing, gone = sorted(present - listed), sorted(listed - present)
    assert not missing and not gone, (
        "docs/layout.md is out of date; one table row per file:\n"
        + "".join(f"  missing: | `{p}` | ... |\n" for p in missing)
        + "".join(f"  listed but gone: {p}\n" for p in gone)
    )
