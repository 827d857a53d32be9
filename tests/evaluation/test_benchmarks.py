"""Benchmark configs and problem loading: every conf/eval option composes under eval.yaml, local
benchmark files load by path, hub configs fail offline with a way out, benchmark lists expand."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from skyexp.__main__ import register_schema
from skyexp.config import QWEN_MATH_COT, ConfigError, EvalConfig, EvalRunConfig, to_typed
from skyexp.config.overrides import override_key
from skyexp.data import DataError, Template, template_of
from skyexp.evaluation.benchmarks import load_problems
from skyexp.evaluation.job import checkpoint_labels, resolve_benchmarks
from skyexp.evaluation.runner import eval_template
from skyexp.rewards.extract import answer_text

CONF = ROOT / "conf"
BENCHMARKS = ["aime24", "aime25", "amc23", "math500", "olympiadbench", "minerva_math"]
EXPECTED_ROWS = {
    "aime24": 30,
    "aime25": 30,
    "amc23": 40,
    "math500": 500,
    "olympiadbench": 675,
    "minerva_math": 272,
}


def compose_eval(overrides: list[str]):
    register_schema()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="eval", overrides=overrides)


def test_eval_yaml_has_the_training_groups():
    train = OmegaConf.load(CONF / "train.yaml").defaults
    ev = OmegaConf.load(CONF / "eval.yaml").defaults
    groups = lambda d: [next(iter(x)) for x in d if not isinstance(x, str)]  # noqa: E731
    assert groups(train) == groups(ev), (
        "conf/eval.yaml must list the same groups as conf/train.yaml"
    )


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "eval").glob("*.yaml")))
def test_every_eval_option_composes_under_eval_yaml(option):
    c = to_typed(compose_eval([f"eval={option}"]), EvalRunConfig)
    assert c.eval.name == option and c.benchmarks == [] and c.checkpoints == []


def test_protocols():
    get = lambda name: to_typed(compose_eval([f"eval={name}"]), EvalRunConfig).eval  # noqa: E731
    for name in ("aime24", "aime25", "amc23"):  # Sky-T1: 8 samples, T=0.6, top_p=0.95
        e = get(name)
        assert (e.n, e.temperature, e.top_p, e.source) == (8, 0.6, 0.95, "hub") and e.hub
    for name in ("math500", "olympiadbench", "minerva_math"):  # greedy
        e = get(name)
        assert (e.n, e.temperature) == (1, 0.0) and e.hub
    assert "Please reason step by step" in get("math500").prompt_template
    assert get("olympiadbench").hub_subset == "OE_TO_maths_en_COMP"
    # the held-out split is prompted as training is: the data config's template, and a
    # template=... override of it, reach eval through interpolation
    for extra in ([], ["template=r1_think"], ["template=sky_t1"]):
        c = to_typed(compose_eval(["eval=arith", *extra]), EvalRunConfig)
        assert eval_template(c.eval) == template_of(c.data), extra
    r1 = to_typed(compose_eval(["eval=arith", "template=r1_think"]), EvalRunConfig).eval
    assert r1.response_prefix == " <think>\n" and "User: {problem}" in r1.prompt_template
    # benchmarks keep their own protocol prompt whatever the training template
    bench = to_typed(compose_eval(["eval=aime24", "template=sky_t1"]), EvalRunConfig).eval
    assert eval_template(bench) == Template(QWEN_MATH_COT)


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["eval.source=jsonl"], "eval.path"),
        (["eval.source=nope"], "eval.source"),
        (["eval=aime24", "eval.hub="], "eval.hub"),
        (["eval.prompt_template=no placeholder"], "eval.prompt_template"),
        (["eval.every=-1"], "eval.every"),
        (["eval.n=0"], "eval.n"),
        (["eval.top_p=0"], "eval.top_p"),
        (["eval.temperature=-0.5"], "eval.temperature"),
    ],
)
def test_eval_checks_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        to_typed(compose_eval(overrides), EvalRunConfig)


def test_benchmark_list_expands_with_shared_overrides():
    base = [
        "benchmarks=[aime24,math500]",
        "eval.n=64",
        "eval.path=/data/${eval.name}.jsonl",
        "eval=arith",
    ]
    typed = to_typed(compose_eval(base), EvalRunConfig)
    evals = resolve_benchmarks(typed, base, compose_eval)
    assert [e.name for e in evals] == ["aime24", "math500"]
    assert [e.n for e in evals] == [64, 64]  # the override reaches every benchmark
    assert [e.path for e in evals] == [
        "/data/aime24.jsonl",
        "/data/math500.jsonl",
    ]  # resolved per benchmark
    assert evals[0].temperature == 0.6 and evals[1].temperature == 0.0  # each keeps its protocol
    assert (
        resolve_benchmarks(to_typed(compose_eval([]), EvalRunConfig), [], compose_eval)[0].name
        == "arith"
    )
    with pytest.raises(ConfigError, match="benchmarks"):
        resolve_benchmarks(
            to_typed(compose_eval(["benchmarks=[aime24,aime24]"]), EvalRunConfig), [], compose_eval
        )


def test_override_keys_and_checkpoint_labels():
    assert (
        override_key("+eval.n=4") == "eval.n"
        and override_key("~eval") == "eval"
        and override_key("eval=x") == "eval"
    )
    assert checkpoint_labels(["/o/run1/final", "/o/run2/final", "/p/run1/final"]) == [
        "run1_final",
        "run2_final",
        "run1_final_2",
    ]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_local_benchmark_files_load_by_path(shared_data, name):
    path = shared_data / "eval" / f"{name}.jsonl"
    if not path.exists():
        pytest.skip(f"{path} absent")
    problems = load_problems(
        EvalConfig(name=name, source="hub", hub="unused/offline", path=str(path))
    )
    assert len(problems) == EXPECTED_ROWS[name]
    assert all(p.answer and p.problem for p in problems) and len({p.id for p in problems}) == len(
        problems
    )


def test_hub_answers_are_normalised(tmp_path):
    # the shapes hub datasets use: OlympiadBench's list of $...$, AMC's floats
    rows = [
        {"question": "q1", "final_answer": ["$2^{1009}$"]},
        {"question": "q2", "final_answer": [27.0]},
        {"question": "q3", "final_answer": "$\\frac{1}{2}$"},
    ]
    f = tmp_path / "hub.parquet"
    import datasets

    datasets.Dataset.from_list(
        [{"question": r["question"], "final_answer": json.dumps(r["final_answer"])} for r in rows]
    ).to_parquet(str(f))
    assert (
        answer_text(["$2^{1009}$"]) == "2^{1009}"
        and answer_text(27.0) == "27"
        and answer_text(0.5) == "0.5"
    )
    assert (
        answer_text("$\\frac{1}{2}$") == "\\frac{1}{2}"
        and answer_text("  ") is None
        and answer_text([]) is None
    )
    assert answer_text(True) is None and answer_text(7) == "7"
    # a local parquet with a custom field mapping
    problems = load_problems(
        EvalConfig(name="x", path=str(f), problem_key="question", answer_key="final_answer")
    )
    assert [p.problem for p in problems] == ["q1", "q2", "q3"]


def test_offline_hub_and_missing_files_fail_with_a_way_out(tmp_path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):  # what load_dataset raises without network or cache
        raise ConnectionError(
            "Couldn't reach 'HuggingFaceH4/aime_2024' on the Hub (LocalEntryNotFoundError)"
        )

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="eval.path"):
        load_problems(
            EvalConfig(
                name="aime24", source="hub", hub="HuggingFaceH4/aime_2024", hub_split="train"
            )
        )
    with pytest.raises(DataError, match="not found"):
        load_problems(EvalConfig(name="x", path=str(tmp_path / "missing.jsonl")))
    with pytest.raises(DataError, match="held-out"):
        load_problems(EvalConfig(name="x", source="data"), held_out=[])


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHMARKS)
def test_gold_answers_match_themselves(shared_data, name):
    """Every gold answer, boxed, is extracted intact and math-verify (parse + verify of both sides,
    no exact-text shortcut) finds it equal to itself; a miss would make the problem unsolvable."""
    from skyexp.rewards.extract import last_boxed
    from skyexp.rewards.pool import ScoringPool

    path = shared_data / "eval" / f"{name}.jsonl"
    if not path.exists():
        pytest.skip(f"{path} absent")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    answers = [answer_text(r["answer"]) for r in rows]
    assert [last_boxed(f"The answer is \\boxed{{{a}}}.") for a in answers] == answers
    pool = ScoringPool(
        workers=1, timeout_s=15.0
    )  # generous: a loaded machine must not turn parses into misses
    try:
        verdicts = pool.verify([(a, a) for a in answers])
    finally:
        pool.close()
    misses = [(r["id"], a, v) for r, a, v in zip(rows, answers, verdicts) if v != (1.0, "ok")]
    assert misses == [], (
        f"{len(misses)} of {len(rows)} gold answers do not match themselves: {misses[:10]}"
    )
