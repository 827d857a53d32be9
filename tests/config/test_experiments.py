"""Recipes and sweeps: every real-scale file composes and validates with its published setting;
each tiny_ twin keeps its structure; every tiny_ experiment runs (slow)."""

from __future__ import annotations

import math
import re

import pytest
from conftest import ROOT
from omegaconf import OmegaConf
from test_config import compose_cfg

from skyexp.config import to_typed

EXPERIMENTS = ROOT / "experiments"
SWEEPS = ROOT / "sweeps"
REAL = ["sky_t1_7b_zero", "sky_t1_7b_step4", "sky_t1_mini", "skywork_or1_7b"]
SWEEP_NAMES = [
    "entropy_collapse", "offpolicy", "group_size", "kl", "clip_higher", "clip_asymmetry"
]


def typed(overrides: list[str]):
    return to_typed(compose_cfg(overrides))


def test_every_recipe_and_sweep_of_the_issue_exists():
    have = {p.stem for p in EXPERIMENTS.glob("*.yaml")}
    assert {*REAL, *(f"tiny_{n}" for n in REAL)} <= have
    sweeps = {
        p.stem for p in SWEEPS.glob("*.yaml") if not p.stem.startswith("findings_")
    }  # the study's own (issue 21)
    tiny = {f"tiny_{n}" for n in SWEEP_NAMES}
    assert sweeps == {*SWEEP_NAMES, *tiny, "smoke_entropy_collapse"}  # the suite's 2-step form


@pytest.mark.parametrize("name", REAL)
def test_real_recipe_header_cites_source_and_numbers(name):
    text = (EXPERIMENTS / f"{name}.yaml").read_text()
    header = text.split("defaults:")[0]
    assert header.startswith("# @package _global_\n")
    assert re.search(r"arXiv \d{4}\.\d{5}|https://novasky-ai\.github\.io", header), "no source"
    assert "Published" in header and re.search(r"\d+\.\d", header), "no published numbers"


# (name, model, algo advantage, samples, prompts/step, RL steps per stage, response caps, entropy,
# filter)
PUBLISHED = {
    "sky_t1_7b_zero": ("qwen2_5_math_7b", "rloo", 4, 256, [104], [3072], "none", "none"),
    "sky_t1_7b_step4": ("qwen2_5_math_7b", "rloo", 8, 256, [59], [4096], "none", "none"),
    "sky_t1_mini": ("r1_distill_qwen_7b", "rloo", 8, 256, [119, 29], [8192, 16384], "none", "none"),
    "skywork_or1_7b": (
        "r1_distill_qwen_7b",
        "grpo",
        16,
        256,
        [1000, 500, 300],
        [8192, 16384, 32768],
        "adaptive",
        "zero_variance",
    ),
}


@pytest.mark.parametrize("name", REAL)
def test_real_recipe_values(name):
    model, adv, n, bs, steps, caps, ent, filt = PUBLISHED[name]
    c = typed([f"+experiment={name}"])
    assert (c.model.name, c.algo.advantage, c.algo.n, c.algo.batch_size) == (model, adv, n, bs)
    assert [s.steps for s in c.context.stages] == steps and [
        s.max_response_len for s in c.context.stages
    ] == caps
    assert (c.entropy.name, c.algo.filter_groups, c.algo.kl_coef, c.sft.steps) == (
        ent,
        filt,
        0.0,
        0,
    )
    assert c.model.dtype == "bfloat16" and c.data.name != "arith"
    assert (c.eval.name, c.eval.n, c.eval.temperature, c.eval.top_p) == ("aime24", 8, 0.6, 0.95)
    assert c.eval.max_response_len == caps[-1]  # evaluated at the length the recipe trains to
    if name == "skywork_or1_7b":
        assert (c.entropy.target, c.entropy.delta, c.entropy.coef_max, c.temperature.value) == (
            0.2,
            1e-4,
            5e-3,
            1.0,
        )
        assert (
            c.algo.mini_batches == 1 and c.algo.ppo_epochs == 1
        )  # on-policy: one update per batch
    assert c.logger.job_type == "recipe" and any(t in name for t in c.logger.tags)


@pytest.mark.parametrize("name", REAL)
def test_tiny_twin_keeps_the_structure(name):
    real, tiny = typed([f"+experiment={name}"]), typed([f"+experiment=tiny_{name}"])
    assert tiny.model.name == "tiny" and tiny.data.source == "arith"
    assert (tiny.algo.name, tiny.algo.advantage, tiny.algo.filter_groups) == (
        real.algo.name,
        real.algo.advantage,
        real.algo.filter_groups,
    )
    assert (tiny.entropy.name, tiny.temperature.value) == (
        real.entropy.name,
        real.temperature.value,
    )
    # the target is scaled to the tiny model's measured starting entropy (conf/debug/tiny.yaml)
    d = tiny.debug
    assert tiny.entropy.target == pytest.approx(d.entropy_target_ratio * d.entropy_start)
    assert len(tiny.context.stages) == len(real.context.stages)
    assert tiny.algo.kl_coef == real.algo.kl_coef and tiny.algo.n <= real.algo.n
    # CPU minutes; the warm-up is the default run's (500 steps), cached by config hash
    assert sum(s.steps for s in tiny.context.stages) <= 30 and tiny.sft.steps <= 500


def _sweep_params(name: str) -> dict[str, list[str]]:
    params = OmegaConf.load(SWEEPS / f"{name}.yaml").hydra.sweeper.params
    return {k: str(v).split(",") for k, v in params.items()}


@pytest.mark.parametrize("name", SWEEP_NAMES)
def test_sweep_groups_runs_and_has_a_tiny_variant(name):
    real, tiny = typed([f"+sweep={name}"]), typed([f"+sweep=tiny_{name}"])
    assert real.logger.group == name and tiny.logger.group == f"tiny_{name}"
    assert real.logger.job_type == tiny.logger.job_type == "sweep"
    params, tiny_params = _sweep_params(name), _sweep_params(f"tiny_{name}")
    assert set(tiny_params) == set(params), "the tiny variant sweeps the same knobs"
    assert math.prod(len(v) for v in params.values()) >= 3
    assert math.prod(len(v) for v in tiny_params.values()) == 2  # 2 jobs
    assert len(tiny.context.stages) == 1 and tiny.context.stages[0].steps == 30  # x 30 steps
    # from the overlay's cached warm-up, as the default run's
    assert tiny.model.name == "tiny" and tiny.sft.steps == typed([]).sft.steps
    assert tiny.eval.size <= 50
    assert real.model.name != "tiny" and real.entropy.name == tiny.entropy.name


@pytest.mark.parametrize("name", SWEEP_NAMES)
def test_every_job_of_every_sweep_validates(name):
    for n in (name, f"tiny_{name}"):
        params = _sweep_params(n)
        keys = list(params)
        combos = [[]]
        for k in keys:
            combos = [c + [f"{k}={v}"] for c in combos for v in params[k]]
        for combo in combos:
            c = typed([f"+sweep={n}", *combo])
            for o in combo:  # the job really gets the swept value
                k, v = o.split("=")
                got = OmegaConf.select(OmegaConf.structured(c), k if "." in k else f"{k}.name")
                assert (
                    (got == pytest.approx(float(v))) if isinstance(got, float) else str(got) == v
                ), (o, got)
