"""The offline jobs on the tiny model: `python -m skyexp.filter` writes pass rates that a recount
reproduces; `python -m skyexp.distill` writes only verified-correct responses, and an SFT stage
trains on them; hub-style SFT sets in conversation format load with the response-only split."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import only_run_dir, run_skyexp
from test_config import compose_cfg
from test_sources import write_parquet

from skyexp.config import to_typed

# A level-1 arith split and the same problems for both jobs; the model is a short SFT warm-up
# (slip-free traces) so that some prompts are solved sometimes, some never.
SPLIT = ["data.levels=[1]", "data.train_size=32", "data.slip_rate=0", "sft=none"]
WARMUP = [
    "sft.steps=40",
    "sft.batch_size=32",
    "sft.lr=3e-3",
    "sft.max_len=32",
    "sft.warmup_steps=5",
    "data.levels=[1]",
    "data.train_size=2000",
    "data.slip_rate=0",
]


@pytest.fixture(scope="module")
def warm_model(dist1, tmp_path_factory):
    """The tiny model after 40 SFT steps on level-1 arith, as a Hugging Face directory."""
    from skyexp.data import load_task
    from skyexp.model import loading
    from skyexp.rl import sft

    cfg = to_typed(compose_cfg(WARMUP))
    base = loading.resolve_path(cfg.model)
    policy = loading.load_model(base, cfg.model)
    tok = loading.load_tokenizer(base, cfg.model)
    out = tmp_path_factory.mktemp("warm") / "model"
    sft.run_sft(cfg, dist1, policy, tok, load_task(cfg.data).train, out, lambda m: None, False)
    return out


def rescore(texts: list[str], golds: list[str]) -> list[float]:
    """An independent recount: a fresh math-verify scorer over the written texts."""
    from skyexp.config import RewardConfig
    from skyexp.rewards import build_reward

    reward = build_reward(RewardConfig())
    try:
        return reward.score(texts, golds).scores
    finally:
        reward.close()


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_filter_pass_rates_match_a_recount(warm_model, tmp_path):
    out = tmp_path / "filtered.jsonl"
    # T = 0.8: this warm-up model then solves some prompts in all 8 samples (measured: 9 of 32), so
    # the drop is exercised, and most others sometimes
    r = run_skyexp(
        [
            f"model.path={warm_model}",
            *SPLIT,
            "filter.n=8",
            "filter.max_response_len=24",
            "filter.temperature=0.8",
            f"filter.out={out}",
        ],
        tmp_path,
        timeout=900,
        module="skyexp.filter",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    samples = read_jsonl(tmp_path / "filtered.samples.jsonl")
    report = json.loads((tmp_path / "filtered.report.json").read_text())
    assert len(samples) == report["input"] == 32 and all(len(s["samples"]) == 8 for s in samples)
    texts = [x["text"] for s in samples for x in s["samples"]]
    scores = rescore(texts, [s["answer"] for s in samples for _ in range(8)])
    recount = {s["id"]: sum(scores[i * 8 : (i + 1) * 8]) for i, s in enumerate(samples)}
    assert all(recount[s["id"]] == s["correct"] for s in samples)
    kept = read_jsonl(out)
    assert kept, (
        "no prompt in the band 0 < pass rate < 1: the warm-up model is too weak for this test"
    )
    assert {k["id"] for k in kept} == {i for i, c in recount.items() if 0 < c < 8}
    assert all(
        k["pass_rate"] == recount[k["id"]] / 8 and k["n"] == 8 and k["correct"] == recount[k["id"]]
        for k in kept
    )
    assert report["all_wrong"] + report["all_right"] + report["kept"] == 32
    assert report["all_right"] == sum(c == 8 for c in recount.values()) > 0, (
        "no prompt dropped: the test exercises nothing"
    )
    assert sum(report["pass_rates"].values()) == 32
    # the filtered file is a data source again, selectable by pass rate (curriculum use)
    from skyexp.config import DataConfig
    from skyexp.data import load_task

    task = load_task(
        DataConfig(
            source="jsonl", path=str(out), difficulty_key="pass_rate", difficulty_range=[0.01, 0.99]
        )
    )
    assert len(task.train) == len(kept)


@pytest.mark.slow
def test_distill_writes_verified_sft_data_that_an_sft_stage_trains_on(warm_model, tmp_path, dist1):
    out = tmp_path / "distill.jsonl"
    r = run_skyexp(
        [
            f"model.path={warm_model}",
            *SPLIT,
            "distill.k=8",
            "distill.keep=2",
            "distill.max_response_len=24",
            f"distill.out={out}",
        ],
        tmp_path,
        timeout=900,
        module="skyexp.distill",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_jsonl(out)
    assert rows, "no correct sample at all: the warm-up model is too weak for this test"
    assert all(
        r["messages"][-1]["role"] == "assistant"
        and r["messages"][-2]["content"] == r["problem"] + "\n"
        for r in rows
    )
    assert rescore([r["messages"][-1]["content"] for r in rows], [r["answer"] for r in rows]) == [
        1.0
    ] * len(rows)
    per_problem: dict[str, int] = {}
    for row in rows:
        per_problem[row["id"].rsplit("#", 1)[0]] = (
            per_problem.get(row["id"].rsplit("#", 1)[0], 0) + 1
        )
    assert max(per_problem.values()) <= 2 and len({r["id"] for r in rows}) == len(rows)
    report = json.loads((tmp_path / "distill.report.json").read_text())
    assert report["rows"] == len(rows) and report["prompts"] == 32

    from skyexp.model import loading
    from skyexp.rl import sft

    cfg = to_typed(
        compose_cfg(
            [
                "sft.source=jsonl",
                f"sft.path={out}",
                "sft.format=conversation",
                "sft.messages_key=messages",
                "sft.steps=3",
                "sft.batch_size=4",
                "sft.lr=1e-3",
            ]
        )
    )
    tok = loading.load_tokenizer(str(warm_model), cfg.model)
    examples = sft.sft_examples(cfg, [], tok)
    # the prompt RL would render
    assert [e[0] for e in examples] == [r["problem"] + "\n" for r in rows]
    policy = loading.load_model(str(warm_model), cfg.model)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    logged: list[dict] = []
    stats = sft.run_sft(cfg, dist1, policy, tok, [], tmp_path / "sft_out", logged.append, False)
    assert math.isfinite(stats["sft/final_loss"]) and len(logged) == 3
    assert any(not torch.equal(before[k], v) for k, v in policy.state_dict().items())
    assert (tmp_path / "sft_out" / "DONE").exists()


def test_distill_rows_keep_only_correct_finished_distinct_samples():
    """Rejection sampling on hand-made records: wrong, truncated, failed and repeated samples are
    never kept; the prompt is the data template's (system, user) and the response carries the
    template's response prefix, where the sampled text began."""
    from skyexp.offline.distill import accepted, sft_rows
    from skyexp.records import Problem

    def smp(text, score, status="ok", truncated=False):
        return {
            "text": text,
            "score": score,
            "status": status,
            "truncated": truncated,
            "extracted": text[-1],
        }

    samples = [
        smp("wrong 3", 0.0),
        smp("cut 4", 1.0, truncated=True),
        smp("timeout 4", 1.0, status="timeout"),
        smp("right 4", 1.0),
        smp("right 4", 1.0),
        smp("also 4", 1.0),
    ]
    assert [x["text"] for x in accepted(samples, keep=0)] == ["right 4", "also 4"]
    assert [x["text"] for x in accepted(samples, keep=1)] == ["right 4"]
    cfg = to_typed(
        compose_cfg(
            ["template=r1_think", "distill.k=6", "distill.keep=0", "data.system_prompt=SYS"]
        )
    )
    rows = sft_rows(
        [Problem("q1", "2+2?", "4"), Problem("q2", "1+1?", "2")],
        [{"correct": 3, "samples": samples}, {"correct": 0, "samples": samples[:1]}],
        cfg,
    )
    assert [r["id"] for r in rows] == ["q1#0", "q1#1"] and all(r["pass_rate"] == 0.5 for r in rows)
    m = rows[0]["messages"]
    assert [x["role"] for x in m] == ["system", "user", "assistant"] and m[0]["content"] == "SYS"
    assert (
        m[1]["content"].endswith("User: 2+2?\nAssistant:")
        and m[2]["content"] == " <think>\nright 4"
    )


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [0, pytest.param(2, marks=pytest.mark.dist)])
def test_drop_solved_at_a_stage_boundary_in_a_real_run(warm_model, tmp_path, ranks):
    """Two one-step stages over all 16 prompts: the boundary drops exactly the prompts whose every
    sample was correct in stage 0, i.e. batch/solve_all of that step times 16 — also under
    torchrun, where each rank saw 8 of them and the counts are gathered."""
    stages = "context.stages=[{steps:1,max_response_len:24},{steps:1,max_response_len:24}]"
    r = run_skyexp(
        [
            f"model.path={warm_model}",
            "sft=none",
            "data.levels=[1]",
            "data.train_size=16",
            "data.slip_rate=0",
            "algo.batch_size=16",
            "algo.n=4",
            stages,
            "context.drop_solved=true",
            "eval.before=false",
            "eval.after=false",
            "logger=local",
            "logger.progress=false",
            "trainer.save_final=false",
        ],
        tmp_path,
        torchrun=ranks,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_jsonl(only_run_dir(tmp_path) / "metrics.jsonl")
    steps = [x for x in rows if "batch/solve_all" in x]
    boundary = [x for x in rows if "train/dropped_solved" in x]
    assert len(steps) == 2 and len(boundary) == 1
    solved_all = round(steps[0]["batch/solve_all"] * 16)
    assert solved_all > 0, (
        "the warm-up model solved no prompt in every sample: the test needs a stronger model"
    )
    assert (
        boundary[0]["train/dropped_solved"] == solved_all
        and boundary[0]["train/prompts"] == 16 - solved_all
    )


def test_hub_style_sft_set_in_conversation_format(tmp_path, tiny_dir, monkeypatch):
    """A local directory laid out like NovaSky-AI/Sky-T1-7B-step1-sft-5k (ShareGPT conversations
    with a top-level system prompt) loads through datasets.load_dataset, bad rows counted."""
    import datasets

    from skyexp.model import loading
    from skyexp.rl import sft

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    rows = [
        {
            "system": "SYS",
            "conversations": [
                {"from": "user", "value": f"Q{i}"},
                {"from": "assistant", "value": f"A{i}"},
            ],
        }
        for i in range(30)
    ]
    rows[2] = {
        "system": "SYS",
        "conversations": [{"from": "user", "value": "Q2"}, {"from": "user", "value": "again"}],
    }
    (tmp_path / "repo" / "data").mkdir(parents=True)
    write_parquet(tmp_path / "repo" / "data" / "train-00000-of-00001.parquet", rows)
    cfg = to_typed(
        compose_cfg(["sft.source=hub", f"sft.path={tmp_path / 'repo'}", "sft.format=conversation"])
    )
    tok = loading.load_tokenizer(str(tiny_dir), cfg.model)
    examples = sft.sft_examples(cfg, [], tok)
    assert len(examples) == 29 and examples[0] == ("SYS\n\nQ0", "A0")
    tok.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    cfg.model.chat_template = True
    assert sft.sft_examples(cfg, [], tok)[0] == ("[system]SYS[user]Q0[assistant]", "A0")
    # the cache key follows the file's content
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "Q", "response": "A"}) + "\n")
    cfg = to_typed(compose_cfg(["sft.source=jsonl", f"sft.path={f}"]))
    key = sft.cache_dir(cfg, "base")
    f.write_text(json.dumps({"prompt": "Q", "response": "B"}) + "\n")
    assert sft.cache_dir(cfg, "base") != key
