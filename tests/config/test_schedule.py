"""Context schedule (per-stage overrides, validation), temperature schedules, truncation modes."""

from __future__ import annotations

import pytest
from test_config import compose_cfg

from skyexp.config import ConfigError, to_typed
from skyexp.config.stages import plan_run, stage_reward


def plan_stages(c):
    return plan_run(c).stages


def temperature_at(c, stage, step):
    return plan_run(c).temperature_at(stage, step)


def test_presets_plan_growing_stages():
    plan = plan_stages(to_typed(compose_cfg(["context=skywork_or1"])))
    assert [(s.steps, s.max_response_len, s.first_step) for s in plan] == [
        (1000, 8192, 0),
        (500, 16384, 1000),
        (300, 32768, 1500),
    ]
    assert to_typed(compose_cfg(["context=skywork_or1"])).context.drop_solved
    assert [
        s.max_response_len for s in plan_stages(to_typed(compose_cfg(["context=sky_t1_mini"])))
    ] == [8192, 16384]
    tiny = to_typed(compose_cfg(["context=tiny_3stage"]))
    assert len(tiny.context.stages) == 3 and tiny.context.drop_solved


def test_per_stage_overrides_and_inheritance():
    c = to_typed(
        compose_cfg(
            [
                "context=sky_t1_mini",
                "algo.batch_size=8",
                "algo.n=4",
                "+context.stages.1.batch_size=16",
                "+context.stages.1.n=2",
                "+context.stages.1.temperature=0.7",
                "+context.stages.1.truncated=mask",
                "context.truncated=soft_penalty",
            ]
        )
    )
    s0, s1 = plan_stages(c)
    assert (s0.batch_size, s0.n, s0.own_temperature, s0.truncated) == (
        8,
        4,
        None,
        "soft_penalty",
    )  # inherited
    assert (s1.batch_size, s1.n, s1.own_temperature, s1.truncated) == (16, 2, 0.7, "mask")
    assert (
        s0.reward.terms["overlong"] == 1.0 and "overlong" not in s1.reward.terms
    )  # soft_penalty's term, stage 0 only
    assert (s0.key("n"), s1.key("n"), s0.key("batch_size")) == (
        "algo.n",
        "context.stages[1].n",
        "algo.batch_size",
    )
    assert temperature_at(c, s1, 0) == 0.7 and temperature_at(c, s0, 5) == c.temperature.value
    assert not s0.mask_truncated and s1.mask_truncated
    c.algo.mask_truncated = True  # the dapo preset masks in every stage
    assert plan_stages(c)[0].mask_truncated


def test_temperature_schedules():
    c = to_typed(
        compose_cfg(["temperature=linear", "temperature.steps=4", "context.stages.0.steps=10"])
    )
    s = plan_stages(c)[0]
    assert [temperature_at(c, s, k) for k in (0, 1, 2, 4, 9)] == pytest.approx(
        [0.6, 0.7, 0.8, 1.0, 1.0]
    )
    c = to_typed(
        compose_cfg(["temperature=linear", "temperature.steps=0", "context.stages.0.steps=5"])
    )
    assert temperature_at(c, plan_stages(c)[0], 4) == pytest.approx(
        1.0
    )  # steps=0: reaches `end` at the last step
    assert temperature_at(c, plan_stages(c)[0], 2) == pytest.approx(0.8)
    c = to_typed(
        compose_cfg(
            ["temperature=step", "temperature.milestones=[2,5]", "temperature.values=[1.2,1.4]"]
        )
    )
    s = plan_stages(c)[0]
    assert [temperature_at(c, s, k) for k in (0, 1, 2, 4, 5, 99)] == [1.0, 1.0, 1.2, 1.2, 1.4, 1.4]
    c = to_typed(compose_cfg(["temperature=t0_6"]))
    assert temperature_at(c, plan_stages(c)[0], 123) == 0.6


def test_soft_penalty_adds_the_overlong_term_once():
    c = to_typed(compose_cfg([]))
    assert stage_reward(c.reward, "keep") is c.reward and stage_reward(c.reward, "mask") is c.reward
    r = stage_reward(c.reward, "soft_penalty")
    assert r.terms == {"accuracy": 1.0, "overlong": 1.0} and c.reward.terms == {"accuracy": 1.0}
    dapo = to_typed(compose_cfg(["reward=dapo"])).reward
    assert (
        stage_reward(dapo, "soft_penalty").terms == dapo.terms
    )  # already on: its own weight stays


@pytest.mark.parametrize(
    "overrides,key",
    [
        (
            ["context=sky_t1_mini", "context.stages.1.max_response_len=100"],
            "context.stages[1].max_response_len",
        ),
        (["context=tiny_3stage", "context.stages.2.steps=0"], "context.stages[2].steps"),
        (["context.stages.0.max_response_len=0"], "context.stages[0].max_response_len"),
        (["context=sky_t1_mini", "+context.stages.1.n=1"], "context.stages[1].n"),
        (
            ["context=sky_t1_mini", "+context.stages.1.temperature=0"],
            "context.stages[1].temperature",
        ),
        (
            ["context=sky_t1_mini", "+context.stages.0.truncated=drop"],
            "context.stages[0].truncated",
        ),
        (["context.truncated=cut"], "context.truncated"),
        (["context.stages=[]"], "context.stages"),
        (["temperature.schedule=cosine"], "temperature.schedule"),
        (["temperature=linear", "temperature.end=0"], "temperature.end"),
        (["temperature=step", "temperature.values=[1.1]"], "temperature.milestones"),
        (["temperature=step", "temperature.milestones=[5,3]"], "temperature.milestones"),
        (["temperature.value=-1"], "temperature.value"),
        (["trainer.save_every=-1"], "trainer.save_every"),
        (["trainer.keep_last=-2"], "trainer.keep_last"),
        (["trainer.max_bad_steps=0"], "trainer.max_bad_steps"),
    ],
)
def test_schedule_checks_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        to_typed(compose_cfg(overrides))
    assert f"config key '{key}'" in str(e.value)
