"""Data loading: bad rows are skipped and counted; real files load by path; ranks see disjoint prompts."""

from __future__ import annotations

import json

import pytest

from skyexp.config import DataConfig
from skyexp.data import DataError, PromptSampler, clean_rows, load_task
from skyexp.records import Problem


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_bad_rows_are_skipped_and_counted(tmp_path, caplog):
    rows = [{"problem": f"p{i}", "answer": str(i)} for i in range(40)]
    rows[3] = {"problem": "no answer"}
    rows[7] = {"problem": "empty", "answer": "  "}
    f = tmp_path / "d.jsonl"
    _write(f, rows + ["{not json"])
    task = load_task(DataConfig(source="jsonl", path=str(f), max_bad_fraction=0.2))
    assert len(task.train) == 38
    assert [i for i, _ in task.skipped] == [3, 7, 40]
    assert "skipped 3 of 41 rows" in caplog.text and "row 3" in caplog.text


def test_too_many_bad_rows_stop_before_training(tmp_path):
    f = tmp_path / "d.jsonl"
    _write(f, [{"problem": "x"}] * 5 + [{"problem": "y", "answer": "1"}])
    with pytest.raises(DataError) as e:
        load_task(DataConfig(source="jsonl", path=str(f), max_bad_fraction=0.1))
    assert "5 of 6 rows" in str(e.value) and "row 0" in str(e.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="data.path"):
        load_task(DataConfig(source="jsonl", path=str(tmp_path / "nope.jsonl")))


def test_nested_keys_and_numeric_answers():
    rows = [{"prompt": "q", "reward_model": {"ground_truth": 42}}, {"prompt": "r", "reward_model": {}}]
    good, bad = clean_rows(rows, "prompt", "reward_model.ground_truth", "verl", 0.5)
    assert good[0].answer == "42" and bad == [(1, "missing or empty 'reward_model.ground_truth'")]


def test_real_benchmark_files_load(shared_data):
    for name, rows in [("eval/math500.jsonl", 500), ("eval/aime24.jsonl", 30), ("train/deepscaler_aime_1983_2023.jsonl", 975)]:
        task = load_task(DataConfig(source="jsonl", path=str(shared_data / name)))
        assert len(task.train) == rows and not task.skipped
        assert all(p.answer and p.problem for p in task.train)


@pytest.mark.parametrize("size", [64, 50])  # 50: batches straddle epoch boundaries
def test_sampler_ranks_split_the_global_batch(size):
    probs = [Problem(id=str(i), problem=str(i), answer="0") for i in range(size)]
    single = PromptSampler(probs, seed=1)
    ranks = [PromptSampler(probs, seed=1, rank=r, world_size=2) for r in range(2)]
    for _ in range(7):
        whole = [p.id for p in single.next(16)]
        parts = [[p.id for p in s.next(16)] for s in ranks]
        assert parts[0] + parts[1] == whole  # the same global order, split into contiguous halves
        if size % 16 == 0:  # within one epoch no problem repeats, so ranks are disjoint
            assert not set(parts[0]) & set(parts[1])


def test_sampler_resumes_at_exact_position():
    probs = [Problem(id=str(i), problem=str(i), answer="0") for i in range(30)]
    a = PromptSampler(probs, seed=5)
    for _ in range(3):
        a.next(8)
    b = PromptSampler(probs, seed=5)
    b.load_state_dict(a.state_dict())
    assert [p.id for p in a.next(20)] == [p.id for p in b.next(20)]
