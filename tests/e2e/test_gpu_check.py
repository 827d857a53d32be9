"""bench/gpu_check.py without a GPU: the dry run (install into a fresh directory, collect the gpu
tests, compose and validate every `python -m skyexp` it would run), the wheel closure of
`prepare` (bench/gpu_wheels.py, on fake wheels: no network in the suite), and the gpu tests
rehearsed on CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _wheel(folder: Path, name: str, requires: list[str] = (), version: str = "0.1") -> Path:
    """A minimal pure-Python wheel: one module `name` and its metadata."""
    module, dist = name.replace("-", "_"), f"{name.replace('-', '_')}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    files = {
        f"{module}/__init__.py": f"NAME = {name!r}\n",
        f"{dist}/METADATA": meta,
        f"{dist}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    files[f"{dist}/RECORD"] = "".join(f"{p},,\n" for p in files) + f"{dist}/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, text in files.items():
            z.writestr(p, text)
    return path


def test_smoke_overrides_are_the_smoke_tests():
    from test_train_smoke import TINY

    assert _bench("gpu_check").SMOKE == TINY


def test_missing_closure_stops_at_the_image(tmp_path):
    """Requirements are followed on the target (Python 3.12, Linux x86_64) only: markers for other
    Pythons or platforms drop theirs, extras are followed only where asked for, and a package the
    image has ends the walk (its own requirements are not fetched)."""
    gc = _bench("gpu_wheels")
    graph = {
        "root-a": [
            "in-image",
            "pkg-c>=1",
            'old-only; python_version < "3.12"',
            'win-only; sys_platform == "win32"',
            'extra-f; extra == "x"',
        ],
        "pkg-c": ["pkg-d", "Root_A[x]"],  # asks for root-a's extra x: extra-f comes in
        "pkg-d": [],
        "extra-f": [],
        "in-image": ["never-fetched"],
    }
    fetched = []

    def fetch(name: str, spec: str) -> Path:
        fetched.append((name, spec))
        key = gc.canon(name)
        return _wheel(tmp_path, key, graph[key])

    got = gc.missing_closure(["root-a"], {"in-image"}, fetch)
    assert sorted(got) == ["extra-f", "pkg-c", "pkg-d", "root-a"]
    assert ("pkg-c", ">=1") in fetched and len(fetched) == 4


def test_dry_run_installs_a_stub_wheel_and_parses_every_command(tmp_path):
    wheels, out = tmp_path / "wheels", tmp_path / "out"
    _wheel(wheels, "gpu-check-stub")
    env = {k: v for k, v in os.environ.items() if k not in ("SKYEXP_GPU_TESTS_ON_CPU", "OUT")}
    env["PYTHONPATH"] = str(ROOT)
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu_check.py"),
            "run",
            "--dry-run",
            "--keep-work",
            "--wheels",
            str(wheels),
            "--out",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    s = json.loads((out / "gpu_check.json").read_text())
    assert s["mode"] == "dry-run" and s["ok"] is True
    p = s["parts"]
    assert p["install"]["installed"] == p["install"]["wheels"] == 1
    installed = (Path(s["work"]) / "site" / "gpu_check_stub" / "__init__.py").exists()
    shutil.rmtree(s["work"], ignore_errors=True)  # kept by --keep-work for the line above
    assert installed
    assert p["pytest"]["collected"] >= 5 and "tests/e2e/test_gpu.py" in p["pytest"]["files"]
    for loop in ("tiny", "qwen2_0p5b"):
        assert p[loop]["ok"] and p[loop]["validate_rc"] == 0, loop
        assert {"trainer.device=cuda", "model.dtype=bfloat16"} <= set(p[loop]["overrides"])
    assert "sft.steps=6" not in p["qwen2_0p5b"]["overrides"]  # sft=none: no SFT keys left over
    if not s["probe"].get("cuda"):
        assert "no CUDA device" in r.stdout
    assert (out / "gpu_check.log").stat().st_size > 0


def test_dry_run_fails_without_wheels(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu_check.py"),
            "run",
            "--dry-run",
            "--parts",
            "install",
            "--wheels",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "out"),
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1 and "gpu_check.py prepare" in r.stdout


@pytest.mark.slow
def test_gpu_tests_rehearsed_on_cpu():
    """tests/e2e/test_gpu.py on CPU (gloo, CPU bf16): keeps the GPU tests in step with the code they
    call
    while no GPU runs them (about a minute on 2 cores)."""
    env = {**os.environ, "SKYEXP_GPU_TESTS_ON_CPU": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "gpu",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/e2e/test_gpu.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout
