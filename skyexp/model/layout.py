"""A rollout's rows as tensors: the batch layout (pack, trim), the micro-batches a pass runs over
(by rows or by a token budget), one micro-batch's rows on the device (MicroRows) and the
padding-free packing of them (pack_rows). The forward passes over them are in skyexp.model.forward.

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
    # each prompt once per group in a micro-batch (see skyexp.model.forward)
    share_prompts: bool = False
    logprob_chunk: int = 1024  # tokens per lm-head chunk; 0: full [rows, tokens, V] logits
    max_tokens: int = 0  # > 0: also at most this many prompt + response tokens per micro-batch
    padding_free: bool = False  # rows of a micro-batch packed into one sequence (see pack_rows)
    # trainer.sp_size: max_tokens is per rank, so an SP group's budget is x sp_size
    sp_size: int = 1


def pack(
    prompts: list[list[int]], responses: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
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
    return (
        seq[:, first : prompt_len + rlen],
        attn[:, first : prompt_len + rlen],
        resp_mask[:, :rlen],
        prompt_len - first,
    )


def groups_of(idx: torch.Tensor, n: int, share: bool) -> torch.Tensor | None:
    """Row -> group numbering of a micro-batch whose rows come group by group (see
    micro_batches)."""
    return torch.unique_consecutive(idx // n, return_inverse=True)[1] if share else None


def token_budget_split(
    lengths: torch.Tensor, max_rows: int, max_tokens: int = 0
) -> list[torch.Tensor]:
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


def micro_batches(
    rollout: Rollout, rows: torch.Tensor, f: ForwardSettings
) -> list[tuple[torch.Tensor, float]]:
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
    budget = f.max_tokens * f.sp_size  # per SP group: each rank holds a 1/sp_size slice
    chunks = [
        (order[c], 1.0) for c in token_budget_split(lengths[sort], f.micro_batch_size, budget)
    ]
    if f.share_prompts:
        chunks = [(c[torch.argsort(c // rollout.n, stable=True)], live) for c, live in chunks]
    most = int(all_reduce_max(len(chunks), f.device))
    return chunks + [(torch.zeros(1, dtype=torch.long), 0.0)] * (most - len(chunks))


@dataclass(frozen=True)
class MicroRows:
    """One micro-batch's rows, trimmed, on the device."""

    seq: torch.Tensor  # [n, P+R] left-padded prompt | response | right padding
    attn: torch.Tensor  # [n, P+R]
    resp_mask: torch.Tensor  # [n, R] float
    prompt_len: int  # P
    groups: torch.Tensor | None = None  # [n] row -> group (shared prompts), numbered in order

    @staticmethod
    def of(rollout: Rollout, idx: torch.Tensor, f: ForwardSettings) -> MicroRows:
        seq, attn, rm, plen = trim(
            rollout.sequences[idx],
            rollout.attention_mask[idx],
            rollout.response_mask[idx],
            rollout.prompt_len,
        )
        groups = groups_of(idx, rollout.n, f.share_prompts and not f.padding_free)
        return MicroRows(seq.to(f.device), attn.to(f.device), rm.to(f.device), plen,
                         groups.to(f.device) if groups is not None else None)


def pack_rows(
    seq: torch.Tensor, attn: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padding-free layout: the attended tokens of each row of seq [n, W] (contiguous in attn [n,
    W])
    concatenated into ids [1, L], L = sum of attn; position ids [1, L] restart at 0 for each row
    (which is how transformers finds the row boundaries); starts [n] where each row begins."""
    keep = attn.bool()
    lengths = keep.sum(-1)
    starts = torch.cumsum(lengths, 0) - lengths
    positions = torch.arange(int(lengths.sum()), device=seq.device) - starts.repeat_interleave(
        lengths
    )
    return seq[keep][None], positions[None], starts


def packed_response_index(
    starts: torch.Tensor, prompt_lens: torch.Tensor, resp_lens: torch.Tensor
) -> torch.Tensor:
    """Positions in the packed sequence [M] whose outputs predict the response tokens, row by row:
    row i's response token j (j < resp_lens[i]) is predicted at starts[i] + prompt_lens[i] - 1 +
    j."""
    offset = (starts + prompt_lens - 1).repeat_interleave(resp_lens)
    within = torch.arange(int(resp_lens.sum()), device=starts.device) - (
        torch.cumsum(resp_lens, 0) - resp_lens
    ).repeat_interleave(resp_lens)
    return offset + within
