"""The debug overlay: any recipe becomes its tiny twin (+debug=tiny), structure kept, numbers
scaled."""

from __future__ import annotations

import dataclasses

import pytest
from test_config import compose_cfg

from skyexp.config import Config, StageConfig, to_typed
from skyexp.config.debug import shrink
from skyexp.config.schema import ContextConfig, DebugConfig

REAL = ["sky_t1_7b_zero", "sky_t1_7b_step4", "sky_t1_mini", "skywork_or1_7b"]


@pytest.mark.parametrize("name", REAL)
def test_a_tiny_twin_is_the_recipe_under_the_overlay(name):
    twin = to_typed(compose_cfg([f"+experiment=tiny_{name}"]))
    overlay = to_typed(compose_cfg([f"+experiment={name}", "+debug=tiny"]))
    assert dataclasses.asdict(twin) == dataclasses.asdict(overlay)
    real = to_typed(compose_cfg([f"+experiment={name}"]))
    assert (twin.model.name, twin.data.source, twin.trainer.device, twin.rollout.name) == (
        "tiny",
        "arith",
        "cpu",
        "hf",
    )
    assert (
        twin.algo.advantage,
        twin.algo.filter_groups,
        twin.entropy.controller,
        twin.temperature.value,
    ) == (
        real.algo.advantage,
        real.algo.filter_groups,
        real.entropy.controller,
        real.temperature.value,
    )
    assert len(twin.context.stages) == len(real.context.stages)
    caps = [s.max_response_len for s in twin.context.stages]
    assert caps == sorted(caps) and caps[-1] == 64 and "tiny" in twin.logger.tags


def test_shrink_hand_values():
    """Skywork-OR1's three stages (1000/500/300 steps at 8k/16k/32k) into 30 steps and caps 32..64:
    steps 1000*30/1800 = 16.7 -> 17, 8.3 -> 8, 5; caps linear in the recipe's caps between the
    first and last: 32, 32 + 32 * (16384-8192)/(32768-8192) = 42.7 -> 43, 64. Batches: min(256, 16)
    rounded down to a multiple of 3 mini-batches = 15; n min(16, 8)."""
    stages = [StageConfig(1000, 8192), StageConfig(500, 16384), StageConfig(300, 32768, n=12)]
    c = Config(context=ContextConfig(stages=stages), debug=DebugConfig(enabled=True))
    c.algo.batch_size, c.algo.n, c.algo.mini_batches, c.eval.max_response_len = 256, 16, 3, 32768
    small = shrink(c)
    assert [(s.steps, s.max_response_len, s.n) for s in small.context.stages] == [
        (17, 32, None),
        (8, 43, None),
        (5, 64, 8),
    ]
    assert (small.algo.batch_size, small.algo.n, small.eval.max_response_len) == (15, 8, 64)
    assert (
        shrink(dataclasses.replace(c, debug=DebugConfig(enabled=False))) is not small
    )  # off: unchanged
    assert shrink(dataclasses.replace(c, debug=DebugConfig())).context.stages[0].steps == 1000


def test_the_overlay_never_raises_a_smaller_setting():
    c = to_typed(
        compose_cfg(["+sweep=smoke_entropy_collapse"])
    )  # 2 steps, cap 16, n 4: already small
    assert [(s.steps, s.max_response_len) for s in c.context.stages] == [(2, 16)] and c.algo.n == 4


def test_the_overlay_scales_the_entropy_target_to_the_tiny_model():
    """debug.entropy_target_ratio x debug.entropy_start (0.114 nats measured, ratio 1) replaces
    the recipe's 0.2, which the tiny model's entropy never reached; a sweep may set the ratio."""
    twin = to_typed(compose_cfg(["+experiment=tiny_skywork_or1_7b"]))
    assert twin.entropy.controller == "adaptive"
    assert 0 < twin.entropy.target == pytest.approx(twin.debug.entropy_start)
    smoke = to_typed(compose_cfg(["+sweep=smoke_entropy_collapse", "entropy=adaptive"]))
    assert smoke.entropy.target == pytest.approx(20 * smoke.debug.entropy_start)
    c = Config(debug=DebugConfig(enabled=True, entropy_start=0.0))
    assert shrink(c).entropy.target == c.entropy.target  # 0: the recipe's target is kept
    c = Config(debug=DebugConfig(enabled=True, entropy_start=0.5, entropy_target_ratio=0.8))
    assert shrink(c).entropy.target == pytest.approx(0.4)
