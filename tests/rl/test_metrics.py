"""Per-step metric names and values: verl's set (critic/score, critic/rewards, prompt_length,
response_length, timing_per_token_ms, perf/total_num_tokens), computed by hand on a tiny batch."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from skyexp.algos.seq_losses import loss_metrics
from skyexp.records import Rollout, UpdateStats
from skyexp.rl.collect import StepBatch
from skyexp.rl.metrics import Trained, step_metrics


def _batch() -> StepBatch:
    # 2 groups x 2 samples; prompts of 3 and 2 tokens (left-padded to P = 3); responses of 2, 4, 1,
    # 3 tokens (R = 4)
    prompt = torch.tensor([[1, 1, 1], [1, 1, 1], [0, 1, 1], [0, 1, 1]])
    resp = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]])
    attn = torch.cat([prompt, resp], 1)
    ro = Rollout(
        sequences=attn.clone(),
        attention_mask=attn,
        response_mask=resp.float(),
        logprobs=torch.zeros(4, 4),
        truncated=torch.tensor([False, True, False, False]),
        prompt_len=3,
        n=2,
        temperature=1.0,
    )
    return StepBatch(
        rollout=ro,
        ids=["a", "b"],
        correct=torch.tensor([[1.0, 0.0], [1.0, 1.0]]),
        rewards=torch.tensor([[1.0, -0.5], [1.0, 0.8]]),
        terms={"accuracy": torch.tensor([[1.0, 0.0], [1.0, 1.0]])},
        kept=torch.tensor([True, True]),
        train=torch.tensor([True, False]),
        statuses=["ok"] * 4,
        extracted=["1", None, "2", "2"],
        gen_batches=1,
    )


STATS = UpdateStats(
    pg_loss=0.1,
    entropy=0.5,
    entropy_coef=0.0,
    clipfrac_low=0.0,
    clipfrac_high=0.0,
    ppo_kl=0.0,
    grad_norm=1.0,
    num_tokens=6,
)


def test_verl_metric_names_and_values(dist1):
    b = _batch()
    adv = torch.tensor([0.75, -0.75, 0.0, 0.0])
    weights = torch.tensor([1.0, 1.0, 0.0, 0.0])
    timings = {
        "timing_s/step": 2.0,
        "timing_s/gen": 0.5,
        "timing_s/reward": 0.1,
        "timing_s/old_logp": 0.2,
        "timing_s/update": 1.0,
        "timing_s/sync": 0.01,
    }
    penalised = b.rewards - torch.tensor([[0.1, 0.2], [0.0, 0.3]])  # a KL penalty in the reward
    m = step_metrics(b, Trained(adv, weights, penalised), STATS, timings, (0, 5), dist1.device)
    assert (m["critic/score/mean"], m["critic/score/max"], m["critic/score/min"]) == pytest.approx(
        (0.575, 1.0, -0.5)
    )
    assert (
        m["critic/rewards/mean"],
        m["critic/rewards/max"],
        m["critic/rewards/min"],
    ) == pytest.approx((0.425, 1.0, -0.7))
    assert (m["prompt_length/mean"], m["prompt_length/max"], m["prompt_length/min"]) == (
        2.5,
        3.0,
        2.0,
    )
    assert (m["response_length/mean"], m["response_length/max"], m["response_length/min"]) == (
        2.5,
        4.0,
        1.0,
    )
    assert m["response_length/clip_ratio"] == 0.25
    assert (m["critic/advantages/max"], m["critic/advantages/min"]) == (
        0.75,
        -0.75,
    )  # rows that train only
    assert m["perf/total_num_tokens"] == 10 + 10  # prompt + response tokens
    assert m["perf/throughput"] == 10 / 2.0  # response tokens / s (skyexp's; docs/design.md)
    assert m["timing_per_token_ms/gen"] == pytest.approx(500 / 10) and m[
        "timing_per_token_ms/reward"
    ] == pytest.approx(100 / 10)
    assert m["timing_per_token_ms/old_logp"] == pytest.approx(200 / 20) and m[
        "timing_per_token_ms/update"
    ] == pytest.approx(1000 / 20)
    assert "timing_per_token_ms/sync" not in m and "timing_per_token_ms/step" not in m
    assert m["train/rl_step"] == 5 and m["batch/pass@1"] == 0.75 and m["reward/no_answer"] == 0.25


def test_rewards_default_to_the_score_without_a_kl_penalty(dist1):
    b = _batch()
    m = step_metrics(b, Trained(torch.zeros(4), torch.zeros(4)), STATS, {}, (0, 0), dist1.device)
    assert [m[f"critic/rewards/{s}"] for s in ("mean", "max", "min")] == [
        m[f"critic/score/{s}"] for s in ("mean", "max", "min")
    ]
    # nothing trains: no advantage extremes (non-finite, written as null) and no per-token timings
    # without timings
    assert m["critic/advantages/max"] == float("-inf") and not any(
        k.startswith("timing_per_token_ms/") for k in m
    )


def test_every_metric_name_is_documented(dist1):
    """docs/design.md lists every namespace and name step_metrics emits."""
    from conftest import ROOT

    doc = (ROOT / "docs" / "design.md").read_text()
    timings = {
        f"timing_s/{k}": 1.0 for k in ("step", "gen", "reward", "old_logp", "ref", "update", "sync")
    }
    # with every loss-specific diagnostic (GSPO's and CISPO's: skyexp.algos.seq_losses)
    sums = {
        k: 1.0
        for k in ("seqs", "seq_clipped", "ratio", "ratio_sq", "cispo_clipped")
        for k in [f"loss/gspo_{k}" if k != "cispo_clipped" else f"loss/{k}"]
    }
    m = step_metrics(
        _batch(),
        Trained(torch.tensor([0.5, -0.5, 0.0, 0.0]), torch.tensor([1.0, 1.0, 0.0, 0.0])),
        replace(STATS, loss_stats=loss_metrics(sums, 4.0)),
        timings,
        (0, 0),
        dist1.device,
    )
    assert {"actor/gspo_seq_clipfrac", "actor/gspo_ratio_mean", "actor/cispo_clipfrac"} <= set(m)
    for key in m:
        namespace, name = key.split("/", 1)
        first = (
            "<term>"
            if namespace == "reward" and name.endswith("/mean") and name != "mean"
            else name.split("/")[0]
        )
        assert f"`{namespace}/`" in doc and first in doc, key
