"""python -m skyexp.report: the HTML page from a real tiny sweep (every panel and table, inline
figures only), its rendering in headless Chromium, the grouping by differing config keys, and the
W&B report's spec built offline against a stored one."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, run_skyexp

from skyexp.report.html import PANELS, final_table
from skyexp.report.runs import Run, differing_keys, group_runs, load_runs, mean_sd

STORED_SPEC = (
    ROOT / "tests" / "e2e" / "report_wandb_spec.json"
)  # regenerate: SKYEXP_WRITE_SPEC=1 pytest -k stored


def _run(path: str, seed: int, **cfg) -> Run:
    config = {
        "trainer.seed": seed,
        "trainer.resume": f"/x/{path}",
        "entropy.name": "none",
        "entropy.coef": 0.0,
        "algo.n": 8,
        **cfg,
    }
    summary = {
        "pass@1_before": 0.4,
        "pass@1_after": 0.5 + seed / 100,
        "entropy_end": 0.1,
        "reward_end": 0.6,
    }
    return Run(
        Path(path), [{"train/rl_step": 0, "actor/entropy": 0.2}], summary, config, {"group": "g"}
    )


def test_groups_by_the_keys_that_differ_and_averages_seeds():
    runs = [_run(f"r{i}", seed, **extra) for i, (seed, extra) in enumerate([
        (0, {}), (1, {}), (0, {"entropy.name": "adaptive", "entropy.coef": 0.01}),
        (1, {"entropy.name": "adaptive", "entropy.coef": 0.01}), (0, {"algo.n": 16})])]
    # seeds and paths are no grouping key; entropy.coef goes with entropy.name, so the name says it
    assert differing_keys(runs) == ["algo.n", "entropy.name"]
    groups = group_runs(runs, differing_keys(runs))
    assert {k: len(v) for k, v in groups.items()} == {
        "algo.n=8,entropy=none": 2,
        "algo.n=8,entropy=adaptive": 2,
        "algo.n=16,entropy=none": 1,
    }
    row = final_table(groups)[0]
    assert row[:2] == ["algo.n=8,entropy=none", "0,1"]
    assert row[5] == "0.505 ± 0.007"  # pass@1 after: 0.50 and 0.51
    assert mean_sd([1.0]) == (1.0, 0.0)


def test_html_from_a_real_tiny_sweep_holds_every_panel_and_table(tiny_sweep, tmp_path):
    out = tmp_path / "report.html"
    r = run_skyexp(
        [str(tiny_sweep), "--out", str(out)], tmp_path, module="skyexp.report", timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 runs, 2 groups by entropy.name" in r.stdout
    page = out.read_text()
    for panel in PANELS:
        assert f'data-panel="{panel}"' in page, panel
    sections = re.findall(r'<section id="(\w+)"', page)
    assert sections == PANELS
    # every figure panel holds an inline PNG, and nothing is fetched from elsewhere
    for panel in PANELS[:5]:
        body = re.search(rf'<section id="{panel}".*?</section>', page, re.S)[0]
        assert 'src="data:image/png;base64,' in body, panel
    assert not re.search(r'(src|href)="(https?:)?//', page)
    final = re.search(r'<table class="final">.*?</table>', page, re.S)[0]
    assert "entropy=none" in final and "entropy=adaptive" in final and "pass@1 after" in final
    assert page.count("<tr>", page.index('<table class="runs">')) == 3  # header + 2 runs


def _chromium() -> str | None:
    return next(
        (
            shutil.which(b)
            for b in ("chromium", "chromium-browser", "google-chrome")
            if shutil.which(b)
        ),
        None,
    )


def test_page_renders_in_headless_chromium(tiny_sweep, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no headless browser installed (Debian: apt-get install chromium)")
    from PIL import Image

    out = tmp_path / "report.html"
    r = run_skyexp(
        [str(tiny_sweep), "--out", str(out)], tmp_path, module="skyexp.report", timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1100,2400",
            f"--screenshot={shot}",
            out.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert shot.is_file(), "chromium wrote no screenshot"
    img = Image.open(shot).convert("RGB")
    assert img.size == (1100, 2400)
    small = img.resize((110, 240))
    pixels = list(small.getdata())
    dark = sum(1 for p in pixels if sum(p) < 600) / len(pixels)
    colours = len(set(img.getdata()))
    assert dark > 0.02, f"screenshot nearly blank: {dark:.3f} of it is not background"
    assert colours > 50, f"screenshot has only {colours} colours: figures missing"


def test_wandb_report_spec_offline_matches_the_stored_one_and_round_trips(tiny_sweep):
    pytest.importorskip("wandb_workspaces", reason="wandb-workspaces (the dev extra) not installed")
    from skyexp.report.wandb_report import build_report, normalized, report_spec, round_trip

    runs = load_runs([tiny_sweep])
    report = build_report(runs, "my-entity", "skyexp")
    spec = normalized(report_spec(report))
    assert (
        normalized(report_spec(round_trip(report))) == spec
    )  # the model reads back to the same report
    text = json.dumps(spec)
    assert '"xAxis": "train/rl_step"' in text
    assert (
        '{"section": "config", "name": "entropy.value.name"}' in text
    )  # grouped by the differing key
    assert '{"section": "run", "name": "group"}' in text
    if os.environ.get("SKYEXP_WRITE_SPEC"):
        STORED_SPEC.write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")
    assert spec == json.loads(STORED_SPEC.read_text())


def test_cli_rejects_a_directory_without_runs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run directories"):
        load_runs([tmp_path])
