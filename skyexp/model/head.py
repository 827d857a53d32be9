"""Token log-probs and entropies straight from final hidden states, a chunk of tokens at a time.

For hidden states h [M, H] (one per response token), the lm head W [V, H] (bias b [V] or none),
sampled ids y [M] and the rollout temperature T:

    z_t      = (W h_t + b) / T                         logits at the sampling temperature [V]
    lse_t    = log sum_v exp(z_tv)
    logp_t   = z_t[y_t] - lse_t                        log pi(y_t | context)
    H_t      = lse_t - sum_v p_tv z_tv,   p_t = softmax(z_t)     token entropy (nats)

and, with `topk` = K > 0 (SimKO, skyexp.algos.simko), the log-probs of the K most likely tokens
c_t1..c_tK (chosen on the detached logits, so their indices are constants) and whether y_t is
the most likely one (top1_t = [y_t = c_t1]). In backward, for upstream gradients g_t (of
logp_t), e_t (of H_t) and G_tk (of the top-K log-probs):

    dL/dz_tv = g_t (1[v = y_t] - p_tv) + sum_k G_tk (1[v = c_tk] - p_tv) - e_t p_tv (log p_tv + H_t)
    dL/dh_t  = (1/T) W^T dL/dz_t          dL/dW = (1/T) sum_t dL/dz_t h_t^T     (dL/db likewise)

Only `chunk` tokens' logits ([chunk, V], float32) exist at any time, forward and backward: the
backward pass recomputes each chunk's logits from h and W (one extra matmul per chunk) instead of
keeping [M, V] alive, so memory does not grow with the sequence length beyond h itself. Logits
are made in the weight's dtype and raised to float32 before the softmax, as the plain path
(model logits, then skyexp.algos.losses.token_logprobs) does; the weight gradient accumulates in
float32. The same idea as verl's fused kernels / prime-rl's chunked lm head, in plain torch.
"""

from __future__ import annotations

import torch


def _chunk_logits(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    """z = (h W^T + b) / T in float32: [C, H] -> [C, V]."""
    z = h @ weight.t()
    if bias is not None:
        z = z + bias
    z = z.float()  # a fresh tensor either way (the matmul's output or its float32 copy)
    return z.div_(temperature) if temperature != 1.0 else z


def _forward_chunk(z: torch.Tensor, ids: torch.Tensor, with_entropy: bool, topk: int = 0):
    """(logp [C], lse [C], entropy [C] or None, (top-K log-probs [C, K], their ids [C, K]) or
    None) of float32 logits z [C, V] (overwritten) and ids [C]."""
    lse = torch.logsumexp(z, dim=-1)
    logp_all = z.sub_(lse[:, None])  # in place: z is this chunk's own buffer
    logp = logp_all.gather(1, ids[:, None]).squeeze(1)
    top = logp_all.topk(topk, dim=-1) if topk > 0 else None
    ent = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
    return logp, lse, ent, top


class _ChunkedHead(torch.autograd.Function):
    """(hidden [M, H], weight [V, H], bias [V] | None, ids [M]) -> (logp [M], entropy [M] or
    [0], top-K log-probs [M, K], top1 [M] bool; K = topk, 0 for none)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, ids, temperature, chunk, with_entropy, topk=0):
        m = hidden.shape[0]
        logp = torch.empty(m, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(logp)
        ent = torch.empty_like(logp) if with_entropy else logp.new_zeros(0)
        top_lp = logp.new_empty(m, topk)
        top_ids = ids.new_empty(m, topk)
        for s in range(0, m, chunk):
            z = _chunk_logits(hidden[s : s + chunk], weight, bias, temperature)
            lp, ls, h, top = _forward_chunk(z, ids[s : s + chunk], with_entropy, topk)
            logp[s : s + chunk], lse[s : s + chunk] = lp, ls
            if with_entropy:
                ent[s : s + chunk] = h
            if top is not None:
                top_lp[s : s + chunk], top_ids[s : s + chunk] = top.values, top.indices
            del z, top
        top1 = top_ids[:, 0] == ids if topk > 0 else ids.new_zeros(m, dtype=torch.bool)
        ctx.save_for_backward(hidden, weight, bias, ids, lse, ent, top_ids)
        ctx.temperature, ctx.chunk, ctx.with_entropy = temperature, chunk, with_entropy
        ctx.mark_non_differentiable(top1)
        if not with_entropy:
            ctx.mark_non_differentiable(ent)
        return logp, ent, top_lp, top1

    @staticmethod
    def backward(ctx, g_logp, g_ent, g_top, _g_top1):
        hidden, weight, bias, ids, lse, ent, top_ids = ctx.saved_tensors
        t, chunk = ctx.temperature, ctx.chunk
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        )
        grad_b = (
            torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device)
            if need_b
            else None
        )
        for s in range(0, hidden.shape[0], chunk):
            h = hidden[s : s + chunk]
            e = g_ent[s : s + chunk] if ctx.with_entropy and g_ent is not None else None
            gz = _grad_logits(
                _chunk_logits(h, weight, bias, t),
                ids[s : s + chunk],
                lse[s : s + chunk],
                g_logp[s : s + chunk],
                e,
                ent[s : s + chunk] if e is not None else None,
                t,
                (top_ids[s : s + chunk], g_top[s : s + chunk])
                if top_ids.shape[1] > 0 and g_top is not None
                else None,
            )
            if need_h:
                grad_h[s : s + chunk] = gz.to(weight.dtype) @ weight
            if need_w:
                grad_w.addmm_(gz.t(), h.float())
            if need_b:
                grad_b += gz.sum(0)
            del gz  # before the next chunk's logits exist: one chunk at a time
        return (
            grad_h,
            grad_w.to(weight.dtype) if need_w else None,
            grad_b.to(bias.dtype) if need_b else None,
            None,
            None,
            None,
            None,
            None,
        )


def _grad_logits(
    z: torch.Tensor,
    ids: torch.Tensor,
    lse: torch.Tensor,
    g: torch.Tensor,
    e: torch.Tensor | None,
    ent: torch.Tensor | None,
    temperature: float,
    top: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """dL/d(logits) [C, V] of one chunk, overwriting z [C, V] (float32, at temperature T):

    dL/dz = g (onehot(y) - p) + sum_k G_k (onehot(c_k) - p) - e p (log p + H),
    dL/dlogits = dL/dz / T,   top = (c [C, K], G [C, K]) or None."""
    z.sub_(lse[:, None])  # log p
    if e is None:  # log-probs only: p in place, one [C, V] buffer
        p, z = z.exp_(), None
    else:
        p = torch.exp(z)
        z.add_(ent[:, None]).mul_(p).mul_(-e[:, None])  # -e p (log p + H)
    g_all = g if top is None else g + top[1].sum(-1)
    out = p.mul_(-g_all[:, None])
    out.scatter_add_(1, ids[:, None], g[:, None])
    if top is not None:
        out.scatter_add_(1, top[0], top[1].to(out.dtype))
    if z is not None:
        out.add_(z)
    return out.div_(temperature) if temperature != 1.0 else out


def chunked_token_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    ids: torch.Tensor,
    temperature: float = 1.0,
    chunk: int = 1024,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token log-probs [M] (and entropies [M]) of ids [M] under softmax((hidden W^T + b) / T), for
    hidden [M, H], never holding more than `chunk` x V logits (see the module docstring).
    Differentiable in hidden, weight and bias."""
    logp, ent, _, _ = chunked_topk_stats(
        hidden, weight, bias, ids, temperature, chunk, with_entropy, 0
    )
    return logp, ent


def chunked_topk_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    ids: torch.Tensor,
    temperature: float,
    chunk: int,
    with_entropy: bool,
    topk: int,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """chunked_token_stats and, for topk = K > 0, the log-probs [M, K] of each token's K most
    likely tokens (differentiable, most likely first) and whether the sampled id is the most
    likely one [M] (bool); [M, 0] and all False for topk = 0. Still at most `chunk` x V logits."""
    if hidden.shape[0] == 0:
        zero = hidden.new_zeros(0, dtype=torch.float32) + 0 * hidden.sum() + 0 * weight.sum()
        return (
            zero,
            (zero.clone() if with_entropy else None),
            zero.new_zeros(0, topk),
            ids.new_zeros(0, dtype=torch.bool),
        )
    logp, ent, top_lp, top1 = _ChunkedHead.apply(
        hidden, weight, bias, ids, float(temperature), int(chunk), bool(with_entropy), int(topk)
    )
    return logp, (ent if with_entropy else None), top_lp, top1


def plain_token_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    ids: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The same quantities through full [M, V] logits and autograd: the reference for tests."""
    z = torch.nn.functional.linear(hidden, weight, bias).float() / temperature
    logp_all = torch.log_softmax(z, dim=-1)
    logp = logp_all.gather(1, ids[:, None]).squeeze(1)
    ent = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
    return logp, ent


def plain_topk(logp_all: torch.Tensor, ids: torch.Tensor, topk: int):
    """Full log-probs [..., V] -> (the K largest [..., K], differentiable, indices chosen on the
    detached values; ids == the most likely [...]): the reference of chunked_topk_stats."""
    idx = logp_all.detach().topk(topk, dim=-1).indices
    return logp_all.gather(-1, idx), idx[..., 0] == ids
