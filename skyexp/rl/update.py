"""Policy updates: the RL step's micro-batched policy-gradient update and the SFT step.

Normalisers are global: the token count of a mini-batch is summed over its micro-batches and all
ranks before any backward pass, and each micro-batch's loss is divided by it, so the gradient is
the same however the mini-batch is split (FSDP averages gradients over ranks, hence the factor
world_size on each micro-batch loss).

The old policy of PPO's importance ratio is the policy that sampled the batch, for every epoch
and mini-batch of the update (Schulman et al., arXiv 1707.06347): the ratio of a later mini-batch
is measured against the sampler, not against the policy after the previous optimizer step, which
is what lets several SGD steps reuse one batch off-policy. Its log-probs are the engine's sampling
log-probs (`algo.old_logprobs=rollout`, exact with the hf engine, which runs the same fp32 model),
or the trainer's own forward pass over the batch before the first optimizer step
(`algo.old_logprobs=recompute`, verl's way; needed when the engine's numerics differ, e.g. vLLM
in bf16, where a mismatch would otherwise show up as spurious clipping). With recomputed old
log-probs, `algo.rollout_is` also weights each token's loss by the truncated importance ratio
pi_trainer_old / pi_sampler (skyexp.algos.rollout_is), which corrects for the mismatch itself.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from skyexp.algos.entropy import token_entropy
from skyexp.algos.kl import KL_ESTIMATORS
from skyexp.algos.losses import AGGREGATIONS, token_logprobs
from skyexp.algos.token_rules import TOKEN_RULES
from skyexp.config import AlgoConfig
from skyexp.distributed import all_reduce_max, all_reduce_sum
from skyexp.records import Rollout, UpdateStats

MAX_HIST_VALUES = 65536  # token entropies kept per step for the histogram


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


def _groups(idx: torch.Tensor, n: int, share: bool) -> torch.Tensor | None:
    """Row -> group numbering of a micro-batch whose rows come group by group (see _chunks)."""
    return torch.unique_consecutive(idx // n, return_inverse=True)[1] if share else None


def _no_sync(model: torch.nn.Module, last: bool):
    """FSDP2: reduce-scatter gradients only on the last micro-batch of a mini-batch."""
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(last)
    return nullcontext()


def _grad_norm_and_clip(model: torch.nn.Module, max_norm: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


@torch.no_grad()
def forward_stats(model: torch.nn.Module, rollout: Rollout, rows: torch.Tensor, micro_batch_size: int, device: torch.device,
                  with_entropy: bool, share_prompts: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """No-grad forward pass over `rows` of the rollout: token log-probs [N, R] (and entropies
    [N, R]) at the rollout temperature; rows not in `rows` stay 0. Every rank runs the same number
    of passes (see _chunks), so it can run under FSDP."""
    logp = torch.zeros_like(rollout.logprobs)
    ent = torch.zeros_like(rollout.logprobs) if with_entropy else None
    for idx, live in _chunks(rollout, rows, micro_batch_size, device, share_prompts):
        seq, attn, rm, plen = trim(rollout.sequences[idx], rollout.attention_mask[idx], rollout.response_mask[idx],
                                   rollout.prompt_len)
        logits = response_logits(model, seq.to(device), attn.to(device), plen, _groups(idx, rollout.n, share_prompts))
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
    forward pass computes what is missing (log-probs of the rows that train, entropies of all)."""
    if not recompute and rollout.entropy is not None:
        return rollout.logprobs, rollout.entropy
    need_entropy = rollout.entropy is None
    rows = torch.arange(len(weights)) if need_entropy else (weights > 0).nonzero().squeeze(1)
    logp, ent = forward_stats(model, rollout, rows, micro_batch_size, device, need_entropy, share_prompts)
    return (logp if recompute else rollout.logprobs), (ent if need_entropy else rollout.entropy)


def global_token_mean(x: torch.Tensor, mask: torch.Tensor, device: torch.device) -> float:
    """Mean of x [N, R] over the masked tokens of every rank."""
    tot = all_reduce_sum([float((x * mask).sum()), float(mask.sum())], device)
    return float(tot[0]) / max(float(tot[1]), 1.0)


def rl_update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rollout: Rollout,
    advantages: torch.Tensor,  # [B*n] one advantage per sequence
    weights: torch.Tensor,  # [B*n] 1 for sequences that train, 0 for filtered ones
    algo: AlgoConfig,
    entropy_coef: float,
    micro_batch_size: int,
    grad_clip: float,
    world_size: int,
    device: torch.device,
    *,
    old_logprobs: torch.Tensor | None = None,  # [B*n, R] the sampler's; default: the rollout's
    entropy: torch.Tensor | None = None,  # [B*n, R] the sampler's token entropies; default: the rollout's
    ref_logprobs: torch.Tensor | None = None,  # [B*n, R] reference policy; needed when kl_coef > 0
    kl_coef: float = 0.0,  # weight of the KL-to-reference loss term (GRPO style)
    rule: str = "none",  # token rule, a key of skyexp.algos.token_rules.TOKEN_RULES
    rule_params: dict | None = None,
    max_response_len: int | None = None,  # the length cap (Dr.GRPO's constant); default: the rollout's width
    is_weights: torch.Tensor | None = None,  # [B*n, R] truncated-IS weight of each token's loss (skyexp.algos.rollout_is)
    share_prompts: bool = False,  # run each prompt once per micro-batch for its group (see response_logits)
) -> UpdateStats:
    """ppo_epochs x mini_batches optimizer steps on one rollout batch.

    loss = agg(pg) - entropy_coef * agg(H) + kl_coef * agg(KL(pi || ref)), each aggregated alike.
    Mini-batches split the groups that train (weights > 0) into `mini_batches` parts.
    Rows whose gradient is exactly zero (filtered, or zero advantage with no entropy bonus, no KL
    loss and no token rule acting on them) skip the forward pass: they still count in the
    normalisers, so the update is the one the full batch gives, at a fraction of the cost.
    A mini-batch with no such row on any rank takes no optimizer step (departure from verl, which
    steps on zero gradients: AdamW momentum and weight decay would still move the parameters).
    A mini-batch whose loss or gradient norm is not finite on any rank takes no step either
    (counted in `skipped_updates`): the parameters and optimizer state stay as they were.
    The forward passes of the first mini-batch run before any optimizer step, so they also measure,
    for free, how far the trainer's log-probs are from the sampler's (`rollout.logprobs`).
    """
    if entropy is None and rollout.entropy is None:
        entropy = sampling_view(model, rollout, weights, False, micro_batch_size, device, share_prompts)[1]
    old = rollout.logprobs if old_logprobs is None else old_logprobs
    ent_all = rollout.entropy if entropy is None else entropy
    if kl_coef > 0 and ref_logprobs is None:
        raise ValueError("rl_update: kl_coef > 0 needs ref_logprobs")
    tr, params = TOKEN_RULES[rule], dict(rule_params or {})
    clip = dict(clip_low=algo.clip_low, clip_high=algo.clip_high, clip_c=algo.clip_c, ratio_max=algo.ratio_max)
    agg, kl_fn = AGGREGATIONS[algo.loss_agg], KL_ESTIMATORS[algo.kl_estimator]
    resp_mask = rollout.response_mask
    loss_mask = resp_mask * weights[:, None]
    max_len = max_response_len or resp_mask.shape[1]
    grad_rows = (weights > 0) & ((advantages != 0) | (entropy_coef > 0) | (kl_coef > 0))
    adv_tok = advantages[:, None].expand_as(loss_mask)
    chosen = torch.zeros_like(loss_mask, dtype=torch.bool)
    # pg, clip_lo, clip_hi, dual, rule-selected, tokens(loss) | ppo_kl, kl_ref, tokens(forward)
    # accumulated on the device and read once per mini-batch (no host sync per micro-batch)
    sums = torch.zeros(9, dtype=torch.float64, device=device)
    norms: list[float] = []
    skipped = 0
    diff = torch.zeros(3, dtype=torch.float64, device=device)  # |trainer - sampler| log-prob: sum, tokens, max (first mini-batch)
    for _epoch in range(algo.ppo_epochs):
        for m, sel in enumerate(_mini_batches(weights, rollout.n, algo.mini_batches)):
            sel_tokens = loss_mask[sel].sum().item()
            glob = all_reduce_sum([sel_tokens, float(weights[sel].sum().item())], device)
            norm = dict(num_tokens=float(glob[0]), num_seqs=float(glob[1]), max_len=max_len)
            needed = grad_rows[sel]
            if tr.select is not None and _epoch == 0:
                chosen[sel] = tr.select(adv_tok[sel], old[sel], ent_all[sel], loss_mask[sel], **params)
            if tr.grads_zero_advantage:
                needed = needed | chosen[sel].any(-1)
            chunks = _chunks(rollout, sel[needed], micro_batch_size, device, share_prompts)
            bad_loss = torch.zeros((), dtype=torch.bool, device=device)
            for j, (idx, live) in enumerate(chunks):
                seq, attn, rm, plen = trim(rollout.sequences[idx], rollout.attention_mask[idx], resp_mask[idx], rollout.prompt_len)
                rlen = rm.shape[1]
                with _no_sync(model, last=j == len(chunks) - 1):
                    seq, attn = seq.to(device), attn.to(device)
                    logits = response_logits(model, seq, attn, plen, _groups(idx, rollout.n, share_prompts))
                    logp = token_logprobs(logits, seq[:, plen:], rollout.temperature)
                    lm = loss_mask[idx, :rlen].to(device) * live  # live = 0: a padding micro-batch (see _chunks)
                    pg, st = tr.loss(logp, old[idx, :rlen].to(device), adv_tok[idx, :rlen].to(device),
                                     chosen[idx, :rlen].to(device), **clip, **params)
                    if is_weights is not None:
                        pg = pg * is_weights[idx, :rlen].to(device)
                    loss = agg(pg, lm, **norm)
                    if entropy_coef > 0:
                        loss = loss - entropy_coef * agg(token_entropy(logits, rollout.temperature), lm, **norm)
                    kl = kl_fn(logp, ref_logprobs[idx, :rlen].to(device)) if kl_coef > 0 else torch.zeros_like(logp)
                    if kl_coef > 0:
                        loss = loss + kl_coef * agg(kl, lm, **norm)
                    (loss * world_size).backward()
                    bad_loss |= ~torch.isfinite(loss.detach())
                with torch.no_grad():
                    if _epoch == 0 and m == 0:
                        gap = (logp - rollout.logprobs[idx, :rlen].to(device)).abs() * lm
                        diff[:2] += torch.stack([gap.sum(), lm.sum()]).double()
                        diff[2] = torch.maximum(diff[2], gap.max().double())
                    sums += torch.stack([(pg * lm).sum(), (st["clipped_low"] * lm).sum(), (st["clipped_high"] * lm).sum(),
                                         (st["dual_clipped"] * lm).sum(), (chosen[idx, :rlen].to(device) * lm).sum(),
                                         lm.new_zeros(()), (st["approx_kl"] * lm).sum(), (kl * lm).sum(), lm.sum()]).double()
            sums[5] += sel_tokens
            if chunks and norm["num_tokens"] > 0:
                gn = _grad_norm_and_clip(model, grad_clip)
                # a non-finite loss or gradient on any rank skips this optimizer step everywhere
                if all_reduce_max(float(bool(bad_loss) or not math.isfinite(gn)), device) == 0:
                    norms.append(gn)
                    optimizer.step()
                else:
                    skipped += 1
            optimizer.zero_grad(set_to_none=True)
    tot = all_reduce_sum(sums, device)
    trained, fwd = max(float(tot[5]), 1.0), max(float(tot[8]), 1.0)
    gap_sum, gap_tokens = all_reduce_sum(diff[:2], device).tolist()
    return UpdateStats(
        pg_loss=float(tot[0]) / trained,
        entropy=global_token_mean(ent_all, resp_mask, device),  # the sampler's, over every response token
        entropy_coef=entropy_coef,
        clipfrac_low=float(tot[1]) / trained,
        clipfrac_high=float(tot[2]) / trained,
        dualclip_frac=float(tot[3]) / trained,
        rule_frac=float(tot[4]) / trained,
        ppo_kl=float(tot[6]) / fwd,
        kl_ref=float(tot[7]) / fwd if kl_coef > 0 else None,
        grad_norm=sum(norms) / len(norms) if norms else 0.0,
        optimizer_steps=len(norms),
        skipped_updates=skipped,
        num_tokens=int(resp_mask.sum().item()),
        entropy_hist=_hist_sample(ent_all, resp_mask),
        sampler_logprob_diff=gap_sum / max(gap_tokens, 1.0),
        sampler_logprob_diff_max=all_reduce_max(float(diff[2]), device),
    )


def _hist_sample(ent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """This rank's token entropies of the first rows holding at most MAX_HIST_VALUES tokens."""
    rows = max(1, int((mask.sum(-1).cumsum(0) <= MAX_HIST_VALUES).sum()))
    return ent[:rows][mask[:rows].bool()].float().cpu()


def _mini_batches(weights: torch.Tensor, n: int, parts: int) -> list[torch.Tensor]:
    """Row indices of `parts` mini-batches: the groups that train, dealt out in turn (group k to
    mini-batch k mod parts), each group's n rows together. Dealing rather than cutting makes the
    global mini-batches the same for any number of ranks when every rank trains a multiple of
    `parts` groups (each rank holds a contiguous block of the batch)."""
    groups = (weights.view(-1, n) > 0).any(-1).nonzero().squeeze(1)
    return [(groups[m::parts, None] * n + torch.arange(n)).flatten() for m in range(parts)]


def _chunks(rollout: Rollout, rows: torch.Tensor, micro_batch_size: int, device: torch.device,
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


def sft_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    seq: torch.Tensor,  # [N, P+R]
    attn: torch.Tensor,  # [N, P+R]
    resp_mask: torch.Tensor,  # [N, R] 1 on response tokens (the loss is on these only)
    prompt_len: int,
    micro_batch_size: int,
    grad_clip: float,
    world_size: int,
    device: torch.device,
) -> tuple[float, float]:
    """One optimizer step of token-mean NLL on response tokens. Returns (loss, grad norm)."""
    num_tokens = float(all_reduce_sum([resp_mask.sum().item()], device)[0])
    total = 0.0
    chunks = torch.argsort(attn.sum(-1), stable=True).split(micro_batch_size)
    for j, idx in enumerate(chunks):
        mseq, mattn, mrm, plen = trim(seq[idx], attn[idx], resp_mask[idx], prompt_len)
        with _no_sync(model, last=j == len(chunks) - 1):
            mseq, mattn, mrm = mseq.to(device), mattn.to(device), mrm.to(device)
            logits = response_logits(model, mseq, mattn, plen)
            nll = -token_logprobs(logits, mseq[:, plen:])
            loss = (nll * mrm).sum() / max(num_tokens, 1.0)
            (loss * world_size).backward()
            total += loss.item()
    gn = _grad_norm_and_clip(model, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(all_reduce_sum([total], device)[0]), gn
