"""The import graph of skyexp, read from the source with ast (nothing is imported): which module
imports which, every import that runs up the layers, and the cycles between wings and between
modules. `python scripts/import_graph.py` prints the report; tests/test_import_graph.py holds the
package to zero upward imports and zero cycles.

A wing is skyexp's top-level package or module (`rl`, `model`, `train`, ...). Its layer is in
LAYERS below, from the bottom: an import is upward when the imported wing's layer is higher than
the importer's. Imports inside functions count as much as those at the top of a file; only names
written in an import statement count (a registry reached by string is invisible here).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "skyexp"

# The layers from the bottom; a wing may import its own layer's wings and those below.
LAYERS: list[set[str]] = [
    {"config", "algos", "records", "distributed", "plots"},  # types, checks, pure maths, utilities
    {"checkpoint", "tracking"},  # utilities that read the config
    {"model", "data", "rewards"},  # loading, layout, the forward, head; sources; scoring
    {"rollout", "evaluation"},  # engines; pass@k and the eval job
    # the trainer; filter / distill / score bodies; finished runs and their reports
    {"rl", "offline", "analysis", "report"},
    # entry points (python -m skyexp.<name>) and the Hydra entry they share
    {"__main__", "__init__", "train", "cli", "launch", "eval", "score", "filter", "distill",
     "findings"},
]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def imports_of(path: Path, name: str) -> set[str]:
    """Absolute names of the skyexp modules (or packages) imported anywhere in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in out if m == PACKAGE or m.startswith(PACKAGE + ".")}


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the skyexp modules it imports (a name that is not a module counts as its
    module)."""
    files = {module_name(p, root): p for p in sorted((root / PACKAGE).rglob("*.py"))}
    edges: dict[str, set[str]] = {}
    for name, path in files.items():
        targets = set()
        for m in imports_of(path, name):
            while m not in files and "." in m:
                m = m.rsplit(".", 1)[0]
            if m in files and m != name and m != PACKAGE:
                targets.add(m)
        edges[name] = targets
    return edges


def wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(module: str) -> int:
    w = wing(module)
    for i, wings in enumerate(LAYERS):
        if w in wings:
            return i
    raise KeyError(f"{module}: wing {w!r} has no layer in scripts/import_graph.py LAYERS")


def upward(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where the imported module's layer is above the importer's."""
    return sorted((a, b) for a, bs in edges.items() for b in bs if layer(b) > layer(a))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def wing_edges(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for a, bs in edges.items():
        out[wing(a)].update(wing(b) for b in bs if wing(b) != wing(a))
    return dict(out)


def main() -> int:
    sys.setrecursionlimit(10000)
    edges = graph()
    up = upward(edges)
    mod_cycles, wing_cycles = cycles(edges), cycles(wing_edges(edges))
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} imports")
    print(f"upward imports: {len(up)}")
    for a, b in up:
        print(f"  {a} -> {b}")
    print(f"module cycles: {len(mod_cycles)}")
    for c in mod_cycles:
        print("  " + " <-> ".join(c))
    print(f"wing cycles: {len(wing_cycles)}")
    for c in wing_cycles:
        print("  " + " <-> ".join(c))
    return 1 if up or mod_cycles or wing_cycles else 0


if __name__ == "__main__":
    sys.exit(main())
