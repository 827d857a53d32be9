"""`python -m skyexp.filter` on the real benchmark files reports their overlap."""

from __future__ import annotations

import json

from conftest import run_skyexp
from test_prompts_filters import AIME_IN_MATH500


def test_filter_cli_reports_the_aime_math500_overlap(shared_data, tmp_path):
    out = tmp_path / "aime_clean.jsonl"
    r = run_skyexp(
        [
            "data=deepscaler",
            f"data.path={shared_data / 'train/deepscaler_aime_1983_2023.jsonl'}",
            "filter.n=0",
            f"filter.benchmarks=[{shared_data / 'eval/math500.jsonl'},"
            f"{shared_data / 'eval/aime24.jsonl'}]",
            f"filter.out={out}",
        ],
        tmp_path,
        timeout=300,
        module="skyexp.filter",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.with_name("aime_clean.report.json").read_text())
    assert report["input"] == 975 and report["contaminated"] == 7 and report["kept"] == 968
    assert {h["id"] for h in report["decontam_hits"]} == AIME_IN_MATH500
    assert all(
        h["benchmark"].endswith("math500.jsonl") and h["benchmark_id"].startswith("test/")
        for h in report["decontam_hits"]
    )
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(kept) == 968 and not AIME_IN_MATH500 & {k["id"] for k in kept}
    assert {"id", "problem", "answer", "year"} <= set(kept[0])  # loadable again with data=jsonl
