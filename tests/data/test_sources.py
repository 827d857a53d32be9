"""Each named source loads from a small local file of its upstream schema (and through the hub
code path, from a local directory laid out like a hub repo); the real files load by path; bad
rows of every schema are skipped and counted with their row numbers."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skyexp.config import DataConfig
from skyexp.data import DataError, load_task
from skyexp.data.rows import get_path
from skyexp.data.sources import EURUS_INSTRUCTION

EURUS_SYSTEM = (
    "When tackling complex reasoning tasks, you have access to the following actions. [ASSESS] ..."
)


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def eurus_row(i: int, source: str, answer="7", user=None, prompt=None):
    user = user if user is not None else f"Problem {i}: find x.\n\n{EURUS_INSTRUCTION}"
    return {
        "data_source": source,
        "ability": "math" if source.startswith("numina") else "code",
        "prompt": prompt
        if prompt is not None
        else [{"role": "system", "content": EURUS_SYSTEM}, {"role": "user", "content": user}],
        "reward_model": {"style": "rule", "ground_truth": answer},
        "extra_info": {"split": "train", "index": i},
    }


def skywork_row(i: int, difficulty_7b, truth='["\\\\frac{1}{2}", "0.5"]'):
    return {
        "data_source": "train-math-deepscaler",
        "ability": "math",
        "prompt": [{"role": "user", "content": f"Skywork problem {i}. Let's think step by step."}],
        "reward_model": {"style": "rule", "ground_truth": truth},
        "extra_info": {
            "index": i,
            "model_difficulty": {
                "DeepSeek-R1-Distill-Qwen-1.5B": 16,
                "DeepSeek-R1-Distill-Qwen-7B": difficulty_7b,
                "DeepSeek-R1-Distill-Qwen-32B": 3,
            },
        },
    }


@pytest.fixture
def offline_datasets(tmp_path, monkeypatch):
    """datasets' cache in tmp, no hub calls: the hub code path runs on local directories only."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # for subprocesses; this process read it at import:
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return tmp_path


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_still3_schema(tmp_path, fmt):
    rows = [{"question": f"What is {i}+{i}?", "answer": str(2 * i)} for i in range(20)]
    rows[4] = {"question": "no answer here", "answer": ""}
    # non-string problem (parquet columns are typed)
    rows[9] = {
        "question": 12 if fmt == "jsonl" else None,
        "answer": "3",
    }
    path = (write_jsonl if fmt == "jsonl" else write_parquet)(tmp_path / f"still3.{fmt}", rows)
    task = load_task(DataConfig(source="still3", path=path, max_bad_fraction=0.2))
    assert len(task.train) == 18 and [i for i, _ in task.skipped] == [5, 10]  # 1-based
    assert (
        "missing or empty 'answer'" in task.skipped[0][1]
        and "non-string 'question'" in task.skipped[1][1]
    )
    assert task.train[0].problem == "What is 0+0?" and task.train[1].answer == "2"


def test_eurus_numina_filters_sources_and_strips(tmp_path):
    rows = [
        eurus_row(0, "numina_amc_aime"),
        eurus_row(1, "numina_cn_k12"),
        eurus_row(2, "numina_olympiads", answer="3"),
        eurus_row(3, "taco", answer='{"inputs": ["1"]}'),
        eurus_row(4, "numina_olympiads"),
    ]
    path = write_parquet(tmp_path / "eurus.parquet", rows)
    task = load_task(DataConfig(source="eurus_numina", path=path, strip_system=True))
    assert [p.problem for p in task.train] == [
        "Problem 0: find x.",
        "Problem 2: find x.",
        "Problem 4: find x.",
    ]
    assert [p.answer for p in task.train] == ["7", "3", "7"] and task.stats["filtered"] == 2
    assert (
        all("system" not in p.meta for p in task.train)
        and task.train[0].meta["data_source"] == "numina_amc_aime"
    )
    kept = load_task(DataConfig(source="eurus_numina", path=path, data_sources=["numina_cn_k12"]))
    # the dataset's own system prompt
    assert len(kept.train) == 1 and kept.train[0].meta["system"] == EURUS_SYSTEM


def test_verl_rows_with_malformed_prompts_are_counted(tmp_path):
    rows = [eurus_row(i, "numina_olympiads") for i in range(12)]
    rows[1] = eurus_row(1, "numina_olympiads", prompt="not a list")
    rows[3] = eurus_row(
        3, "numina_olympiads", prompt=[{"role": "system", "content": "only a system prompt"}]
    )
    rows[5] = eurus_row(5, "numina_olympiads", answer="")
    rows[7] = eurus_row(7, "numina_olympiads", prompt=[{"role": "user"}])
    path = write_jsonl(tmp_path / "eurus.jsonl", rows)
    with pytest.raises(DataError) as e:  # 4 of 12 bad: over the default 5%
        load_task(DataConfig(source="eurus_numina", path=path))
    assert (
        "4 of 12 rows are unusable" in str(e.value)
        and "row 2:" in str(e.value)
        and "row 8:" in str(e.value)
    )
    task = load_task(DataConfig(source="eurus_numina", path=path, max_bad_fraction=0.5))
    assert len(task.train) == 8
    reasons = dict(task.skipped)
    assert (
        sorted(reasons) == [2, 4, 6, 8]  # 1-based row numbers
        and "malformed prompt list" in reasons[2]
        and "no non-empty user message" in reasons[4]
    )
    assert "reward_model.ground_truth" in reasons[6] and "malformed prompt list" in reasons[8]


def test_deepscaler_schema_keeps_solution(tmp_path):
    rows = [
        {"problem": f"p{i}", "answer": f"{i}", "solution": f"so \\boxed{{{i}}}"} for i in range(5)
    ]
    task = load_task(
        DataConfig(source="deepscaler", path=write_jsonl(tmp_path / "dsr.jsonl", rows))
    )
    assert [p.answer for p in task.train] == ["0", "1", "2", "3", "4"] and task.train[
        2
    ].solution == "so \\boxed{2}"


def test_skywork_difficulty_filter_and_json_answers(tmp_path):
    difficulties = [0, 1, 8, 15, 16, None]
    rows = [skywork_row(i, d) for i, d in enumerate(difficulties)]
    path = write_parquet(tmp_path / "skywork.parquet", rows)
    key = "extra_info.model_difficulty.DeepSeek-R1-Distill-Qwen-7B"
    task = load_task(
        DataConfig(
            source="skywork_or1_math", path=path, difficulty_key=key, difficulty_range=[1, 15]
        )
    )
    assert [p.problem for p in task.train] == [
        f"Skywork problem {i}. Let's think step by step." for i in (1, 2, 3)
    ]
    assert task.train[0].answer == "\\frac{1}{2}" and task.train[0].meta["answers"] == [
        "\\frac{1}{2}",
        "0.5",
    ]
    assert task.stats["filtered"] == 3
    # a key holding a dot ('1.5B') is matched whole
    assert get_path(rows[0], "extra_info.model_difficulty.DeepSeek-R1-Distill-Qwen-1.5B") == 16


def test_generic_keys_and_chat_list_problems(tmp_path):
    rows = [{"q": {"text": f"question {i}"}, "a": i} for i in range(4)]
    task = load_task(
        DataConfig(
            source="jsonl",
            path=write_jsonl(tmp_path / "g.jsonl", rows),
            problem_key="q.text",
            answer_key="a",
        )
    )
    assert [p.answer for p in task.train] == ["0", "1", "2", "3"]
    verl = [eurus_row(i, "math", answer=str(i)) for i in range(3)]
    task = load_task(
        DataConfig(
            source="parquet",
            path=write_parquet(tmp_path / "v.parquet", verl),
            problem_key="prompt",
            answer_key="reward_model.ground_truth",
        )
    )
    # generic: nothing stripped
    assert task.train[1].answer == "1" and task.train[1].problem.endswith(EURUS_INSTRUCTION)


def test_hub_code_path_on_a_local_repo_layout(offline_datasets):
    """data=still3 / eurus_numina with data.path set to a directory go through
    datasets.load_dataset(path, split=...) exactly as a hub id does."""
    repo = offline_datasets / "STILL-3-Preview-RL-Data"
    (repo / "data").mkdir(parents=True)
    write_parquet(
        repo / "data" / "train-00000-of-00001.parquet",
        [{"question": f"q{i}", "answer": str(i)} for i in range(6)],
    )
    assert [p.answer for p in load_task(DataConfig(source="still3", path=str(repo))).train] == [
        str(i) for i in range(6)
    ]
    eurus = offline_datasets / "Eurus-2-RL-Data"
    (eurus / "data").mkdir(parents=True)
    write_parquet(
        eurus / "data" / "train-00000-of-00001.parquet",
        [eurus_row(i, ["numina_amc_aime", "taco", "numina_olympiads"][i % 3]) for i in range(9)],
    )
    task = load_task(DataConfig(source="eurus_numina", path=str(eurus)))
    assert len(task.train) == 6 and {p.meta["data_source"] for p in task.train} == {
        "numina_amc_aime",
        "numina_olympiads",
    }


def test_unreachable_hub_set_is_a_data_error(offline_datasets):
    """Without the hub or its cache, a named source fails with a DataError naming the set and the
    local-copy alternative (the CLI prints it and exits 2), not a library traceback."""
    with pytest.raises(DataError) as e:
        load_task(DataConfig(source="still3"))
    assert "RUC-AIBOX/STILL-3-Preview-RL-Data" in str(e.value) and "data.path" in str(e.value)


def test_named_sources_default_to_their_hub_ids():
    from skyexp.data.sources import SOURCES

    assert SOURCES["still3"].hub == "RUC-AIBOX/STILL-3-Preview-RL-Data"
    assert SOURCES["eurus_numina"].hub == "PRIME-RL/Eurus-2-RL-Data"
    assert SOURCES["skywork_or1_math"].split == "math"


def test_json_array_files_load(tmp_path):
    path = tmp_path / "aime.json"  # agentica's deepscaler/data/train/*.json are JSON arrays
    path.write_text(json.dumps([{"problem": "p", "answer": "1"}, {"problem": "q", "answer": "2"}]))
    assert len(load_task(DataConfig(source="deepscaler", path=str(path))).train) == 2


@pytest.mark.parametrize(
    "name,rows",
    [
        ("train/deepscaler_aime_1983_2023.jsonl", 975),
        ("train/deepscaler_math_train.jsonl", 7470),
        ("train/deepscaler_subset_1209.jsonl", 1208),
    ],
)
def test_real_deepscaler_parts_load(shared_data, name, rows):
    task = load_task(DataConfig(source="deepscaler", path=str(shared_data / name)))
    assert len(task.train) == rows and not task.skipped
    assert len({p.id for p in task.train}) == rows


def test_real_eval_files_load_as_jsonl(shared_data):
    sizes = {
        "aime24": 30,
        "aime25": 30,
        "amc23": 40,
        "amc22_23": 83,
        "math500": 500,
        "olympiadbench": 675,
        "minerva_math": 272,
    }
    for name, n in sizes.items():
        task = load_task(
            DataConfig(source="jsonl", path=str(shared_data / "eval" / f"{name}.jsonl"))
        )
        assert len(task.train) == n and not task.skipped, name
