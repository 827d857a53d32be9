"""Imports run down the layers only (entry points -> rl / offline / analysis -> rollout /
evaluation -> model / data / rewards -> checkpoint / tracking -> config / algos / utilities),
and no module or wing imports itself back round a cycle (scripts/import_graph.py reads them
with ast)."""

from __future__ import annotations

import importlib.util

from conftest import ROOT

spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
import_graph = importlib.util.module_from_spec(spec)
spec.loader.exec_module(import_graph)


def test_no_upward_imports():
    assert import_graph.upward(import_graph.graph()) == []


def test_no_import_cycles():
    edges = import_graph.graph()
    assert import_graph.cycles(edges) == []
    assert import_graph.cycles(import_graph.wing_edges(edges)) == []


def test_the_graph_sees_an_upward_import_and_a_cycle(tmp_path):
    pkg = tmp_path / "skyexp"
    (pkg / "model").mkdir(parents=True)
    (pkg / "rl").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "model" / "__init__.py").write_text("")
    (pkg / "rl" / "__init__.py").write_text("")
    (pkg / "model" / "forward.py").write_text("def f():\n    from skyexp.rl import step\n")
    (pkg / "rl" / "step.py").write_text("from skyexp.model.forward import f\n")
    edges = import_graph.graph(tmp_path)
    up = [("skyexp.model.forward", "skyexp.rl"), ("skyexp.model.forward", "skyexp.rl.step")]
    assert import_graph.upward(edges) == up  # `from pkg import mod` runs pkg/__init__ too
    assert import_graph.cycles(edges) == [["skyexp.model.forward", "skyexp.rl.step"]]
