"""The chunked lm head (skyexp.model.head) and the token passes built on it (skyexp.model.forward):
the same log-probs, entropies and gradients as the plain full-logits path, for every layout (rows,
shared prompts, padding-free), tied and untied heads, FSDP2 on one rank, gradient checkpointing;
token-budget micro-batches give the same update as row-count ones.

Tolerance: relative, max |chunked - plain| / max |plain| per tensor, <= 1e-5 in float32. Measured
on these shapes: 1e-7..1e-6 for log-probs and entropies, up to ~2e-6 for parameter gradients
(the plain path is itself ~3e-7 from a float64 computation)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import loss_spec, update_settings

from skyexp.config import AlgoConfig, ModelConfig
from skyexp.model.forward import forward_stats, token_stats
from skyexp.model.head import chunked_token_stats, plain_token_stats
from skyexp.model.layout import (
    ForwardSettings,
    MicroRows,
    micro_batches,
    pack,
    pack_rows,
    packed_response_index,
    token_budget_split,
)
from skyexp.records import Rollout
from skyexp.rl.update import UpdateBatch, rl_update

RTOL = 1e-5


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-30))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunked_head_equals_plain(bias, temperature, chunk):
    torch.manual_seed(0)
    m, h, v = 37, 16, 101
    hid, w = torch.randn(m, h), 0.5 * torch.randn(v, h)
    b = torch.randn(v) if bias else None
    ids, g, e = torch.randint(0, v, (m,)), torch.randn(m), torch.randn(m)
    out = []
    for fn in (
        lambda *a: chunked_token_stats(*a, temperature, chunk, True),
        lambda *a: plain_token_stats(*a, temperature, True),
    ):
        leaves = [hid.clone().requires_grad_(), w.clone().requires_grad_()] + (
            [b.clone().requires_grad_()] if bias else []
        )
        lp, ent = fn(leaves[0], leaves[1], leaves[2] if bias else None, ids)
        ((lp * g).sum() + (ent * e).sum()).backward()
        out.append([lp.detach(), ent.detach(), *(x.grad for x in leaves)])
    for a, c in zip(*out):
        assert rel(a, c) < RTOL


def test_no_entropy_and_no_grad():
    torch.manual_seed(1)
    hid, w, ids = torch.randn(9, 8), torch.randn(20, 8), torch.randint(0, 20, (9,))
    with torch.no_grad():
        lp, ent = chunked_token_stats(hid, w, None, ids, 0.9, 4)
    assert ent is None and rel(lp, plain_token_stats(hid, w, None, ids, 0.9)[0]) < RTOL


def test_packing_maths():
    """Rows [pad p1 p2 | r1 r2 pad] and [p1 | r1 pad pad]... by hand."""
    seq = torch.tensor([[0, 11, 12, 21, 22, 0], [13, 14, 15, 23, 0, 0]])
    attn = torch.tensor([[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
    ids, pos, starts = pack_rows(seq, attn)
    assert ids.tolist() == [[11, 12, 21, 22, 13, 14, 15, 23]]
    assert pos.tolist() == [[0, 1, 2, 3, 0, 1, 2, 3]]
    assert starts.tolist() == [0, 4]
    # P = 3: row 0 has prompt 2 (predicts r1 at 1, r2 at 2), row 1 prompt 3 (predicts r1 at 4+2)
    idx = packed_response_index(starts, torch.tensor([2, 3]), torch.tensor([2, 1]))
    assert idx.tolist() == [1, 2, 6]


def tiny_model(tiny_dir, tied: bool):
    from transformers import AutoConfig, Qwen2ForCausalLM

    cfg = AutoConfig.from_pretrained(tiny_dir)
    cfg.tie_word_embeddings = tied
    torch.manual_seed(7)
    return Qwen2ForCausalLM(cfg).float()


def rollout(n_groups=3, n=4, seed=0, vocab=200) -> Rollout:
    """Random prompts and responses of uneven lengths (left-padded prompts, right-padded
    responses)."""
    g = torch.Generator().manual_seed(seed)
    prompts, responses = [], []
    for k in range(n_groups):
        p = torch.randint(1, vocab, (3 + 2 * k,), generator=g).tolist()
        for _ in range(n):
            prompts.append(p)
            responses.append(
                torch.randint(
                    1, vocab, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g
                ).tolist()
            )
    seq, attn, rm, plen = pack(prompts, responses, 0)
    lp = -torch.rand(rm.shape, generator=g) * rm
    return Rollout(
        sequences=seq,
        attention_mask=attn,
        response_mask=rm,
        logprobs=lp,
        truncated=torch.zeros(len(seq), dtype=torch.bool),
        prompt_len=plen,
        n=n,
        temperature=0.8,
        entropy=torch.rand(rm.shape, generator=g) * rm,
    )


def stats_and_grads(model, ro, idx, f, with_entropy=True):
    mb = MicroRows.of(ro, idx, f)
    lp, ent = token_stats(model, mb, ro.temperature, with_entropy, f)
    rm = mb.resp_mask
    torch.manual_seed(3)
    a, b = torch.randn(rm.shape), torch.randn(rm.shape)
    ((lp * a * rm).sum() + (ent * b * rm).sum()).backward()
    grads = {
        n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
        for n, p in model.named_parameters()
    }
    return (lp * rm).detach(), (ent * rm).detach(), grads


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize(
    "layout", ["rows", "shared", "padding_free", "fsdp1_shared", "checkpointed_shared"]
)
def test_token_stats_equal_the_plain_path(tiny_dir, dist1, tied, layout):
    """Log-probs, entropies and every parameter gradient of the chunked path (chunks of 5 tokens)
    against full logits of the padded rows."""
    from skyexp import distributed

    base = tiny_model(tiny_dir, tied)
    ro = rollout()
    idx = torch.tensor([0, 1, 2, 4, 5, 9, 10, 11])
    dev = torch.device("cpu")
    plain = stats_and_grads(copy.deepcopy(base), ro, idx, ForwardSettings(8, dev, logprob_chunk=0))
    model = copy.deepcopy(base)
    if layout == "fsdp1_shared":
        distributed.shard(model, dist1)
    if (
        layout == "checkpointed_shared"
    ):  # the prompt's KV cache would be dropped: falls back to rows
        model.gradient_checkpointing_enable()
        model.train()
    f = ForwardSettings(
        8,
        dev,
        share_prompts="shared" in layout,
        logprob_chunk=5,
        padding_free=layout == "padding_free",
    )
    chunked = stats_and_grads(model, ro, idx, f)
    assert rel(chunked[0], plain[0]) < RTOL and rel(chunked[1], plain[1]) < RTOL
    for name, g in plain[2].items():
        assert rel(chunked[2][name], g) < RTOL, name
    assert (
        model.lm_head.weight is model.model.embed_tokens.weight
    ) == tied or layout == "fsdp1_shared"


def test_token_budget_split():
    lengths = torch.tensor([3, 3, 4, 9, 20])
    parts = token_budget_split(lengths, max_rows=64, max_tokens=10)
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3], [4]]  # 20 > budget: alone
    assert [p.tolist() for p in token_budget_split(lengths, 2, 100)] == [[0, 1], [2, 3], [4]]
    assert [p.tolist() for p in token_budget_split(lengths, 2)] == [[0, 1], [2, 3], [4]]


@pytest.mark.parametrize(
    "case", ["plain", "entropy_bonus", "kl_loss", "clip_cov", "epochs_minibatches"]
)
@pytest.mark.parametrize("layout", ["rows", "shared", "padding_free", "token_budget"])
def test_update_equals_the_plain_path(tiny_dir, case, layout):
    """The gradient of every optimizer step of rl_update with the chunked head and each micro-batch
    layout against full logits with row-count micro-batches; per loss term."""
    base = tiny_model(tiny_dir, True)
    ro = rollout(seed=1)
    torch.manual_seed(2)
    adv = torch.randn(12)
    weights = torch.ones(12)
    weights[7] = 0.0
    with torch.no_grad():  # old log-probs near the policy's, so ratios are neither 1 nor clamped
        old = forward_stats(
            base,
            ro,
            torch.arange(12),
            ForwardSettings(12, torch.device("cpu"), logprob_chunk=0),
            False,
        )[0]
    old = old + 0.1 * torch.randn(old.shape) * ro.response_mask
    algo = (
        AlgoConfig(ppo_epochs=2, mini_batches=2) if case == "epochs_minibatches" else AlgoConfig()
    )
    coef = 0.05 if case == "entropy_bonus" else 0.0
    ref = ro.logprobs - 0.1 * ro.response_mask if case == "kl_loss" else None
    rule = (
        dict(rule="clip_cov", clip_cov_ratio=0.2, cov_low=-5.0, cov_high=5.0)
        if case == "clip_cov"
        else {}
    )
    spec = loss_spec(algo, coef, 0.3 if case == "kl_loss" else 0.0, **rule)
    new = dict(
        logprob_chunk=6,
        share_prompts=layout == "shared",
        padding_free=layout == "padding_free",
        max_tokens=40 if layout == "token_budget" else 0,
    )
    grads = []
    for extra in (dict(logprob_chunk=0), new):
        p, opt = copy.deepcopy(base), None
        opt = GradRecorder(p.parameters())
        torch.manual_seed(123)
        rl_update(p, opt, UpdateBatch(ro, adv, weights, old, ref_logprobs=ref), spec,
                  update_settings(3, algo=algo, **extra))
        grads.append(opt.seen)
    assert len(grads[0]) == len(grads[1]) >= 1
    for plain, chunked in zip(*grads):
        assert all(rel(c, g) < RTOL for c, g in zip(chunked, plain))
    assert all(g.abs().max() > 0 for g in grads[0][0])


class GradRecorder(torch.optim.Optimizer):
    """Records the gradient at every step and leaves the parameters alone: gradients are compared
    directly (a parameter difference after an SGD step loses digits to cancellation)."""

    def __init__(self, params):
        super().__init__(params, {})
        self.seen: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        self.seen.append([q.grad.clone() for g in self.param_groups for q in g["params"]])


def test_token_budget_micro_batches_cover_rows_once(tiny_dir, dist1):
    ro = rollout(seed=4)
    rows = torch.arange(12)
    f = ForwardSettings(64, dist1.device, share_prompts=True, max_tokens=30)
    chunks = micro_batches(ro, rows, f)
    assert sorted(torch.cat([c for c, _ in chunks]).tolist()) == rows.tolist()
    tokens = [int(ro.attention_mask[c].sum()) for c, _ in chunks]
    assert len(chunks) > 1 and all(t <= 30 or len(c) == 1 for t, (c, _) in zip(tokens, chunks))


def test_update_equal_with_gradient_checkpointing(tiny_dir):
    """Checkpointed layers + chunked head + shared prompts (which fall back to rows) + token budget,
    and checkpointed + padding-free: the gradients of the plain path."""
    base = tiny_model(tiny_dir, True)
    ro = rollout(seed=5)
    adv = torch.randn(12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        old = forward_stats(
            base,
            ro,
            torch.arange(12),
            ForwardSettings(12, torch.device("cpu"), logprob_chunk=0),
            False,
        )[0]
    out = []
    for ckpt, extra in (
        (False, dict(logprob_chunk=0)),
        (True, dict(logprob_chunk=4, share_prompts=True, max_tokens=40)),
        (True, dict(logprob_chunk=4, padding_free=True)),
    ):
        p = copy.deepcopy(base)
        if ckpt:
            p.gradient_checkpointing_enable()
        p.train()
        opt = GradRecorder(p.parameters())
        rl_update(
            p,
            opt,
            UpdateBatch(ro, adv, torch.ones(12), old),
            loss_spec(coef=0.02),
            update_settings(3, **extra),
        )
        out.append(opt.seen[0])
    for other in out[1:]:
        assert all(rel(c, g) < RTOL for c, g in zip(other, out[0]))


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device with flash-attention"
)
def test_padding_free_flash_attention_equals_padded(tiny_dir):
    """On GPU: flash-attention varlen through position ids gives the padded path's log-probs."""
    pytest.importorskip("flash_attn")
    from skyexp.model.loading import load_model

    dev = torch.device("cuda")
    model = load_model(
        str(tiny_dir), ModelConfig(attn_implementation="flash_attention_2", dtype="bfloat16"), dev
    )
    ro = rollout()
    idx = torch.arange(12)
    padded = token_stats(
        model, MicroRows.of(ro, idx, ForwardSettings(12, dev)), 0.8, True, ForwardSettings(12, dev)
    )
    f = ForwardSettings(12, dev, padding_free=True)
    packed = token_stats(model, MicroRows.of(ro, idx, f), 0.8, True, f)
    rm = ro.response_mask.to(dev)[:, : padded[0].shape[1]]
    assert rel(packed[0] * rm, padded[0] * rm) < 2e-2 and rel(packed[1] * rm, padded[1] * rm) < 2e-2
