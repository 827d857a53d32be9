"""The command line rejects a bad config fast (exit 2, the key named) before anything loads."""

from __future__ import annotations

from conftest import run_skyexp


def test_cli_rejects_unknown_algo_fast(tmp_path):
    r = run_skyexp(["algo=nonexistent"], tmp_path, timeout=60)
    assert r.returncode == 2  # Hydra's own config errors exit like skyexp's (Hydra alone: 1)
    assert "algo/nonexistent" in r.stderr and "rloo" in r.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("metrics.jsonl"))


def test_cli_rejects_bad_type_fast(tmp_path):
    r = run_skyexp(["trainer.lr=abc"], tmp_path, timeout=60)
    assert r.returncode == 2
    assert "trainer.lr" in r.stderr
    r = run_skyexp(["trainer.lr=abc"], tmp_path, timeout=60, env={"HYDRA_FULL_ERROR": "1"})
    assert r.returncode == 2 and "Traceback" in r.stderr and "trainer.lr" in r.stderr
    r = run_skyexp(["trainer.lr=="], tmp_path, timeout=60)  # an override Hydra cannot parse
    assert r.returncode == 2


def test_cli_rejects_cross_field_error_before_loading(tmp_path):
    r = run_skyexp(["algo.n=1"], tmp_path, timeout=60)
    assert r.returncode == 2
    assert "algo.n" in r.stderr and "rloo" in r.stderr
