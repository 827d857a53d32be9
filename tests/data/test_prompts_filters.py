"""Prompt templates as config, decontamination (synthetic and the real AIME/MATH-500 overlap),
pass-rate bookkeeping, and SFT conversation rows."""

from __future__ import annotations

import pytest
from test_config import compose_cfg

from skyexp.config import to_typed
from skyexp.data import Template, apply_template, make_batch, template_of
from skyexp.data.decontam import find_contaminated
from skyexp.data.difficulty import fully_solved, in_band, merge, tally, without
from skyexp.data.sft_data import parse_conversation, parse_pair
from skyexp.records import Problem

CHAT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_dir):
    from skyexp.config import ModelConfig
    from skyexp.model.loading import load_tokenizer

    tok = load_tokenizer(str(tiny_dir), ModelConfig())
    tok.chat_template = CHAT
    return tok


def test_plain_text_templates():
    # a bare string is the user part, as before
    assert apply_template("2+2?", "{problem}\n") == "2+2?\n"
    t = Template("Q: {problem}", system="Be brief.", prefix=" <think>\n")
    assert apply_template("2+2?", t) == "Be brief.\n\nQ: 2+2? <think>\n"
    assert (
        apply_template("2+2?", Template("{problem}"), system="Row system.") == "Row system.\n\n2+2?"
    )
    # the template's system wins
    assert apply_template("2+2?", t, system="Row system.").startswith("Be brief.")


def test_chat_template_applied_when_the_model_has_one(chat_tokenizer):
    t = Template("{problem} Think.", system="SYS", prefix="<think>\n")
    text = apply_template("x=?", t, chat_tokenizer, chat=True)
    assert (
        text
        == "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nx=? Think.<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n"
    )
    # model.chat_template=false
    assert apply_template("x=?", t, chat_tokenizer, chat=False) == "SYS\n\nx=? Think.<think>\n"
    batch = make_batch(
        [Problem("a", "x=?", "1", meta={"system": "ROW"})], chat_tokenizer, "{problem}", True
    )
    assert batch.prompts[0].startswith("<|im_start|>system\nROW<|im_end|>")


@pytest.mark.parametrize(
    "name,expect",
    [
        (
            "qwen_math_cot",
            "Please reason step by step, and put your final answer within \\boxed{}.",
        ),
        ("sky_t1", "Return your final response within \\boxed{}."),
        ("r1_think", "<think>"),
        ("raw", "{problem}"),
    ],
)
def test_template_options_compose(name, expect):
    d = to_typed(compose_cfg([f"template={name}"])).data
    assert d.template == name and d.source == "arith"
    rendered = apply_template("PROBLEM", template_of(d))
    assert "PROBLEM" in rendered and (
        expect in rendered or expect == "{problem}" and rendered == "PROBLEM"
    )
    if name == "sky_t1":
        assert (
            d.system_prompt.startswith("Your role as an assistant") and "'\n\n'" in d.system_prompt
        )
    if name == "r1_think":
        assert d.response_prefix == " <think>\n" and rendered.endswith("Assistant: <think>\n")


def test_every_template_option_is_tested():
    from conftest import ROOT

    assert {p.stem for p in (ROOT / "conf" / "template").glob("*.yaml")} == {
        "qwen_math_cot",
        "sky_t1",
        "r1_think",
        "raw",
    }


def test_data_options_bring_their_recipe_template():
    d = to_typed(compose_cfg(["data=eurus_numina"])).data
    assert (
        d.template == "sky_t1"
        and d.strip_system
        and d.data_sources == ["numina_amc_aime", "numina_olympiads"]
    )
    # the CLI wins
    assert to_typed(compose_cfg(["data=eurus_numina", "template=raw"])).data.template == "raw"
    mix = to_typed(compose_cfg(["data=sky_t1_mini_mix"])).data
    assert [m.source for m in mix.mix] == [
        "still3",
        "eurus_numina",
        "eurus_numina",
    ] and mix.source == "mix"
    # the arith default is unchanged
    assert to_typed(compose_cfg([])).data.prompt_template == "{problem}\n"


def test_decontam_exact_ngram_and_short_problems():
    bench = [
        "Find the number of integer values of $k$ in $[-500,500]$ for which "
        "$\\log(kx)=2\\log(x+2)$ has one real solution.",
        "Compute $1+1$.",
    ]
    train = [
        "find the number of integer values of $k$ in  $[-500, 500]$ for which $\\log(kx) = "
        "2\\log(x+2)$ has one real solution.",
        "Here is some context first. Find the number of integer values of $k$ in $[-500,500]$ for "
        "which $\\log(kx)=2\\log(x+2)$ "
        "has one real solution. Then answer quickly.",
        "Compute $1+2$.",
        "Compute $1 + 1$.",
        "An unrelated problem about triangles and their many circles today.",
    ]
    hits = {h.train_index: h for h in find_contaminated(train, bench, n=10, threshold=0.6)}
    assert sorted(hits) == [0, 1, 3]
    assert (
        hits[0].match == "exact"
        and hits[3].match == "exact"
        and hits[1].match == "ngram"
        and hits[1].overlap == 1.0
    )
    assert 2 not in hits  # short problems (< n tokens) are compared by exact match only


AIME_IN_MATH500 = {
    "aime-1983-2",
    "aime-2001-II-3",
    "aime-2006-II-5",
    "aime-2010-I-6",
    "aime-2015-II-6",
    "aime-2016-I-10",
    "aime-2017-II-7",
}


def test_real_aime_problems_found_in_math500(shared_data):
    from skyexp.data import read_jsonl

    aime = read_jsonl(str(shared_data / "train/deepscaler_aime_1983_2023.jsonl"))
    math500 = read_jsonl(str(shared_data / "eval/math500.jsonl"))
    hits = find_contaminated([r["problem"] for r in aime], [r["problem"] for r in math500])
    assert {aime[h.train_index]["id"] for h in hits} == AIME_IN_MATH500
    # the same problems
    assert all(aime[h.train_index]["answer"] == math500[h.bench_index]["answer"] for h in hits)
    verbatim = {
        r["id"]
        for r in aime
        if "".join(r["problem"].split()) in {"".join(m["problem"].split()) for m in math500}
    }
    assert len(verbatim) == 4 and verbatim <= AIME_IN_MATH500  # the 4 that SOURCES.md lists
    # and no overlap with the other benchmarks (SOURCES.md)
    for name in ("aime24", "aime25", "amc22_23"):
        other = read_jsonl(str(shared_data / f"eval/{name}.jsonl"))
        assert not find_contaminated([r["problem"] for r in aime], [r["problem"] for r in other]), (
            name
        )


def test_pass_rate_bookkeeping():
    counts = merge(
        tally(["a", "b"], [[1, 1, 1], [0, 1, 0]]), tally(["a", "c"], [[1.0, 1.0], [0.0, 0.0]])
    )
    assert counts == {"a": (5, 5), "b": (1, 3), "c": (0, 2)}
    assert fully_solved(counts) == {"a"} and fully_solved({"z": (0, 0)}) == set()
    problems = [Problem(i, i, "1") for i in "abc"]
    kept, dropped = without(problems, fully_solved(counts))
    assert [p.id for p in kept] == ["b", "c"] and dropped == 1
    assert [in_band(r) for r in (0.0, 0.25, 1.0)] == [False, True, False]
    assert in_band(0.0, drop_all_wrong=False) and in_band(1.0, drop_all_right=False)


def test_stage_boundary_drops_prompts_solved_in_every_sample():
    """context.drop_solved: the trainer's boundary step on the counts the RL steps collected."""
    from types import SimpleNamespace

    from skyexp.data import DataError, PromptSampler
    from skyexp.rl.boundaries import drop_solved
    from skyexp.rl.state import Counters, Live

    problems = [Problem(f"p{i}", f"problem {i}", "1") for i in range(10)]
    sampler = PromptSampler(problems, seed=3)
    logged: list[dict] = []
    # p0 solved 8/8 over two steps, p1 4/4, p2 3/4, p3 0/4; the rest never drawn
    solved = merge(
        tally(["p0", "p1", "p2", "p3"], [[1] * 4, [1] * 4, [1, 1, 0, 1], [0] * 4]),
        tally(["p0"], [[1] * 4]),
    )
    run = SimpleNamespace(
        live=Live(sampler, solved), log=logged.append, counters=Counters(rl_step=7)
    )
    nxt = drop_solved(run, sampler, 1)
    assert [p.id for p in nxt.problems] == [f"p{i}" for i in range(2, 10)] and nxt.seed == 4
    assert logged == [{"train/dropped_solved": 2, "train/prompts": 8, "train/rl_step": 7}]
    drawn = {p.id for p in nxt.next(16)}
    # two full epochs of the rest, nothing dropped comes back
    assert drawn == {f"p{i}" for i in range(2, 10)}
    run.live.solved = tally([p.id for p in nxt.problems], [[1, 1]] * 8)
    with pytest.raises(DataError, match="every prompt was solved"):
        drop_solved(run, nxt, 2)


def test_sft_conversation_rows():
    sharegpt = {
        "system": "SYS",
        "conversations": [{"from": "user", "value": "Q"}, {"from": "assistant", "value": "A"}],
    }
    msgs, resp = parse_conversation(sharegpt, "conversations", "system")
    assert (
        msgs == [{"role": "system", "content": "SYS"}, {"role": "user", "content": "Q"}]
        and resp == "A"
    )
    openai = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    assert parse_conversation(openai, "messages", "system") == (
        [{"role": "user", "content": "Q"}],
        "A",
    )
    assert "does not end" in parse_conversation(
        {"messages": [{"role": "user", "content": "Q"}]}, "messages", "system"
    )
    assert "malformed" in parse_conversation(
        {"messages": [{"role": "robot", "content": "Q"}]}, "messages", "system"
    )
    assert "no user" in parse_conversation(
        {"messages": [{"role": "assistant", "content": "A"}]}, "messages", "system"
    )
    assert "non-empty message list" in parse_conversation({"messages": "Q"}, "messages", "system")
    assert parse_pair({"prompt": "Q", "response": " A "}, "prompt", "response") == ("Q", "A")
    assert "missing or empty 'response'" in parse_pair({"prompt": "Q"}, "prompt", "response")
