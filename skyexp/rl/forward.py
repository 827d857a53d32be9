"""Forward passes over a rollout's rows: the batch layout (pack, trim), the full logits that predict
each response token (the plain path, with prompts shared within a group), and micro-batching (by
rows or by a token budget). The token log-probs and entropies of a micro-batch (the chunked lm
head, padding-free packing) and the no-grad passes are in skyexp.rl.tokens.

Every rank runs the same number of forward passes (see micro_batches), so each can run under
FSDP2, which all-gathers parameters inside them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from skyexp.distributed import all_reduce_max
from skyexp.records import Rollout


@dataclass(frozen=True)
class ForwardSettings:
    """How a rollout's rows go through the model (trainer.* keys)."""

    micro_batch_size: int  # rows per forward pass (at most)
    device: torch.device
    share_prompts: bool = False  # each prompt once per group in a micro-batch (see skyexp.rl.tokens)
    logprob_chunk: int = 1024  # tokens per lm-head chunk; 0: full [rows, tokens, V] logits
    max_tokens: int = 0  # > 0: also at most this many prompt + response tokens per micro-batch
    padding_free: bool = False  # rows of a micro-batch packed into one sequence (see skyexp.rl.tokens)


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
    the prompt tokens once per group instead of once per sample (not under gradient checkpointing,
    see can_share_prompts: then every row runs its own prompt)."""
    if groups is None or not can_share_prompts(model):
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


def can_share_prompts(model: torch.nn.Module) -> bool:
    """Whether the prompt's KV cache survives this forward pass: transformers' gradient
    checkpointing drops the cache of a layer that trains (modeling_layers: "Caching is incompatible
    with gradient checkpointing"), which would silently run the responses without their prompt."""
    checkpointing = any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    return not (checkpointing and model.training and torch.is_grad_enabled())


def groups_of(idx: torch.Tensor, n: int, share: bool) -> torch.Tensor | None:
    """Row -> group numbering of a micro-batch whose rows come group by group (see micro_batches)."""
    return torch.unique_consecutive(idx // n, return_inverse=True)[1] if share else None


def token_budget_split(lengths: torch.Tensor, max_rows: int, max_tokens: int = 0) -> list[torch.Tensor]:
    """Positions 0..N-1 of rows with token counts `lengths` [N] (already in the order to keep), cut
    greedily into consecutive parts of at most `max_rows` rows and, with max_tokens > 0, at most
    `max_tokens` tokens (sum of lengths; a row longer than the budget is a part of its own)."""
    if max_tokens <= 0:
        return [c for c in torch.arange(len(lengths)).split(max_rows) if c.numel()]
    parts, start, tokens = [], 0, 0
    for i, n in enumerate(lengths.tolist()):
        if i > start and (i - start >= max_rows or tokens + n > max_tokens):
            parts.append(torch.arange(start, i))
            start, tokens = i, 0
        tokens += n
    if len(lengths) > start:
        parts.append(torch.arange(start, len(lengths)))
    return parts


def micro_batches(rollout: Rollout, rows: torch.Tensor, f: ForwardSettings) -> list[tuple[torch.Tensor, float]]:
    """Micro-batches of `rows`, length-sorted (prompt + response tokens) so little is spent on
    padding, cut by rows (f.micro_batch_size) and, with f.max_tokens > 0, by a token budget (verl's
    ppo_max_token_len_per_gpu): one long response trains alone, many short ones together. The
    global normalisers make the result independent of the grouping. With f.share_prompts each
    micro-batch's rows are ordered group by group (a group split over two micro-batches runs its
    prompt in each). Every rank must run the same number of forward/backward passes (FSDP
    all-gathers inside them), so a rank with fewer rows pads with micro-batches of one row whose
    loss is multiplied by 0. Returns [(row indices, live)]."""
    lengths = rollout.attention_mask[rows].sum(-1)
    sort = torch.argsort(lengths, stable=True)
    order = rows[sort]
    chunks = [(order[c], 1.0) for c in token_budget_split(lengths[sort], f.micro_batch_size, f.max_tokens)]
    if f.share_prompts:
        chunks = [(c[torch.argsort(c // rollout.n, stable=True)], live) for c, live in chunks]
    most = int(all_reduce_max(len(chunks), f.device))
    return chunks + [(torch.zeros(1, dtype=torch.long), 0.0)] * (most - len(chunks))
