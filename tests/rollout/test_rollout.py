"""The HF rollout engine: exact sampling log-probs, EOS handling, chunking, top-p, weight sync."""

from __future__ import annotations

import pytest
import torch

from skyexp.algos.entropy import token_entropy
from skyexp.algos.losses import token_logprobs
from skyexp.config import ModelConfig
from skyexp.model.forward import response_logits
from skyexp.model.loading import load_model, load_tokenizer
from skyexp.rollout.hf import HFEngine, sample_token


def _engine(tiny_dir, **kw):
    tok = load_tokenizer(str(tiny_dir), ModelConfig())
    return tok, HFEngine(
        load_model(str(tiny_dir), ModelConfig()), tok.eos_token_id, tok.pad_token_id, **kw
    )


def test_logprobs_equal_a_forward_pass(tiny_dir):
    tok, eng = _engine(tiny_dir, seed=0)
    prompts = tok(["Compute 1+2.\n", "Compute ((6*9)+4)*1.\n", "x"], add_special_tokens=False)[
        "input_ids"
    ]
    ro = eng.generate(prompts, n=3, max_tokens=12, temperature=0.8)
    assert ro.sequences.shape[0] == 9 and ro.response_mask.shape == ro.logprobs.shape
    model = load_model(str(tiny_dir), ModelConfig())
    with torch.no_grad():
        logits = response_logits(model, ro.sequences, ro.attention_mask, ro.prompt_len)
        lp = token_logprobs(logits, ro.responses, 0.8)
        ent = token_entropy(logits, 0.8)
    assert torch.allclose(lp * ro.response_mask, ro.logprobs, atol=1e-4)
    assert torch.allclose(ent * ro.response_mask, ro.entropy, atol=1e-4)


def test_eos_ends_the_response_mask(tiny_dir):
    tok, eng = _engine(tiny_dir, seed=1)
    # make EOS likely: bias the head so generation stops early for some rows
    with torch.no_grad():
        eng.model.lm_head.weight[tok.eos_token_id] += 0.5 * eng.model.lm_head.weight.abs().mean()
    ro = eng.generate(
        tok(["a"], add_special_tokens=False)["input_ids"], n=32, max_tokens=20, temperature=1.0
    )
    lengths = ro.response_lengths.long()
    for i in range(32):
        resp = ro.responses[i]
        if not ro.truncated[i]:
            assert resp[lengths[i] - 1] == tok.eos_token_id
            assert (resp[: lengths[i] - 1] != tok.eos_token_id).all()
        assert (
            ro.response_mask[i, lengths[i] :].sum() == 0 and ro.response_mask[i, : lengths[i]].all()
        )


def test_chunking_keeps_groups_and_shapes(tiny_dir):
    tok, eng = _engine(tiny_dir, seed=2, max_batch=4)
    prompts = tok(["a", "bb", "ccc"], add_special_tokens=False)["input_ids"]
    ro = eng.generate(prompts, n=4, max_tokens=6, temperature=1.0)
    assert ro.sequences.shape[0] == 12 and ro.n == 4
    for g, p in enumerate(prompts):
        for j in range(4):
            row = ro.sequences[g * 4 + j, : ro.prompt_len]
            assert row[-len(p):].tolist() == p


def test_greedy_is_deterministic(tiny_dir):
    tok, eng = _engine(tiny_dir, seed=3)
    p = tok(["Compute 2*3.\n"], add_special_tokens=False)["input_ids"]
    a = eng.generate(p, 2, 8, 0.0)
    b = eng.generate(p, 2, 8, 0.0)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.sequences[0], a.sequences[1])


def test_top_p_samples_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    tok, lp, ent = sample_token(logits, 1.0, 0.7, torch.Generator().manual_seed(0))
    assert set(tok.tolist()) <= {0, 1}  # 0.5 + 0.3 reaches 0.7
    assert torch.allclose(
        lp[tok == 0], torch.log(torch.tensor(0.5))
    )  # log-prob of the full distribution
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    assert torch.allclose(ent, -(p * p.log()).sum(), atol=1e-5)


def test_sync_weights_copies_the_policy(tiny_dir):
    tok, eng = _engine(tiny_dir)
    policy = load_model(str(tiny_dir), ModelConfig())
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01)
    eng.sync_weights(policy)
    for (n1, a), (n2, b) in zip(policy.named_parameters(), eng.model.named_parameters()):
        assert n1 == n2 and torch.equal(a, b)


def _llama_gqa(tmp_path):
    """A Llama model with grouped-query attention (4 query heads share 2 KV heads), no biases."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    m = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            eos_token_id=1,
            pad_token_id=0,
            bos_token_id=0,
        )
    )
    m.save_pretrained(tmp_path / "llama")
    return str(tmp_path / "llama")


@pytest.mark.parametrize("arch", ["qwen2", "llama_gqa"])
def test_lean_decoding_equals_the_model_forward(tiny_dir, tmp_path, arch):
    """The lean path samples what the model's own forward samples (same seed: same tokens) with
    the same log-probs and entropies, through cache growth (40 > CHUNK tokens) and row
    compaction."""
    from skyexp.rollout.lean import CHUNK, lean_supported

    path, eos, pad = (
        (str(tiny_dir), None, None) if arch == "qwen2" else (_llama_gqa(tmp_path), 1, 0)
    )
    if arch == "qwen2":
        tok = load_tokenizer(path, ModelConfig())
        eos, pad = tok.eos_token_id, tok.pad_token_id
        prompts = tok(["Compute 1+2.\n", "Compute ((6*9)+4)*1.\n", "x"], add_special_tokens=False)[
            "input_ids"
        ]
    else:
        prompts = [[5, 6, 7], [9, 3, 4, 5, 6, 2, 8], [11]]
    # EOS := the token this random model samples most, so rows finish at different steps
    probe = (
        HFEngine(load_model(path, ModelConfig()), -1, pad, seed=7)
        .generate(prompts, 4, 40, 0.9)
        .responses
    )
    eos = int(probe.flatten().bincount().argmax())
    out = {}
    for lean in (True, False):
        eng = HFEngine(load_model(path, ModelConfig()), eos, pad, seed=7, lean=lean)
        assert (eng.fused is not None) == lean and lean_supported(eng.model)
        out[lean] = eng.generate(prompts, n=4, max_tokens=40, temperature=0.9)
    a, b = out[True], out[False]
    assert (
        a.response_mask.shape[1] > CHUNK and int(a.truncated.sum()) <= 0.75 * a.truncated.numel()
    )  # compacted
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.attention_mask, b.attention_mask)
    assert torch.equal(a.response_mask, b.response_mask)
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5) and torch.allclose(
        a.entropy, b.entropy, atol=1e-5
    )
    model = load_model(path, ModelConfig())
    with torch.no_grad():
        logits = response_logits(model, a.sequences, a.attention_mask, a.prompt_len)
    assert torch.allclose(
        token_logprobs(logits, a.responses, 0.9) * a.response_mask, a.logprobs, atol=1e-4
    )


def test_fused_weights_follow_sync(tiny_dir):
    """The lean path's fused q/k/v and gate/up buffers are the engine model's parameters: syncing a
    changed policy changes what is sampled, and the log-probs are the new policy's."""
    tok, eng = _engine(tiny_dir, seed=4)
    policy = load_model(str(tiny_dir), ModelConfig())
    with torch.no_grad():
        for p in policy.parameters():
            p.mul_(1.5).add_(0.01)
    eng.sync_weights(policy)
    layer = eng.model.model.layers[0]
    assert layer.self_attn.k_proj.weight.data_ptr() > layer.self_attn.q_proj.weight.data_ptr()
    assert torch.equal(
        eng.fused[0][0][: layer.self_attn.q_proj.out_features], layer.self_attn.q_proj.weight
    )
    ro = eng.generate(
        tok(["Compute 3*3.\n"], add_special_tokens=False)["input_ids"],
        n=4,
        max_tokens=10,
        temperature=1.0,
    )
    with torch.no_grad():
        logits = response_logits(policy, ro.sequences, ro.attention_mask, ro.prompt_len)
    assert torch.allclose(
        token_logprobs(logits, ro.responses, 1.0) * ro.response_mask, ro.logprobs, atol=1e-4
    )


def test_lean_path_declines_what_it_does_not_reproduce(tiny_dir):
    from skyexp.rollout.lean import lean_supported

    model = load_model(str(tiny_dir), ModelConfig())
    assert lean_supported(model)
    model.config.use_sliding_window = True
    assert not lean_supported(model)
    model.config.use_sliding_window, model.config.model_type = False, "gpt2"
    assert not lean_supported(model)


def test_draw_samples_the_distribution():
    """Inverse-CDF draws: frequencies match the probabilities (unnormalised rows too), zero-mass
    tokens never come up, the same seed gives the same draws, and a long flat tail keeps its
    mass."""
    from skyexp.rollout.hf import draw

    p = torch.tensor([0.5, 0.3, 0.0, 0.15, 0.05])
    tok = draw((2 * p).repeat(40000, 1), torch.Generator().manual_seed(0))
    freq = torch.bincount(tok, minlength=5).float() / tok.numel()
    assert torch.allclose(freq, p, atol=0.01) and freq[2] == 0
    assert torch.equal(tok[:100], draw((2 * p).repeat(100, 1), torch.Generator().manual_seed(0)))
    tail = torch.full((8, 200_000), 0.5 / 199_999)  # half the mass spread thinly over 200k tokens
    tail[:, 0] = 0.5
    hits = torch.cat([draw(tail, torch.Generator().manual_seed(s)) for s in range(100)])
    assert abs(float((hits > 0).float().mean()) - 0.5) < 0.06


def test_kv_cache_goes_by_the_supported_argument(tiny_dir, dist1):
    """transformers 5.2x renamed the forward's `past_key_values` to `cache` (a FutureWarning now,
    gone in 5.40): the plain decoding path and the update's shared-prompt forward pass it under the
    name the installed version takes, so neither warns (nor breaks when the old name goes)."""
    import inspect
    import warnings

    from skyexp.distributed import shard
    from skyexp.model.loading import cache_kwarg

    model = load_model(str(tiny_dir), ModelConfig())
    takes_cache = "cache" in inspect.signature(type(model).forward).parameters
    assert cache_kwarg(model) == ("cache" if takes_cache else "past_key_values")
    tok, eng = _engine(tiny_dir, seed=3, lean=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        ro = eng.generate([tok("Compute 1+1.")["input_ids"]] * 2, 3, 8, 1.0)
        policy = shard(
            load_model(str(tiny_dir), ModelConfig()), dist1
        )  # FSDP2 keeps the forward's signature
        assert cache_kwarg(policy) == cache_kwarg(model)
        groups = torch.arange(6) // 3
        shared = response_logits(policy, ro.sequences, ro.attention_mask, ro.prompt_len, groups)
    plain = response_logits(policy, ro.sequences, ro.attention_mask, ro.prompt_len)
    torch.testing.assert_close(shared, plain, atol=1e-4, rtol=1e-4)
