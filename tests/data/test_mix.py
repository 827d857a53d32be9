"""Mixes: weights and counts, duplicates removed and counted, deterministic per seed, ranks see
disjoint prompts, and a resumed sampler continues at the exact position."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from test_sources import write_jsonl

from skyexp.config import ConfigError, DataConfig, MixEntry
from skyexp.data import DataError, PromptSampler, load_task
from skyexp.data.mix import build_mix, dedup, normalise_text, take
from skyexp.records import Problem


def probs(prefix: str, texts: list[str]) -> list[Problem]:
    return [Problem(id=f"{prefix}{i}", problem=t, answer="1") for i, t in enumerate(texts)]


def test_normalise_text_ignores_latex_spacing_case_and_delimiters():
    a = "Let $f(x) = \\left( x+1 \\right)$, find  $\\dfrac{1}{2}$."
    b = "let $f(x)=(x+1)$,find $\\frac{1}{2}$."
    assert normalise_text(a) == normalise_text(b)
    assert normalise_text("Compute 2+3.") != normalise_text("Compute 2*3.")


def test_dedup_counts_within_and_across_sources():
    a = probs("a", ["What is 1+1?", "What is 2+2?", "what  is 1+1 ?", "Unique A"])
    b = probs("b", ["What is $2+2$?", "Unique B", "unique a"])
    kept, stats = dedup([("A", a), ("B", b)])
    assert [p.id for p in kept[0]] == ["a0", "a1", "a3"] and [p.id for p in kept[1]] == ["b1"]
    assert stats[0].dup_within == 1 and stats[0].dup_across == {}
    assert stats[1].dup_within == 0 and stats[1].dup_across == {"A": 2}


def test_take_weights_and_counts():
    p = probs("x", [str(i) for i in range(10)])
    rng = random.Random(0)
    assert len(take(p, 1.0, 0, rng)) == 10 and len(take(p, 0.5, 0, rng)) == 5
    up = take(p, 2.5, 0, rng)
    # every row twice, 5 a third time
    assert len(up) == 25 and min(Counter(x.id for x in up).values()) == 2
    assert len(take(p, 1.0, 3, rng)) == 3 and len({x.id for x in take(p, 1.0, 7, rng)}) == 7


def test_build_mix_is_deterministic_and_labels_ids():
    groups = [
        ("A", probs("a", [f"a {i}" for i in range(20)])),
        ("B", probs("b", [f"b {i}" for i in range(30)])),
    ]
    one, stats = build_mix(groups, [0.5, 1.0], [0, 0], seed=3)
    two, _ = build_mix(groups, [0.5, 1.0], [0, 0], seed=3)
    other, _ = build_mix(groups, [0.5, 1.0], [0, 0], seed=4)
    assert [p.id for p in one] == [p.id for p in two] != [p.id for p in other]
    assert Counter(p.meta["mix_source"] for p in one) == {"A": 10, "B": 30} and [
        s.taken for s in stats
    ] == [10, 30]
    assert one[0].id.startswith("A/a")


def _mix_files(tmp_path):
    still = [{"question": f"Still problem {i}", "answer": str(i)} for i in range(40)]
    still[3] = {"question": "broken", "answer": None}
    dsr = [{"problem": f"DeepScaleR problem {i}", "answer": str(i)} for i in range(30)]
    # in both
    dsr += [
        {"problem": "still  problem 5", "answer": "5"},
        {"problem": "STILL problem 6", "answer": "6"},
    ]
    return write_jsonl(tmp_path / "still.jsonl", still), write_jsonl(tmp_path / "dsr.jsonl", dsr)


def mix_config(tmp_path, **kw) -> DataConfig:
    still, dsr = _mix_files(tmp_path)
    entries = [MixEntry(source="still3", path=still), MixEntry(source="deepscaler", path=dsr, **kw)]
    return DataConfig(source="mix", mix=entries, max_bad_fraction=0.1)


def test_mix_from_files_removes_and_counts_duplicates(tmp_path, caplog):
    caplog.set_level("INFO")
    task = load_task(mix_config(tmp_path))
    assert len(task.train) == 39 + 30 and task.stats["duplicates"] == 2 and task.stats["bad"] == 1
    assert task.stats["sources"] == {"still3": 39, "deepscaler": 30}
    assert (
        "deepscaler: 32 rows, 0 bad, 0 filtered, 0 repeated, 2 duplicates of other sources (2 in "
        "still3)"
        in caplog.text
    )
    assert task.skipped == [(4, "still3: missing or empty 'answer'")]  # 1-based
    counted = load_task(mix_config(tmp_path, count=10))
    assert counted.stats["sources"] == {"still3": 39, "deepscaler": 10}


def test_mix_two_ranks_disjoint_and_resume_exact(tmp_path):
    problems = load_task(mix_config(tmp_path)).train
    assert len({p.id for p in problems}) == len(problems)
    ranks = [PromptSampler(problems, seed=7, rank=r, world_size=2) for r in range(2)]
    seen: list[set[str]] = [set(), set()]
    for _ in range(4):  # 4 x 16 = 64 <= 69 problems: one epoch, no repeats
        for r, s in enumerate(ranks):
            seen[r] |= {p.id for p in s.next(16)}
    assert len(seen[0]) == len(seen[1]) == 32 and not seen[0] & seen[1]
    # resume: a fresh process rebuilds the mix from the config and loads the sampler state
    a = PromptSampler(problems, seed=7)
    for _ in range(5):  # crosses an epoch boundary (5 x 16 = 80 > 69)
        a.next(16)
    state = json.loads(json.dumps(a.state_dict()))  # as a checkpoint stores it
    b = PromptSampler(load_task(mix_config(tmp_path)).train, seed=7)
    b.load_state_dict(state)
    assert [p.id for p in a.next(40)] == [p.id for p in b.next(40)]
    # other data: refuse instead of drawing other prompts
    with pytest.raises(DataError, match="fingerprint"):
        PromptSampler(problems[::-1], seed=7).load_state_dict(state)
    with pytest.raises(DataError, match="size"):
        PromptSampler(load_task(mix_config(tmp_path, count=10)).train, seed=7).load_state_dict(
            state
        )
    with pytest.raises(DataError, match="seed"):
        PromptSampler(problems, seed=8).load_state_dict(state)


def test_resume_under_another_world_size(tmp_path):
    problems = load_task(mix_config(tmp_path)).train
    single = PromptSampler(problems, seed=1)
    single.next(8)
    state = single.state_dict()
    halves = [PromptSampler(problems, seed=1, rank=r, world_size=2) for r in range(2)]
    for h in halves:
        h.load_state_dict(state)
    whole = [p.id for p in single.next(8)]
    assert [p.id for h in halves for p in h.next(8)] == whole


@pytest.mark.parametrize(
    "entries,key",
    [
        ([], "data.mix"),
        ([MixEntry(source="arith")], "data.mix[0].source"),
        ([MixEntry(source="jsonl")], "data.mix[0].path"),
        ([MixEntry(source="still3", weight=0)], "data.mix[0].weight"),
        ([MixEntry(source="nope")], "data.mix[0].source"),
    ],
)
def test_mix_config_errors_name_the_key(entries, key):
    from skyexp.config import Config, validate

    with pytest.raises(ConfigError) as e:
        validate(Config(data=DataConfig(source="mix", mix=entries)))
    assert key in str(e.value)


def test_real_mix_of_the_deepscaler_parts_removes_true_duplicates(shared_data):
    """The three DeepScaleR parts overlap (MATH train holds AIME problems; the 1.2k subset is drawn
    from DeepScaleR, which contains both): every problem the mix drops as a duplicate has the same
    answer as the one it kept, judged by math-verify ('097' = '97', '\\frac13' = '\\frac{1}{3}')."""
    from skyexp.config import RewardConfig
    from skyexp.data.mix import text_key
    from skyexp.data.rows import read_jsonl
    from skyexp.rewards import build_reward

    names = ["deepscaler_aime_1983_2023", "deepscaler_math_train", "deepscaler_subset_1209"]
    paths = [str(shared_data / "train" / f"{n}.jsonl") for n in names]
    task = load_task(
        DataConfig(source="mix", mix=[MixEntry(source="deepscaler", path=p) for p in paths])
    )
    # ids as the mix labels them
    rows = {f"deepscaler{i + 1}/{r['id']}": r for i, p in enumerate(paths) for r in read_jsonl(p)}
    assert len(task.train) + task.stats["duplicates"] == len(rows) == 975 + 7470 + 1208
    # the first source loses nothing
    assert task.stats["duplicates"] > 0 and task.stats["sources"]["deepscaler1"] == 975
    kept = {text_key(p.problem): p.answer for p in task.train}
    kept_ids = {p.id for p in task.train}
    dropped = [r for i, r in rows.items() if i not in kept_ids]
    assert len(dropped) == task.stats["duplicates"]
    reward = build_reward(RewardConfig())
    try:
        scores = reward.score(
            [f"\\boxed{{{r['answer']}}}" for r in dropped],
            [kept[text_key(r["problem"])] for r in dropped],
        ).scores
    finally:
        reward.close()
    assert scores == [1.0] * len(dropped)


def test_real_amc23_is_inside_amc22_23(shared_data):
    """SOURCES.md: all 40 AMC 2023 problems are also in the 83-problem amc22_23 set."""
    task = load_task(
        DataConfig(
            source="mix",
            mix=[
                MixEntry(source="jsonl", path=str(shared_data / "eval/amc22_23.jsonl")),
                MixEntry(source="jsonl", path=str(shared_data / "eval/amc23.jsonl")),
            ],
        )
    )
    assert task.stats["duplicates"] == 40 and task.stats["sources"] == {"jsonl1": 83, "jsonl2": 0}
