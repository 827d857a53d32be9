"""Truncated importance sampling for the sampler/trainer mismatch, and the mismatch the update
measures."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import algorithm, loss_spec, update_settings

from skyexp.algos.rollout_is import (
    ROLLOUT_IS,
    is_weight_stats,
    sequence_is_weights,
    token_is_weights,
)
from skyexp.config import AlgoConfig, ModelConfig
from skyexp.model.loading import load_model, load_tokenizer
from skyexp.records import UpdateStats
from skyexp.rl.metrics import mismatch_metrics
from skyexp.rl.update import UpdateBatch, rl_update
from skyexp.rollout.hf import HFEngine

L = math.log


def test_token_weights_by_hand():
    # ratios pi_trainer / pi_sampler: 0.5/0.25 = 2 (capped at 1.5), 0.25/0.5 = 0.5, 0.3/0.3 = 1;
    # last is padding
    trainer = torch.tensor([[L(0.5), L(0.25), L(0.3), 0.0]])
    sampler = torch.tensor([[L(0.25), L(0.5), L(0.3), -3.0]])
    mask = torch.tensor([[1.0, 1, 1, 0]])
    w = token_is_weights(trainer, sampler, mask, rollout_is_cap=1.5)
    assert torch.allclose(w, torch.tensor([[1.5, 0.5, 1.0, 0.0]]))
    assert is_weight_stats(w, mask, 1.5) == pytest.approx(
        (3.0, 1.0, 3.0)
    )  # sum, at the cap, tokens


def test_sequence_weights_by_hand():
    # row 0: log ratios L2 + L0.5 + 0 = 0 -> w = 1 on every token; row 1: L2 + L2 = L4 -> capped at
    # 3;
    # row 2: L0.5 on its one token (padding ignored) -> 0.5
    trainer = torch.tensor([[L(0.5), L(0.25), L(0.3)], [L(0.5), L(0.5), 0.0], [L(0.1), 9.0, 9.0]])
    sampler = torch.tensor([[L(0.25), L(0.5), L(0.3)], [L(0.25), L(0.25), 0.0], [L(0.2), 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0], [1, 0, 0]])
    w = sequence_is_weights(trainer, sampler, mask, rollout_is_cap=3.0)
    assert torch.allclose(w, torch.tensor([[1.0, 1, 1], [3, 3, 0], [0.5, 0, 0]]))


def test_none_gives_no_weights_and_huge_ratios_do_not_overflow():
    mask = torch.tensor([[1.0, 0.0]])
    assert (
        ROLLOUT_IS["none"](torch.zeros(1, 2), torch.zeros(1, 2), mask, rollout_is_cap=2.0) is None
    )
    big = torch.tensor([[500.0, 0.0]])  # exp(500) overflows float32; the clamp comes first
    for name in ("token", "sequence"):
        w = ROLLOUT_IS[name](big, torch.zeros(1, 2), mask, rollout_is_cap=2.0)
        assert torch.isfinite(w).all() and w[0, 0] == pytest.approx(2.0)


@pytest.fixture()
def batch(tiny_dir, dist1):
    tok = load_tokenizer(str(tiny_dir), ModelConfig())
    eng = HFEngine(
        load_model(str(tiny_dir), ModelConfig()), tok.eos_token_id, tok.pad_token_id, seed=4
    )
    prompts = tok(["Compute 1+1.\n", "Compute (2*3)-1.\n"], add_special_tokens=False)["input_ids"]
    ro = eng.generate(prompts, 4, 8, 1.0)
    adv = torch.tensor([0.5, -0.5, 0.2, -0.2, 1.0, -1.0, 0.3, -0.3])
    return load_model(str(tiny_dir), ModelConfig()), ro, adv, dist1


def test_update_measures_the_sampler_mismatch(batch):
    """The first mini-batch's forward runs before any optimizer step, so it compares the trainer's
    log-probs with the sampler's: ~0 for the exact hf engine, the injected offset otherwise."""
    policy, ro, adv, d = batch

    def forward_only(rollout):  # lr 0: the forward passes only
        opt = torch.optim.SGD(policy.parameters(), lr=0.0)
        return rl_update(
            policy,
            opt,
            UpdateBatch(rollout, adv, torch.ones(8)),
            loss_spec(),
            update_settings(3, device=d.device),
        )

    st = forward_only(ro)
    assert st.sampler_logprob_diff_max < 1e-4
    off = (
        ro.logprobs - 0.25 * ro.response_mask
    )  # a sampler that gives every token e^-0.25 of the probability
    off[0, 0] -= 0.5
    st = forward_only(dataclasses.replace(ro, logprobs=off))
    tokens = float(ro.response_mask.sum())
    assert st.sampler_logprob_diff == pytest.approx(0.25 + 0.5 / tokens, abs=1e-4)
    assert st.sampler_logprob_diff_max == pytest.approx(0.75, abs=1e-4)
    sums = algorithm().weight_sums
    m = mismatch_metrics(False, sums, ro.logprobs, off, ro.response_mask, None, st, d.device)
    assert (
        m["rollout/logprob_diff_max"] == st.sampler_logprob_diff_max
        and "rollout/is_weight_mean" not in m
    )


def test_mismatch_metrics_with_recomputed_old_logprobs(batch):
    _, ro, _, d = batch
    a = AlgoConfig(old_logprobs="recompute", rollout_is="token", rollout_is_cap=1.1)
    sampler = (
        ro.logprobs - 0.2 * ro.response_mask
    )  # trainer / sampler = e^0.2 = 1.22 -> capped at 1.1
    w = ROLLOUT_IS[a.rollout_is](
        ro.logprobs, sampler, ro.response_mask, rollout_is_cap=a.rollout_is_cap
    )
    # with recomputed old log-probs the diff covers every trained token, not the update's first
    # mini-batch
    st = UpdateStats(
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, sampler_logprob_diff=9.0, sampler_logprob_diff_max=9.0
    )
    sums = algorithm(old_logprobs="recompute", rollout_is="token", rollout_is_cap=1.1).weight_sums
    m = mismatch_metrics(True, sums, ro.logprobs, sampler, ro.response_mask, w, st, d.device)
    assert m["rollout/logprob_diff"] == pytest.approx(0.2, abs=1e-6)
    assert m["rollout/logprob_diff_max"] == pytest.approx(0.2, abs=1e-6)
    assert (
        m["rollout/is_weight_mean"] == pytest.approx(1.1, abs=1e-5)
        and m["rollout/is_truncated_frac"] == 1.0
    )


def test_decoupled_metrics_count_the_tokens_the_cap_drops(batch):
    """algo.off_policy=decoupled: the weights pi_prox / pi_sampler the loss used, and the share of
    trained tokens whose weight exceeds algo.off_policy_cap (dropped), over every rank."""
    _, ro, _, d = batch
    alg = algorithm(off_policy="decoupled", old_logprobs="recompute", off_policy_cap=1.5)
    # the sampler gave every token e^-0.2 of pi_prox's probability (w = 1.22, kept) but the
    # first token of each row e^-1 (w = 2.72 > 1.5, dropped)
    sampler = ro.logprobs - 0.2 * ro.response_mask
    sampler[:, 0] = ro.logprobs[:, 0] - 1.0
    trained = ro.response_mask.clone()
    trained[-1] = 0  # a filtered row: its tokens count nowhere
    w = alg.is_weights(ro.logprobs, sampler, ro.response_mask)
    st = UpdateStats(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
    m = mismatch_metrics(True, alg.weight_sums, ro.logprobs, sampler, trained, w, st, d.device)
    tokens, rows = float(trained.sum()), float(trained[:, 0].sum())
    assert m["actor/off_policy_capped_frac"] == pytest.approx(rows / tokens)
    assert m["actor/off_policy_weight_mean"] == pytest.approx(
        math.exp(0.2) * (tokens - rows) / tokens, rel=1e-5
    )
    assert "rollout/is_weight_mean" not in m and "rollout/is_truncated_frac" not in m
