"""The project stands alone: documents it points to exist in the repository."""

from __future__ import annotations

import re
import subprocess

import pytest
from conftest import ROOT


def _tracked(*patterns: str) -> list:
    out = subprocess.run(
        ["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return [ROOT / p for p in out.split() if (ROOT / p).exists()]


def test_no_reference_to_a_design_doc_outside_the_repository():
    """README, docstrings and docs once pointed at a DESIGN.md the repository did not have."""
    for path in _tracked("*.py", "*.md", "*.ipynb", "*.yaml"):
        if (
            path == ROOT / "tests" / "docs" / "test_docs.py"
        ):  # this file names the missing document on purpose
            continue
        for name in re.findall(r"\b([\w/.-]*DESIGN\.md)\b", path.read_text(errors="replace")):
            assert (path.parent / name).exists() or (ROOT / name).exists(), (
                f"{path.relative_to(ROOT)} refers to {name}"
            )


def test_local_links_of_readme_and_docs_resolve():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        prose = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # code blocks hold no links
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", prose):
            assert (path.parent / target).exists(), (
                f"{path.relative_to(ROOT)} links to missing {target}"
            )
    assert "docs/design.md" in (ROOT / "README.md").read_text()


def _anchors(page) -> set[str]:
    """The heading anchors MkDocs gives a page (Python-Markdown's toc slugify)."""
    from markdown.extensions.toc import slugify

    prose = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slugify(h, "-") for h in re.findall(r"^#{1,6} (.+?)\s*$", prose, flags=re.M)}


def test_readme_anchors_into_the_manual_exist():
    """mkdocs checks the anchors of links between docs/ pages; the README is outside the site."""
    for page, anchor in re.findall(
        r"\]\((docs/[\w./-]+\.md)#([^)]+)\)", (ROOT / "README.md").read_text()
    ):
        assert anchor in _anchors(ROOT / page), (
            f"README.md links to {page}#{anchor}, which has no such heading"
        )


def test_the_manual_builds_with_warnings_as_errors(tmp_path):
    """`mkdocs build --strict`: a link to a missing page or anchor, or a page left out of the nav,
    fails."""
    try:
        from mkdocs.commands.build import build
        from mkdocs.config import load_config
        from mkdocs.exceptions import Abort
    except ImportError:
        pytest.skip(
            "mkdocs is not installed (the dev extra has mkdocs-material: `bash scripts/setup.sh`)"
        )
    cfg = load_config(str(ROOT / "mkdocs.yml"), site_dir=str(tmp_path / "site"), strict=True)
    try:
        build(cfg)
    except Abort as e:
        pytest.fail(f"mkdocs build --strict: {e} (the warnings above name each broken link)")
    assert (tmp_path / "site" / "index.html").exists()
