"""AER's per-prompt entropy bonus in the update (skyexp.rl.update with UpdateBatch.entropy_rows):
the same parameters however the mini-batch is split into micro-batches, weights of 1 give the
plain bonus and weights of 0 no bonus."""

from __future__ import annotations

import copy

import torch
from conftest import loss_spec, update_settings

from skyexp.config import ModelConfig
from skyexp.model.loading import load_model, load_tokenizer
from skyexp.rl.update import UpdateBatch, rl_update
from skyexp.rollout.hf import HFEngine


def _update(policy, ro, adv, weights, rows, coef, mb, device):
    p = copy.deepcopy(policy)
    st = rl_update(
        p,
        torch.optim.SGD(p.parameters(), lr=1.0),
        UpdateBatch(ro, adv, weights, entropy_rows=rows),
        loss_spec(coef=coef),
        update_settings(mb, device=device),
    )
    return p, st


def _close(a, b, atol=1e-6):
    return all(torch.allclose(x, y, atol=atol) for x, y in zip(a.parameters(), b.parameters()))


def test_row_weighted_bonus_is_split_invariant_and_reduces_to_the_plain_one(tiny_dir, dist1):
    tok = load_tokenizer(str(tiny_dir), ModelConfig())
    policy = load_model(str(tiny_dir), ModelConfig())
    eng = HFEngine(
        load_model(str(tiny_dir), ModelConfig()), tok.eos_token_id, tok.pad_token_id, seed=0
    )
    prompts = tok(["Compute 1+1.\n", "Compute (2*3)-1.\n"], add_special_tokens=False)["input_ids"]
    torch.manual_seed(3)
    ro = eng.generate(prompts, 4, 10, 1.0)
    adv = torch.tensor([0.5, -0.5, 0.2, -0.2, 0.0, 0.0, 0.0, 0.0])  # group 1: all one outcome
    weights = torch.tensor([1.0, 1, 1, 0, 1, 1, 1, 1])  # one filtered row
    hard = torch.tensor([0.0] * 4 + [1.0] * 4)  # group 1 is the hard prompt
    dev = dist1.device
    runs = [_update(policy, ro, adv, weights, hard, 0.05, mb, dev) for mb in (8, 1, 3)]
    for p, st in runs[1:]:
        assert _close(p, runs[0][0]) and abs(st.pg_loss - runs[0][1].pg_loss) < 1e-6
    # the hard group has zero advantages: only the bonus moves it, so the update differs from
    # the bonus-free one, and the rows' weights matter
    none, _ = _update(policy, ro, adv, weights, None, 0.0, 8, dev)
    assert not _close(runs[0][0], none)
    ones, _ = _update(policy, ro, adv, weights, torch.ones(8), 0.05, 8, dev)
    plain, _ = _update(policy, ro, adv, weights, None, 0.05, 8, dev)
    zeros, _ = _update(policy, ro, adv, weights, torch.zeros(8), 0.05, 8, dev)
    assert _close(ones, plain) and _close(zeros, none) and not _close(ones, runs[0][0])
