"""GSPO's and CISPO's own diagnostics (skyexp.algos.seq_losses.loss_metrics), hand-computed."""

from __future__ import annotations

import math

import pytest
import torch

from skyexp.algos.seq_losses import cispo_loss, gspo_loss, gspo_token_loss, loss_metrics


def _sums(st: dict, mask: torch.Tensor) -> dict[str, float]:
    # what the objective does: masked token sums of the loss/* stats
    return {k: float((v * mask).sum()) for k, v in st.items() if k.startswith("loss/")}


@pytest.mark.parametrize("fn", [gspo_loss, gspo_token_loss])
def test_gspo_sequence_clip_share_and_ratio_statistics(fn):
    # row 0: 3 tokens, mean log-ratio 0.5 -> s0 = e^0.5 = 1.6487, outside [0.8, 1.2]: clipped
    # row 1: 2 masked tokens of 3 (the third's log-ratio 9 is ignored), mean 0 -> s1 = 1
    # mean (s0 + s1) / 2 = 1.3244, std |s0 - s1| / 2 = 0.3244; clip share 1 of 2 sequences
    old = torch.zeros(2, 3)
    logp = torch.tensor([[0.2, 0.5, 0.8], [0.1, -0.1, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    _, st = fn(logp, old, torch.ones(2, 3), mask, clip_low=0.2, clip_high=0.2)
    got = loss_metrics(_sums(st, mask), trained_tokens=5)
    s0 = math.exp(0.5)
    assert got == pytest.approx(
        {
            "actor/gspo_seq_clipfrac": 0.5,
            "actor/gspo_ratio_mean": (s0 + 1) / 2,
            "actor/gspo_ratio_std": (s0 - 1) / 2,
        },
        rel=1e-5,
    )


def test_cispo_share_of_clipped_weights():
    # ratios e^0.5 = 1.65 (above 1 + 0.28), 1, e^-2 = 0.135 (above 1 - 1 = 0: not clipped), and a
    # masked token whose ratio would clip: 1 of 3 trained tokens, whatever the advantage's sign
    logp = torch.tensor([[0.5, 0.0, -2.0, 3.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv = torch.tensor([[-1.0, 1.0, 1.0, 1.0]])
    _, st = cispo_loss(logp, torch.zeros(1, 4), adv, mask, clip_low=1.0, clip_high=0.28)
    assert loss_metrics(_sums(st, mask), trained_tokens=3) == {
        "actor/cispo_clipfrac": pytest.approx(1 / 3)
    }


def test_ppo_has_no_loss_specific_metrics():
    assert loss_metrics({}, trained_tokens=10) == {}
