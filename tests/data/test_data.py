"""Data loading: bad rows are skipped and counted; real files load by path; ranks see disjoint
prompts."""

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
    assert [i for i, _ in task.skipped] == [4, 8, 41]  # 1-based, as a user counts rows
    assert (
        "skipped 3 of 41 rows" in caplog.text
        and "row 4" in caplog.text
        and "line 41: invalid JSON" in caplog.text
    )


def test_too_many_bad_rows_stop_before_training(tmp_path):
    f = tmp_path / "d.jsonl"
    _write(f, [{"problem": "x"}] * 5 + [{"problem": "y", "answer": "1"}])
    with pytest.raises(DataError) as e:
        load_task(DataConfig(source="jsonl", path=str(f), max_bad_fraction=0.1))
    assert (
        "5 of 6 rows" in str(e.value) and "row 1:" in str(e.value) and "row 0" not in str(e.value)
    )


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="data.path"):
        load_task(DataConfig(source="jsonl", path=str(tmp_path / "nope.jsonl")))


def test_nested_keys_and_numeric_answers():
    rows = [
        {"prompt": "q", "reward_model": {"ground_truth": 42}},
        {"prompt": "r", "reward_model": {}},
    ]
    good, bad = clean_rows(rows, "prompt", "reward_model.ground_truth", "verl", 0.5)
    assert good[0].answer == "42" and bad == [(2, "missing or empty 'reward_model.ground_truth'")]


def test_real_benchmark_files_load(shared_data):
    for name, rows in [
        ("eval/math500.jsonl", 500),
        ("eval/aime24.jsonl", 30),
        ("train/deepscaler_aime_1983_2023.jsonl", 975),
    ]:
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


def test_invalid_utf8_and_non_object_lines_are_counted_not_raised(tmp_path, caplog):
    """A byte that is not UTF-8 and JSON lines that are not objects (42, a list, a string) are bad
    rows, named by their 1-based line, like any other; the rest of the file loads."""
    good = [json.dumps({"problem": f"p{i}", "answer": str(i)}).encode() for i in range(20)]
    lines = (
        good[:2]
        + [b'{"problem": "caf\xe9", "answer": "1"}', b"42", b"[1, 2]", b'"text"']
        + good[2:]
    )
    f = tmp_path / "d.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    task = load_task(DataConfig(source="jsonl", path=str(f), max_bad_fraction=0.5))
    assert len(task.train) == 20
    reasons = dict(task.skipped)
    assert sorted(reasons) == [3, 4, 5, 6]
    assert reasons[3].startswith("line 3: invalid UTF-8 (byte 0xe9")
    assert [reasons[i] for i in (4, 5, 6)] == [
        "line 4: not a JSON object (int)",
        "line 5: not a JSON object (list)",
        "line 6: not a JSON object (str)",
    ]
    with pytest.raises(
        DataError, match="4 of 24 rows are unusable"
    ):  # over the default 5%: a named error
        load_task(DataConfig(source="jsonl", path=str(f)))


def test_json_array_with_non_objects_and_bad_bytes(tmp_path):
    f = tmp_path / "d.json"
    f.write_text(
        json.dumps(
            [{"problem": "p", "answer": "1"}, 7]
            + [{"problem": f"q{i}", "answer": "2"} for i in range(30)]
        )
    )
    task = load_task(DataConfig(source="deepscaler", path=str(f)))
    assert len(task.train) == 31 and task.skipped == [(2, "not a JSON object (int)")]
    f.write_bytes(b'[{"problem": "\xff", "answer": "1"}]')
    with pytest.raises(DataError, match="invalid UTF-8"):
        load_task(DataConfig(source="deepscaler", path=str(f)))


def test_prompts_longer_than_the_context_or_max_prompt_len_are_dropped_and_counted(
    tmp_path, tiny_dir, caplog
):
    """A 1 MB problem against a 512-token model: dropped before training, counted, never
    generated."""
    from skyexp.config import Config, ConfigError, ModelConfig, validate
    from skyexp.data import fit_task
    from skyexp.model.loading import context_length, load_tokenizer

    rows = [{"problem": f"Compute {i}+1.", "answer": str(i + 1)} for i in range(10)]
    rows[4] = {"problem": "x" * 1_000_000, "answer": "1"}
    f = tmp_path / "d.jsonl"
    _write(f, rows)
    cfg = DataConfig(source="jsonl", path=str(f))
    tok = load_tokenizer(str(tiny_dir), ModelConfig())
    assert context_length(str(tiny_dir), ModelConfig()) == 512
    task = fit_task(load_task(cfg), tok, cfg, False, 512)
    assert (
        len(task.train) == 9
        and task.stats["too_long"] == 1
        and "x" * 100 not in {p.problem[:100] for p in task.train}
    )
    assert "dropped 1 of 10 prompts longer than 511 tokens" in caplog.text
    # data.max_prompt_len is measured after the template: "Compute 1+1." is 6 tokens, "Task: " adds
    # 6
    cfg = DataConfig(
        source="jsonl", path=str(f), max_prompt_len=12, prompt_template="Task: {problem}"
    )
    short = fit_task(load_task(cfg), tok, cfg, False, 512)
    assert [p.problem for p in short.train] == [
        f"Compute {i}+1." for i in range(10) if i != 4
    ] and short.stats["too_long"] == 1
    cfg = DataConfig(
        source="jsonl", path=str(f), max_prompt_len=11, prompt_template="Task: {problem}"
    )
    with pytest.raises(
        DataError, match="every training prompt is longer than 11 tokens"
    ):  # each is 12
        fit_task(load_task(cfg), tok, cfg, False, 512)
    cfg = DataConfig(source="jsonl", path=str(f), max_prompt_len=-1)
    with pytest.raises(ConfigError, match="data.max_prompt_len"):
        validate(Config(data=cfg))
