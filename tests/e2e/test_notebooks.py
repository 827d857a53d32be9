"""The analysis notebooks run headless (nbclient) on a tiny sweep's output and draw figures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = ROOT / "notebooks"


def _execute(name: str, env: dict[str, str]):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return nb


def _outputs(nb, kind: str) -> list:
    return [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if kind in o.get("data", {})
    ]


def test_notebooks_are_stored_without_outputs():
    for name in ("entropy_dynamics", "passk_curves"):
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
        assert any("from skyexp import analysis" in c.source for c in nb.cells)


@pytest.mark.slow
@pytest.mark.parametrize("name,figures", [("entropy_dynamics", 2), ("passk_curves", 1)])
def test_notebook_renders_figures_from_a_tiny_sweep(tiny_sweep, name, figures):
    # PYTHONPATH: the kernel imports this checkout's skyexp, whatever the venv's editable install
    # points at
    nb = _execute(name, {"SKYEXP_SWEEP_DIR": str(tiny_sweep), "PYTHONPATH": str(ROOT)})
    assert len(_outputs(nb, "image/png")) == figures
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "2 runs from" in text and "entropy=adaptive,temperature=t1_0" in text
    if name == "passk_curves":
        assert "arith: 3 curves" in text  # before RL + each run's last eval
    tables = _outputs(nb, "text/html")
    assert tables and "entropy=none,temperature=t1_0" in tables[-1]["data"]["text/html"]


@pytest.mark.slow
def test_the_documented_jupyter_commands_work(tiny_sweep, tmp_path):
    """What docs/experiments.md and notebooks/README.md tell a user to type: `.venv/bin/jupyter lab`
    exists (the notebooks extra) and `jupyter nbconvert --execute` runs both notebooks headless on
    a sweep that trained (the smoke form: its adaptive arm updates at step 1, test_sweeps)."""
    jupyter = Path(sys.executable).parent / "jupyter"
    if not jupyter.exists():
        pytest.skip("jupyter is not installed: the notebooks extra (bash scripts/setup.sh)")
    env = {**os.environ, "SKYEXP_SWEEP_DIR": str(tiny_sweep), "PYTHONPATH": str(ROOT)}
    lab = subprocess.run([str(jupyter), "lab", "--version"], capture_output=True, text=True)
    assert lab.returncode == 0, lab.stderr
    for name in ("entropy_dynamics", "passk_curves"):
        cmd = [str(jupyter), "nbconvert", "--to", "notebook", "--execute", "--output-dir"]
        r = subprocess.run(
            [*cmd, str(tmp_path), f"notebooks/{name}.ipynb"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        nb = nbformat.read(tmp_path / f"{name}.ipynb", as_version=4)
        assert _outputs(nb, "image/png"), name
