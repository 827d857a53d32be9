"""The forward passes over a micro-batch's response tokens, all built on one forward: the policy's
base model run to the final hidden states of the positions that predict a response token
(response_hidden). The head is applied to those hidden states afterwards:

- token log-probs and entropies (token_stats): a chunk of tokens at a time through the chunked lm
  head (skyexp.model.head; trainer.logprob_chunk > 0), so no [tokens x vocabulary] tensor is held
  for the micro-batch, forward or backward; or through full logits (trainer.logprob_chunk = 0);
- full logits [N, R, V] (response_logits), for tests and comparisons with other engines;
- the no-grad passes: old, reference and sampling-policy log-probs and entropies (forward_stats,
  sampling_view).

The hidden states come from one of three layouts:

- rows: the padded micro-batch [n, P+R] (positions from the attention mask);
- shared prompts (trainer.share_prompts): each prompt once per group, its KV cache indexed out to
  the group's rows, the responses run on top (the same function of the parameters);
- padding-free (trainer.padding_free): the rows' tokens concatenated into one sequence with
  position ids restarting at 0 for each row and no attention mask; transformers then attends
  within each row only (flash-attention varlen on GPU, a block-diagonal mask with sdpa/eager).

All of it runs inside one forward call of the model (skyexp.distributed.run_in_forward), so under
FSDP2 the root's parameters (embeddings, final norm, lm head) are the unsharded ones.
"""

from __future__ import annotations

import torch

from skyexp.algos.entropy import token_entropy
from skyexp.algos.losses import token_logprobs
from skyexp.distributed import run_in_forward
from skyexp.model import sequence_parallel
from skyexp.model.head import chunked_token_stats, chunked_topk_stats, plain_topk
from skyexp.model.layout import (
    ForwardSettings,
    MicroRows,
    micro_batches,
    pack_rows,
    packed_response_index,
)
from skyexp.records import Rollout


def can_share_prompts(model: torch.nn.Module) -> bool:
    """Whether the prompt's KV cache survives this forward pass: transformers' gradient
    checkpointing drops the cache of a layer that trains (modeling_layers: "Caching is incompatible
    with gradient checkpointing"), which would silently run the responses without their prompt."""
    checkpointing = any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    return not (checkpointing and model.training and torch.is_grad_enabled())


def response_hidden(
    model: torch.nn.Module, mb: MicroRows, padding_free: bool = False
) -> torch.Tensor:
    """Final hidden states [M, H] of the positions that predict each response token (the True
    entries of mb.resp_mask, row by row): position P-1+j predicts response token j. The one
    forward every pass below goes through."""
    if padding_free:
        return _hidden_packed(model.base_model, mb)
    return _hidden_rows(model, mb)[mb.resp_mask.bool()]


def _hidden_rows(model: torch.nn.Module, mb: MicroRows) -> torch.Tensor:
    """[n, R, H]: the hidden states predicting response positions 0..R-1 of every row (padding
    positions included), each group's prompt run once when mb.groups is given and the cache
    survives (see can_share_prompts), else every row with its own prompt."""
    base = model.base_model
    if mb.groups is not None and can_share_prompts(model):
        return _hidden_shared(base, model.config, mb)
    positions = (mb.attn.cumsum(-1) - 1).clamp(min=0)
    h = base(
        input_ids=mb.seq, attention_mask=mb.attn, position_ids=positions, use_cache=False
    ).last_hidden_state
    return h[:, mb.prompt_len - 1 : -1]


def _hidden_shared(base: torch.nn.Module, config, mb: MicroRows) -> torch.Tensor:
    """[n, R, H] with each group's prompt run once: its KV cache is indexed out to the group's rows
    and the responses run on top of it. The same function of the parameters (gradients included:
    the indexing sums them back over the group), at the cost of the prompt tokens once per group
    instead of once per sample. Groups are numbered 0.. in order of first appearance."""
    from transformers import DynamicCache

    from skyexp.model.loading import cache_kwarg

    seq, attn, plen, groups = mb.seq, mb.attn, mb.prompt_len, mb.groups
    # one row per group
    first = torch.unique_consecutive(groups, return_counts=True)[1].cumsum(0) - 1
    first = torch.cat([first.new_zeros(1), first[:-1] + 1])
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=config)
    # `cache` on transformers 5.2x, `past_key_values` before: an unknown name would be swallowed by
    # **kwargs and the responses would run without their prompt (the vLLM venv has 5.19)
    kv = {cache_kwarg(base): cache}
    head = base(
        input_ids=seq[first, :plen],
        attention_mask=attn[first, :plen],
        position_ids=positions[first, :plen],
        use_cache=True,
        **kv,
    ).last_hidden_state[:, -1:]
    hidden = head[groups]  # [n, 1, H] predicts the first response token
    if seq.shape[1] - plen > 1:
        cache.batch_select_indices(groups)
        out = base(
            input_ids=seq[:, plen:-1],
            attention_mask=attn[:, :-1],
            position_ids=positions[:, plen:-1],
            use_cache=True,
            **kv,
        ).last_hidden_state
        hidden = torch.cat([hidden, out], dim=1)
    return hidden


def _hidden_packed(base: torch.nn.Module, mb: MicroRows) -> torch.Tensor:
    ids, positions, starts = pack_rows(mb.seq, mb.attn)
    h = base(
        input_ids=ids, position_ids=positions, attention_mask=None, use_cache=False
    ).last_hidden_state[0]  # [L, H]
    prompt_lens = mb.attn[:, : mb.prompt_len].sum(-1)
    resp_lens = mb.resp_mask.sum(-1).long()
    return h[packed_response_index(starts, prompt_lens, resp_lens)]


def response_logits(
    model: torch.nn.Module,
    seq: torch.Tensor,
    attn: torch.Tensor,
    prompt_len: int,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits that predict each response token: [N, R, V] for seq [N, P+R] (padding positions
    included), the lm head applied to the hidden states of the rows layout. With `groups` [N]
    (row -> group, numbered 0.. in order of first appearance) each prompt runs once per group."""
    resp_mask = torch.ones(seq.shape[0], seq.shape[1] - prompt_len, device=seq.device)
    mb = MicroRows(
        seq, attn, resp_mask, prompt_len, groups.to(seq.device) if groups is not None else None
    )
    return run_in_forward(model, _logits, model, mb)


def _logits(model: torch.nn.Module, mb: MicroRows) -> torch.Tensor:
    return model.get_output_embeddings()(_hidden_rows(model, mb))


def token_stats(
    model: torch.nn.Module,
    mb: MicroRows,
    temperature: float,
    with_entropy: bool,
    f: ForwardSettings,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(y_t | context) [n, R] and (with_entropy) token entropies [n, R] at `temperature`,
    differentiable when grad is enabled. Padding positions hold 0 on the chunked path and junk on
    the full-logits one (f.logprob_chunk = 0): callers mask them."""
    fn = _chunked_stats if f.logprob_chunk > 0 else _plain_stats
    return run_in_forward(model, fn, model, mb, temperature, with_entropy, f)


def token_topk_stats(
    model: torch.nn.Module,
    mb: MicroRows,
    temperature: float,
    with_entropy: bool,
    topk: int,
    f: ForwardSettings,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """token_stats and the log-probs [n, R, K] of each position's K = topk most likely tokens
    (differentiable; the candidates chosen on the detached logits) and whether the sampled token
    is the most likely one [n, R] (bool), for SimKO (skyexp.algos.simko). Chunked like
    token_stats (no [tokens x vocabulary] tensor kept); not under sequence parallelism (the
    config check refuses it)."""
    fn = _chunked_topk if f.logprob_chunk > 0 else _plain_topk
    return run_in_forward(model, fn, model, mb, temperature, with_entropy, topk, f)


def _chunked_topk(model, mb: MicroRows, temperature, with_entropy, topk, f: ForwardSettings):
    sel = mb.resp_mask.bool()
    hidden = response_hidden(model, mb, f.padding_free)  # [M, H]
    head = model.get_output_embeddings()
    logp, ent, top_lp, top1 = chunked_topk_stats(
        hidden,
        head.weight,
        head.bias,
        mb.seq[:, mb.prompt_len :][sel],
        temperature,
        f.logprob_chunk,
        with_entropy,
        topk,
    )
    top = torch.zeros(*sel.shape, topk, dtype=top_lp.dtype, device=top_lp.device)
    return (
        _unflatten(logp, sel),
        (_unflatten(ent, sel) if ent is not None else None),
        top.masked_scatter(sel[..., None], top_lp),
        _unflatten(top1, sel),
    )


def _plain_topk(model, mb: MicroRows, temperature, with_entropy, topk, f: ForwardSettings):
    """Full [n, R, V] logits (the reference path, trainer.logprob_chunk = 0)."""
    logits = _logits(model, mb)
    ids = mb.seq[:, mb.prompt_len :]
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    top_lp, top1 = plain_topk(logp_all, ids, topk)
    return (
        logp_all.gather(-1, ids[..., None]).squeeze(-1),
        token_entropy(logits, temperature) if with_entropy else None,
        top_lp,
        top1,
    )


def _chunked_stats(
    model: torch.nn.Module,
    mb: MicroRows,
    temperature: float,
    with_entropy: bool,
    f: ForwardSettings,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    sel = mb.resp_mask.bool()
    sp = sequence_parallel.of(model)
    if f.padding_free and sp is not None:
        return _sliced_stats(model, sp, mb, temperature, with_entropy, f)
    hidden = response_hidden(model, mb, f.padding_free)  # [M, H], M = response tokens
    head = model.get_output_embeddings()
    logp, ent = chunked_token_stats(
        hidden,
        head.weight,
        head.bias,
        mb.seq[:, mb.prompt_len :][sel],
        temperature,
        f.logprob_chunk,
        with_entropy,
    )
    return _unflatten(logp, sel), (_unflatten(ent, sel) if ent is not None else None)


def _sliced_stats(
    model: torch.nn.Module,
    sp: sequence_parallel.SequenceParallel,
    mb: MicroRows,
    temperature: float,
    with_entropy: bool,
    f: ForwardSettings,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """_chunked_stats under sequence parallelism (trainer.sp_size > 1): the packed row's response
    positions and labels found on the whole row, each rank's slice through the model and the
    head, the slices' log-probs / entropies gathered over the SP group
    (skyexp.model.sequence_parallel)."""
    sel = mb.resp_mask.bool()
    ids, positions, starts = pack_rows(mb.seq, mb.attn)
    prompt_lens = mb.attn[:, : mb.prompt_len].sum(-1)
    index = packed_response_index(starts, prompt_lens, mb.resp_mask.sum(-1).long())
    labels = mb.seq[:, mb.prompt_len :][sel]  # [M], before any slicing (verl#6068)
    hidden, first, counts = sequence_parallel.sliced_hidden(
        model.base_model, sp, ids, positions, index
    )
    head = model.get_output_embeddings()
    logp, ent = chunked_token_stats(
        hidden,
        head.weight,
        head.bias,
        labels[first : first + hidden.shape[0]],
        temperature,
        f.logprob_chunk,
        with_entropy,
    )
    logp = sequence_parallel.gather_slices(logp, counts, sp)
    ent = sequence_parallel.gather_slices(ent, counts, sp) if ent is not None else None
    return _unflatten(logp, sel), (_unflatten(ent, sel) if ent is not None else None)


def _plain_stats(
    model: torch.nn.Module,
    mb: MicroRows,
    temperature: float,
    with_entropy: bool,
    f: ForwardSettings,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Full [n, R, V] logits of the rows layout (padding_free needs the chunked head)."""
    logits = _logits(model, mb)
    ids = mb.seq[:, mb.prompt_len :]
    return token_logprobs(logits, ids, temperature), (
        token_entropy(logits, temperature) if with_entropy else None
    )


def _unflatten(values: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """values [M] back to [n, R] at the True positions of sel [n, R] (0 elsewhere),
    differentiably."""
    return torch.zeros(sel.shape, dtype=values.dtype, device=values.device).masked_scatter(
        sel, values
    )


@torch.no_grad()
def forward_stats(
    model: torch.nn.Module,
    rollout: Rollout,
    rows: torch.Tensor,
    f: ForwardSettings,
    with_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """No-grad forward pass over `rows` of the rollout: token log-probs [N, R] (and entropies
    [N, R]) at the rollout temperature; rows not in `rows` stay 0. Every rank runs the same number
    of passes (see micro_batches), so it can run under FSDP."""
    logp = torch.zeros_like(rollout.logprobs)
    ent = torch.zeros_like(rollout.logprobs) if with_entropy else None
    for idx, live in micro_batches(rollout, rows, f):
        mb = MicroRows.of(rollout, idx, f)
        lp, en = token_stats(model, mb, rollout.temperature, with_entropy, f)
        if not live:
            continue
        rlen = mb.resp_mask.shape[1]
        logp[idx, :rlen] = (lp * mb.resp_mask).cpu()
        if ent is not None:
            ent[idx, :rlen] = (en * mb.resp_mask).cpu()
    return logp, ent


def sampling_view(
    model: torch.nn.Module,
    rollout: Rollout,
    weights: torch.Tensor,
    recompute: bool,
    f: ForwardSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Old-policy log-probs [N, R] and token entropies [N, R] of the policy that sampled the batch,
    before any optimizer step. Taken from the rollout when it carries them; otherwise one no-grad
    forward pass computes what is missing (log-probs of the rows with weights > 0, entropies of
    all).
    The caller passes as `weights` every row that enters a group's baseline (issue 17): masked
    truncated rows train no loss but their KL penalty moves their group's baseline."""
    if not recompute and rollout.entropy is not None:
        return rollout.logprobs, rollout.entropy
    need_entropy = rollout.entropy is None
    rows = torch.arange(len(weights)) if need_entropy else (weights > 0).nonzero().squeeze(1)
    logp, ent = forward_stats(model, rollout, rows, f, need_entropy)
    return (logp if recompute else rollout.logprobs), (ent if need_entropy else rollout.entropy)
