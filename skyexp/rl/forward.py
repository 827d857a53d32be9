"""Forward passes over a rollout's rows: the batch layout (pack, trim), the logits that predict
each response token (with prompts shared within a group), micro-batching, and the no-grad passes
that give old, reference and sampling-policy log-probs and entropies.

Every rank runs the same number of forward passes (see micro_batches), so each can run under
FSDP2, which all-gathers parameters inside them.
"""

from __future__ import annotations

import torch

from skyexp.algos.entropy import token_entropy
from skyexp.algos.losses import token_logprobs
from skyexp.distributed import all_reduce_max
from skyexp.records import Rollout


def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Lay out (prompt, response) pairs as the rollout engine does: [left-padded prompt | response |
    right padding]. Returns sequences [N, P+R], attention mask [N, P+R], response mask [N, R], P."""
    plen = max(len(p) for p in prompts)
    rlen = max(len(r) for r in responses)
    seq = torch.full((len(prompts), plen + rlen), pad_id, dtype=torch.long)
    attn = torch.zeros_like(seq)
    rmask = torch.zeros(len(prompts), rlen)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        seq[i, plen - len(p) : plen] = torch.tensor(p, dtype=torch.long)
        seq[i, plen : plen + len(r)] = torch.tensor(r, dtype=torch.long)
        attn[i, plen - len(p) : plen + len(r)] = 1
        rmask[i, : len(r)] = 1
    return seq, attn, rmask, plen


def trim(seq: torch.Tensor, attn: torch.Tensor, resp_mask: torch.Tensor, prompt_len: int):
    """Drop columns that are padding in every row of a micro-batch (left of the longest prompt,
    right of the longest response). Positions come from the attention mask, so nothing else changes.
    Returns (seq, attn, resp_mask, prompt_len) trimmed."""
    first = int((attn.cumsum(-1) == 0).sum(-1).min())  # left padding shared by all rows
    rlen = max(int(resp_mask.sum(-1).max()), 1)
    return seq[:, first : prompt_len + rlen], attn[:, first : prompt_len + rlen], resp_mask[:, :rlen], prompt_len - first


def response_logits(model: torch.nn.Module, seq: torch.Tensor, attn: torch.Tensor, prompt_len: int,
                    groups: torch.Tensor | None = None) -> torch.Tensor:
    """Logits that predict each response token: [N, R, V] for seq [N, P+R].

    With `groups` [N] (row -> group, groups numbered 0.. in order of first appearance; the rows
    of a group share one prompt), each prompt goes through the model once: its KV cache is indexed
    out to the group's rows and the responses run on top of it. The same function of the
    parameters (gradients included: the indexing sums them back over the group), at the cost of
    the prompt tokens once per group instead of once per sample."""
    if groups is None:
        resp_len = seq.shape[1] - prompt_len
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=seq, attention_mask=attn, position_ids=positions, use_cache=False, logits_to_keep=resp_len + 1)
        return out.logits[:, :-1]
    from transformers import DynamicCache

    from skyexp.models import cache_kwarg

    groups = groups.to(seq.device)
    first = torch.unique_consecutive(groups, return_counts=True)[1].cumsum(0) - 1  # one row per group
    first = torch.cat([first.new_zeros(1), first[:-1] + 1])
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    kv = {cache_kwarg(model): cache}  # `cache` where transformers deprecates `past_key_values`
    head = model(input_ids=seq[first, :prompt_len], attention_mask=attn[first, :prompt_len],
                 position_ids=positions[first, :prompt_len], use_cache=True, logits_to_keep=1, **kv)
    logits = head.logits[groups]  # [N, 1, V] predicts the first response token
    if seq.shape[1] - prompt_len > 1:
        cache.batch_select_indices(groups)
        out = model(input_ids=seq[:, prompt_len:-1], attention_mask=attn[:, :-1], position_ids=positions[:, prompt_len:-1],
                    use_cache=True, **kv)
        logits = torch.cat([logits, out.logits], dim=1)
    return logits


def groups_of(idx: torch.Tensor, n: int, share: bool) -> torch.Tensor | None:
    """Row -> group numbering of a micro-batch whose rows come group by group (see micro_batches)."""
    return torch.unique_consecutive(idx // n, return_inverse=True)[1] if share else None


def micro_batches(rollout: Rollout, rows: torch.Tensor, micro_batch_size: int, device: torch.device,
            by_group: bool = False) -> list[tuple[torch.Tensor, float]]:
    """Micro-batches of `rows`, length-sorted so little is spent on padding (the global normalisers
    make the result independent of the grouping). `by_group` orders each micro-batch's rows group
    by group, for prompts shared within a micro-batch (a group split over two micro-batches runs
    its prompt in each). Every rank must run the same number of forward/backward passes (FSDP
    all-gathers inside them), so a rank with fewer rows pads with micro-batches of one row whose
    loss is multiplied by 0. Returns [(row indices, live)]."""
    order = rows[torch.argsort(rollout.attention_mask[rows].sum(-1), stable=True)]
    chunks = [(c, 1.0) for c in order.split(micro_batch_size) if c.numel()]
    if by_group:
        chunks = [(c[torch.argsort(c // rollout.n, stable=True)], live) for c, live in chunks]
    most = int(all_reduce_max(len(chunks), device))
    return chunks + [(torch.zeros(1, dtype=torch.long), 0.0)] * (most - len(chunks))


@torch.no_grad()
def forward_stats(model: torch.nn.Module, rollout: Rollout, rows: torch.Tensor, micro_batch_size: int, device: torch.device,
                  with_entropy: bool, share_prompts: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """No-grad forward pass over `rows` of the rollout: token log-probs [N, R] (and entropies
    [N, R]) at the rollout temperature; rows not in `rows` stay 0. Every rank runs the same number
    of passes (see micro_batches), so it can run under FSDP."""
    logp = torch.zeros_like(rollout.logprobs)
    ent = torch.zeros_like(rollout.logprobs) if with_entropy else None
    for idx, live in micro_batches(rollout, rows, micro_batch_size, device, share_prompts):
        seq, attn, rm, plen = trim(rollout.sequences[idx], rollout.attention_mask[idx], rollout.response_mask[idx],
                                   rollout.prompt_len)
        logits = response_logits(model, seq.to(device), attn.to(device), plen, groups_of(idx, rollout.n, share_prompts))
        if not live:
            continue
        rlen = rm.shape[1]
        logp[idx, :rlen] = (token_logprobs(logits, seq[:, plen:].to(device), rollout.temperature) * rm.to(device)).cpu()
        if ent is not None:
            ent[idx, :rlen] = (token_entropy(logits, rollout.temperature) * rm.to(device)).cpu()
    return logp, ent


def sampling_view(model: torch.nn.Module, rollout: Rollout, weights: torch.Tensor, recompute: bool, micro_batch_size: int,
                  device: torch.device, share_prompts: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Old-policy log-probs [N, R] and token entropies [N, R] of the policy that sampled the batch,
    before any optimizer step. Taken from the rollout when it carries them; otherwise one no-grad
    forward pass computes what is missing (log-probs of the rows with weights > 0, entropies of all).
    The caller passes as `weights` every row that enters a group's baseline (issue 17): masked
    truncated rows train no loss but their KL penalty moves their group's baseline."""
    if not recompute and rollout.entropy is not None:
        return rollout.logprobs, rollout.entropy
    need_entropy = rollout.entropy is None
    rows = torch.arange(len(weights)) if need_entropy else (weights > 0).nonzero().squeeze(1)
    logp, ent = forward_stats(model, rollout, rows, micro_batch_size, device, need_entropy, share_prompts)
    return (logp if recompute else rollout.logprobs), (ent if need_entropy else rollout.entropy)
