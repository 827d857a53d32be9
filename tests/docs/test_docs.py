"""The project stands alone: documents it points to exist in the repository."""

from __future__ import annotations

import re
import subprocess

from conftest import ROOT


def _tracked(*patterns: str) -> list:
    out = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / p for p in out.split() if (ROOT / p).exists()]


def test_no_reference_to_a_design_doc_outside_the_repository():
    """README, docstrings and docs once pointed at a DESIGN.md the repository did not have."""
    for path in _tracked("*.py", "*.md", "*.ipynb", "*.yaml"):
        if path == ROOT / "tests" / "docs" / "test_docs.py":  # this file names the missing document on purpose
            continue
        for name in re.findall(r"\b([\w/.-]*DESIGN\.md)\b", path.read_text(errors="replace")):
            assert (path.parent / name).exists() or (ROOT / name).exists(), f"{path.relative_to(ROOT)} refers to {name}"


def test_local_links_of_readme_and_docs_resolve():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        prose = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # code blocks hold no links
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", prose):
            assert (path.parent / target).exists(), f"{path.relative_to(ROOT)} links to missing {target}"
    assert "docs/design.md" in (ROOT / "README.md").read_text()
