"""Ulysses sequence parallelism (trainer.sp_size = s > 1) for the padding-free forward.

The ranks form dp x s groups of s consecutive ranks (init_groups); the ranks of one group hold the
same rows. Each micro-batch's packed row (skyexp.model.layout.pack_rows) of L tokens is padded to
a multiple of s and cut into s contiguous slices, one per rank; the positions that predict a
response token, and their labels, are found on the whole row first (the verl#6068 failure is a
label rolled after slicing), and each rank keeps those in its slice. Every rank runs the decoder
on its slice with the slice's global position ids (rotary embeddings see the true positions).

Attention is the only place where tokens meet. It is registered in transformers' attention
registry (AttentionInterface) as `skyexp_ulysses_<inner>` and the model is switched to it
(`set_attn_implementation`), so any HF decoder that dispatches through the registry works
without forking its code. Inside an SP forward it does the Ulysses all-to-all: q, k, v go from
sequence-sharded [1, H, L/s, D] to head-sharded [1, H/s, L, D], the inner attention runs on
whole rows for H/s heads, and the output goes back to [1, L/s, H, D]. The all-to-alls are
torch.distributed.nn.functional.all_to_all_single (autograd-aware: the backward is the reverse
all-to-all), so the same code runs on gloo (CPU) and nccl (GPU). Attention itself:

- sdpa / eager: scaled_dot_product_attention per row (is_causal, no mask: rows told apart by the
  global position ids restarting at 0), the math/flash CPU kernels and the GPU kernels alike;
- flash_attention_2 / 3: transformers' flash function with the global position ids, from which it
  derives the varlen cu_seqlens (GPU only; not run in this session, which had no GPU).

KV heads: s must divide the KV heads, or the KV heads divide s (then each KV head is replicated
s / kv times before the all-to-all, as verl does). Outside an SP forward (generation, the
reference before SP is set up) the function is the inner one unchanged.

Each rank's chunked lm head computes its slice's log-probs / entropies; gather_slices puts them
together in row order on every rank of the group (torch.distributed.nn.functional.all_gather,
whose backward sums the slice's gradient over the group). Every rank of the group then computes
the same loss on the same rows, and the update's normalisers count each rank's copy (they are
all-reduced over the world), so the summed gradient is the sp=1 one: no extra scaling.

A forward in which the patched attention was not called fails at once (verl#7476: an SP that
silently does nothing on a model whose attention it did not patch).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

PREFIX = "skyexp_ulysses_"
# The slice reaches the attention as a keyword of the model's forward, which transformers passes
# down to the attention function; gradient checkpointing keeps it for the recomputation in
# backward (a global set around the forward would be gone by then).
SLICE_KWARG = "skyexp_sp_slice"
# model.attn_implementation values the patch covers
COVERED = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")
_GROUPS: dict[int, object] = {}  # sp_size -> this rank's process group
# torch 2.13 marks torch.distributed.nn.functional deprecated in favour of the private
# torch.distributed._functional_collectives; it is the public autograd-aware API and works
warnings.filterwarnings("ignore", r"torch\.distributed\.nn\.functional", FutureWarning)


def init_groups(sp_size: int):
    """This rank's SP group: ranks [k s, (k+1) s). Every rank creates every group (new_group is
    collective). Cached per size, so the policy and the reference share it. None for s = 1."""
    if sp_size <= 1:
        return None
    if sp_size not in _GROUPS:
        world, rank = dist.get_world_size(), dist.get_rank()
        if world % sp_size:
            raise ValueError(
                f"trainer.sp_size={sp_size} does not divide the world size {world}"
            )
        mine = None
        for start in range(0, world, sp_size):
            g = dist.new_group(list(range(start, start + sp_size)))
            if start <= rank < start + sp_size:
                mine = g
        _GROUPS[sp_size] = mine
    return _GROUPS[sp_size]


def dp_coords(sp_size: int) -> tuple[int, int]:
    """(data-parallel rank, data-parallel size) of this rank: the ranks of one SP group hold the
    same rows, so prompts and samples are split over world / s data-parallel ranks."""
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank() // max(sp_size, 1), dist.get_world_size() // max(sp_size, 1)


def check_model(model_config, sp_size: int, attn_implementation: str) -> None:
    """Checks that need the model's config (read before the weights load): heads and KV heads
    against s, and an attention implementation the patch covers. Each error names its key."""
    from skyexp.config import ConfigError

    if sp_size <= 1:
        return
    if attn_implementation not in COVERED:
        raise ConfigError(
            f"config key 'model.attn_implementation': '{attn_implementation}' is not covered by "
            f"the Ulysses attention (trainer.sp_size={sp_size}); use one of {', '.join(COVERED)}"
        )
    c = getattr(model_config, "text_config", model_config)
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    if heads % sp_size:
        raise ConfigError(
            f"config key 'trainer.sp_size': {sp_size} does not divide the model's "
            f"{heads} attention heads (model.path)"
        )
    if kv % sp_size and sp_size % kv:
        raise ConfigError(
            f"config key 'trainer.sp_size': {sp_size} and the model's {kv} KV heads: one must "
            f"divide the other (KV heads are split over the group, or replicated s / kv times)"
        )


@dataclass
class SequenceParallel:
    """The SP state a model carries (model._skyexp_sp), set by enable()."""

    group: object
    size: int
    rank: int
    inner: str  # the attention implementation the patch wraps
    calls: int = 0  # patched attention calls inside SP forwards (the engagement check)


@dataclass
class _Slice:
    """One SP forward in progress: the whole row's global positions and its rows' extents."""

    sp: SequenceParallel
    positions: torch.Tensor  # [1, Lp] global position ids of the padded row
    segments: list[tuple[int, int]] = field(default_factory=list)  # [start, end) of each row


_ACTIVE: _Slice | None = None


def of(model: torch.nn.Module) -> SequenceParallel | None:
    """The model's SP state, None when sequence parallelism is off."""
    return model.__dict__.get("_skyexp_sp")


def enable(model: torch.nn.Module, sp_size: int, attn_implementation: str) -> None:
    """Register the Ulysses attention around `attn_implementation`, switch the model to it and
    attach the group (init_groups must have run on every rank). No-op for s = 1."""
    group = init_groups(sp_size)
    if group is None:
        return
    name = register(attn_implementation)
    model.set_attn_implementation(name)
    model.__dict__["_skyexp_sp"] = SequenceParallel(
        group, sp_size, dist.get_rank(group), attn_implementation
    )


def register(inner: str) -> str:
    """Register `skyexp_ulysses_<inner>` as an attention function and as a mask function (the
    inner one outside SP forwards; no mask inside them, where rows are separated per segment)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    name = PREFIX + inner
    inner_mask = ALL_MASK_ATTENTION_FUNCTIONS[inner]

    def mask(*args, **kwargs):
        return None if _ACTIVE is not None else inner_mask(*args, **kwargs)

    AttentionInterface.register(name, _make_attention(inner))
    AttentionMaskInterface.register(name, mask)
    return name


def _inner_function(inner: str, module: torch.nn.Module):
    if inner == "eager":  # each modeling file has its own eager function
        return sys.modules[type(module).__module__].eager_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[inner]


def _make_attention(inner: str):
    def ulysses_attention(module, query, key, value, attention_mask, **kwargs):
        s = kwargs.pop(SLICE_KWARG, None)
        if s is None:
            return _inner_function(inner, module)(
                module, query, key, value, attention_mask, **kwargs
            )
        s.sp.calls += 1
        return _attend(s, inner, module, query, key, value, kwargs)

    return ulysses_attention


def _seq_to_heads(x: torch.Tensor, sp: SequenceParallel) -> torch.Tensor:
    """[1, H, L/s, D] (this rank's slice, all heads) -> [1, H/s, L, D] (this rank's heads)."""
    b, h, n, d = x.shape
    send = x.reshape(b, sp.size, h // sp.size, n, d).transpose(0, 1).contiguous()
    recv = _all_to_all(send, sp)  # [s (slice), b, H/s, n, d]
    return recv.permute(1, 2, 0, 3, 4).reshape(b, h // sp.size, sp.size * n, d)


def _heads_to_seq(x: torch.Tensor, sp: SequenceParallel) -> torch.Tensor:
    """[1, L, H/s, D] (whole row, this rank's heads) -> [1, L/s, H, D] (this slice, all heads)."""
    b, n, h, d = x.shape
    send = x.reshape(b, sp.size, n // sp.size, h, d).transpose(0, 1).contiguous()
    recv = _all_to_all(send, sp)  # [s (head block), b, L/s, h, d]
    return recv.permute(1, 2, 0, 3, 4).reshape(b, n // sp.size, sp.size * h, d)


def _all_to_all(x: torch.Tensor, sp: SequenceParallel) -> torch.Tensor:
    from torch.distributed.nn.functional import all_to_all_single

    return all_to_all_single(torch.empty_like(x), x, group=sp.group)


def _attend(s: _Slice, inner: str, module, query, key, value, kwargs):
    sp = s.sp
    if kwargs.get("softcap") is not None:
        raise NotImplementedError("Ulysses attention: attention softcap is not covered")
    if kwargs.get("dropout", 0.0):
        raise NotImplementedError("Ulysses attention: attention dropout > 0 is not covered")
    window = kwargs.get("sliding_window")
    if window is not None and window < s.positions.shape[1]:
        raise NotImplementedError("Ulysses attention: a sliding window shorter than the row")
    kv = key.shape[1]
    if kv % sp.size:  # fewer KV heads than ranks: each replicated s / kv times
        key = key.repeat_interleave(sp.size // kv, dim=1)
        value = value.repeat_interleave(sp.size // kv, dim=1)
    q, k, v = (_seq_to_heads(t, sp) for t in (query, key, value))
    if inner.startswith("flash"):
        kw = {**kwargs, "position_ids": s.positions}
        out = _inner_function(inner, module)(module, q, k, v, None, **kw)[0]
    else:
        groups = q.shape[1] // k.shape[1]
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        scale = kwargs.get("scaling")
        out = torch.cat(
            [
                torch.nn.functional.scaled_dot_product_attention(
                    q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], is_causal=True, scale=scale
                )
                for a, b in s.segments
            ],
            dim=2,
        ).transpose(1, 2)  # [1, L, H/s, D]
    return _heads_to_seq(out, sp), None


@contextmanager
def slice_forward(sp: SequenceParallel, positions: torch.Tensor) -> Iterator[_Slice]:
    """An SP forward over the padded row with global `positions` [1, Lp]: the slice to pass to
    the model (SLICE_KWARG), no mask built meanwhile; fails when the patched attention was not
    called inside it (verl#7476)."""
    global _ACTIVE
    starts = (positions[0] == 0).nonzero().squeeze(1).tolist() + [positions.shape[1]]
    s = _Slice(sp, positions, list(zip(starts[:-1], starts[1:])))
    before = sp.calls
    _ACTIVE = s
    try:
        yield s
    finally:
        _ACTIVE = None
    if sp.calls == before:
        raise RuntimeError(
            f"trainer.sp_size={sp.size}: the Ulysses attention was not called in this forward "
            f"(model.attn_implementation={sp.inner}): the model does not dispatch attention "
            f"through transformers' AttentionInterface, so sequence parallelism would do nothing"
        )


def pad_to(n: int, s: int) -> int:
    return -(-n // s) * s


def sliced_hidden(
    base: torch.nn.Module,
    sp: SequenceParallel,
    ids: torch.Tensor,
    positions: torch.Tensor,
    resp_index: torch.Tensor,
) -> tuple[torch.Tensor, int, list[int]]:
    """Run the base model on this rank's slice of the packed row ids [1, L] (global positions
    [1, L]). resp_index [M] (sorted) are the whole row's positions that predict a response
    token. Returns (hidden [m, H] of those in this slice, the first of the M they are, the
    count of the M in each rank's slice)."""
    n = ids.shape[1]
    lp = pad_to(n, sp.size)
    if lp > n:  # the padding is a row of its own after the real ones (positions from 0)
        pad = torch.arange(lp - n, device=ids.device)[None]
        ids = torch.cat([ids, ids.new_zeros(1, lp - n)], dim=1)
        positions = torch.cat([positions, pad.to(positions.dtype)], dim=1)
    per = lp // sp.size
    bounds = torch.arange(sp.size + 1, device=ids.device) * per
    cuts = torch.searchsorted(resp_index, bounds).tolist()
    counts = [b - a for a, b in zip(cuts[:-1], cuts[1:])]
    lo, hi = sp.rank * per, (sp.rank + 1) * per
    with slice_forward(sp, positions) as s:
        h = base(
            input_ids=ids[:, lo:hi],
            position_ids=positions[:, lo:hi],
            attention_mask=None,
            use_cache=False,
            **{SLICE_KWARG: s},
        ).last_hidden_state[0]
    first = cuts[sp.rank]
    return h[resp_index[first : first + counts[sp.rank]] - lo], first, counts


def gather_slices(values: torch.Tensor, counts: list[int], sp: SequenceParallel) -> torch.Tensor:
    """The ranks' slice values (this rank's [counts[rank]]) concatenated in rank order, [sum],
    on every rank of the group. Differentiable: each slice's gradient is summed over the group
    (every rank computes the same loss on the gathered values; see the module docstring)."""
    from torch.distributed.nn.functional import all_gather

    most = max(counts)
    padded = torch.nn.functional.pad(values, (0, most - values.shape[0]))
    parts = all_gather(padded, group=sp.group)
    return torch.cat([p[:c] for p, c in zip(parts, counts)])
