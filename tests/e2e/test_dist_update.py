"""One rank equals two: the update under torchrun --nproc_per_node=2 (gloo, FSDP2, each rank half
the groups) gives the parameters of a single process updating on the whole batch."""

from __future__ import annotations

import copy
import dataclasses
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, loss_spec, update_settings

from skyexp.config import AlgoConfig, ModelConfig
from skyexp.model.loading import load_model, load_tokenizer
from skyexp.rl.update import UpdateBatch, rl_update
from skyexp.rollout.hf import HFEngine

CASES = {
    # token-mean with entropy bonus and KL loss; micro-batches of 3 rows on 2 ranks vs 5 on one
    "token_mean_terms": {
        "algo": {},
        "coef": 0.05,
        "kl_coef": 0.3,
        "micro_batch_size": 3,
        "single_mbs": 5,
    },
    # per-sequence modes and off-policy steps: 2 mini-batches x 2 epochs
    "seq_mean_offpolicy": {
        "algo": {"loss_agg": "seq-mean-token-mean", "mini_batches": 2, "ppo_epochs": 2},
        "micro_batch_size": 2,
        "single_mbs": 16,
    },
    "dr_grpo_norm": {
        "algo": {"loss_agg": "seq-mean-token-sum-norm"},
        "max_len": 16,
        "micro_batch_size": 4,
        "single_mbs": 1,
    },
    # prompts shared within a micro-batch (two forwards per micro-batch under FSDP): ranks hold 4
    # and
    # 7 trained rows after the zero-advantage group is skipped, so one rank pads a micro-batch
    "shared_prompts": {
        "algo": {},
        "coef": 0.0,
        "micro_batch_size": 3,
        "single_mbs": 9,
        "share": True,
    },
    # sequence-level ratio (GSPO: a mean over each row's tokens) and clipped weights (CISPO),
    # off-policy
    "gspo": {
        "algo": {
            "policy_loss": "gspo",
            "loss_agg": "seq-mean-token-mean",
            "mini_batches": 2,
            "ppo_epochs": 2,
            "clip_low": 0.05,
            "clip_high": 0.05,
        },
        "micro_batch_size": 3,
        "single_mbs": 16,
    },
    "cispo": {
        "algo": {
            "policy_loss": "cispo",
            "mini_batches": 2,
            "ppo_epochs": 2,
            "clip_low": 1.0,
            "clip_high": 0.05,
        },
        "micro_batch_size": 2,
        "single_mbs": 5,
    },
    # CE-GPPO: clipped tokens keep a scaled gradient (tight clip, off-policy: many are clipped),
    # with the entropy bonus
    "ce_gppo": {
        "algo": {
            "policy_loss": "ce_gppo",
            "mini_batches": 2,
            "ppo_epochs": 2,
            "clip_low": 0.05,
            "clip_high": 0.05,
            "ce_beta1": 0.5,
            "ce_beta2": 2.0,
        },
        "coef": 0.05,
        "micro_batch_size": 2,
        "single_mbs": 5,
    },
    # SimKO: top-K log-probs from the chunked head on two ranks, full logits on one
    "simko": {
        "algo": {"policy_loss": "simko", "simko_alpha": 0.3, "simko_lambda": 2.0,
                 "simko_tau": 0.5},
        "micro_batch_size": 2,
        "single_mbs": 5,
    },
    # token-budget micro-batches, padding-free rows, an untied lm head (entropy bonus and KL loss
    # on)
    "budget_padding_free_untied": {
        "algo": {},
        "coef": 0.05,
        "kl_coef": 0.3,
        "micro_batch_size": 64,
        "single_mbs": 5,
        "max_tokens": 60,
        "padding_free": True,
        "untied": True,
    },
}
# Every case runs the chunked lm head (trainer.logprob_chunk, in chunks of 7 tokens) inside FSDP2's
# forward on the two ranks; the single process compares with full logits (logprob_chunk=0).
CHUNK = 7


@pytest.mark.slow
@pytest.mark.dist
def test_two_ranks_equal_one(tiny_dir, dist1, tmp_path):
    untied = tmp_path / "untied"
    untied_model(tiny_dir).save_pretrained(untied)
    for case in CASES.values():
        case["model_dir"] = str(untied if case.get("untied") else tiny_dir)
        case["chunk"] = CHUNK
    tok = load_tokenizer(str(tiny_dir), ModelConfig())
    eng = HFEngine(
        load_model(str(tiny_dir), ModelConfig()), tok.eos_token_id, tok.pad_token_id, seed=3
    )
    prompts = tok(
        ["Compute 1+1.\n", "Compute (2*3)-1.\n", "Compute 4*4.\n", "Compute 7-2.\n"],
        add_special_tokens=False,
    )["input_ids"]
    ro = eng.generate(prompts, 4, 12, 1.0)
    torch.manual_seed(0)
    adv = torch.randn(16)
    adv[4:8] = 0.0  # a zero-advantage group (skipped unless a term needs it)
    weights = torch.ones(16)
    weights[13] = 0.0
    ref = ro.logprobs - 0.1 * ro.response_mask
    torch.save(
        {
            "rollout": {f.name: getattr(ro, f.name) for f in dataclasses.fields(ro)},
            "adv": adv,
            "weights": weights,
            "ref": ref,
            "cases": CASES,
        },
        tmp_path / "batch.pt",
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(ROOT / "tests" / "dist_update_worker.py"),
        str(tiny_dir),
        str(tmp_path / "batch.pt"),
        str(tmp_path / "out.pt"),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    two = torch.load(tmp_path / "out.pt")
    for name, case in CASES.items():
        base = load_model(case["model_dir"], ModelConfig())
        p = copy.deepcopy(base)
        algo = AlgoConfig(**case["algo"])
        batch = UpdateBatch(ro, adv, weights, ref_logprobs=ref if case.get("kl_coef") else None,
                            max_response_len=case.get("max_len") or 0)
        spec = loss_spec(algo, case.get("coef", 0.0), case.get("kl_coef", 0.0))
        settings = update_settings(case["single_mbs"], 0.0, algo, device=dist1.device,
                                   share_prompts=case.get("share", False), logprob_chunk=0)
        st = rl_update(p, torch.optim.SGD(p.parameters(), lr=1.0), batch, spec, settings)
        theirs = two[name]["params"]
        moved = False
        for k, v in p.state_dict().items():
            assert torch.allclose(v, theirs[k], atol=2e-5), (name, k, (v - theirs[k]).abs().max())
            moved |= not torch.equal(v, base.state_dict()[k])
        assert moved, name
        assert two[name]["pg_loss"] == pytest.approx(st.pg_loss, abs=1e-5)
        assert two[name]["entropy"] == pytest.approx(st.entropy, abs=1e-5)
        if case.get("kl_coef"):
            assert two[name]["kl_ref"] == pytest.approx(st.kl_ref, abs=1e-5)


def untied_model(tiny_dir):
    """The tiny architecture with a separate lm head (randomly initialised, seeded)."""
    from transformers import AutoConfig, Qwen2ForCausalLM

    cfg = AutoConfig.from_pretrained(tiny_dir)
    cfg.tie_word_embeddings = False
    torch.manual_seed(11)
    return Qwen2ForCausalLM(cfg)
