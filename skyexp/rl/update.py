"""The micro-batch driver: the RL step's policy update (ppo_epochs x mini_batches optimizer steps
over micro-batches, FSDP gradient sync, gradient clipping, skipped non-finite steps) around the
pure per-token objective of skyexp.rl.objective, and the SFT step.

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
from dataclasses import dataclass, field, replace

import torch

from skyexp.algos.losses import Normalisers
from skyexp.algos.seq_losses import loss_metrics
from skyexp.config import Config
from skyexp.distributed import all_reduce_max, all_reduce_sum
from skyexp.model.forward import sampling_view, token_stats, token_topk_stats
from skyexp.model.layout import ForwardSettings, MicroRows, micro_batches, token_budget_split, trim
from skyexp.records import Rollout, UpdateStats
from skyexp.rl.objective import STAT_NAMES, LossSpec, TokenInputs, objective, reduce_named

MAX_HIST_VALUES = 65536  # token entropies kept per step for the histogram


@dataclass(frozen=True)
class UpdateSettings:
    """How the driver runs: the forward passes (micro-batching, device, head chunking), ranks,
    gradient clipping, and the optimizer steps per batch. Built once per run (`of`)."""

    fwd: ForwardSettings
    grad_clip: float  # 0: no clipping (the norm is still measured)
    world_size: int = 1
    ppo_epochs: int = 1
    mini_batches: int = 1

    @staticmethod
    def of(cfg: Config, world_size: int, device: torch.device) -> UpdateSettings:
        """The RL update's settings from trainer.* and algo.* (the one place they are read)."""
        t = cfg.trainer
        fwd = ForwardSettings(
            t.micro_batch_size,
            device,
            t.share_prompts,
            t.logprob_chunk,
            t.max_tokens_per_micro_batch,
            t.padding_free,
            t.sp_size,
        )
        return UpdateSettings(
            fwd, t.grad_clip, world_size, cfg.algo.ppo_epochs, cfg.algo.mini_batches
        )

    @property
    def device(self) -> torch.device:
        return self.fwd.device


@dataclass(frozen=True)
class UpdateBatch:
    """This rank's rows of one RL step: everything the update needs besides model and optimizer."""

    rollout: Rollout
    advantages: torch.Tensor  # [B*n] one per sequence, or [B*n, R] one per token
    weights: torch.Tensor  # [B*n] 1 for sequences that train, 0 for filtered (or masked) ones
    old_logprobs: torch.Tensor | None = None  # [B*n, R] the sampler's; None: the rollout's
    # [B*n, R] the sampler's token entropies; None: the rollout's
    entropy: torch.Tensor | None = None
    # [B*n, R] reference policy; needed when spec.kl_coef > 0
    ref_logprobs: torch.Tensor | None = None
    is_weights: torch.Tensor | None = None  # [B*n, R] truncated-IS weight of each token's loss
    max_response_len: int = 0  # the length cap (Dr.GRPO's constant); 0: the rollout's width
    entropy_rows: torch.Tensor | None = None  # [B*n] weight of each row's entropy bonus (AER)


@dataclass
class _Pass:
    """The update's working state: per-row tensors fixed for the whole update, running sums."""

    batch: UpdateBatch
    spec: LossSpec
    s: UpdateSettings
    old: torch.Tensor  # [N, R]
    ent: torch.Tensor  # [N, R]
    loss_mask: torch.Tensor  # [N, R] response tokens of rows that train
    adv_tok: torch.Tensor  # [N, R]
    grad_rows: torch.Tensor  # [N] rows whose gradient can be non-zero
    chosen: torch.Tensor  # [N, R] bool, the token rule's selection
    sums: dict[str, torch.Tensor] | None = None  # objective's STAT_NAMES, on the device
    trained_tokens: float = 0.0  # tokens in the loss, summed over mini-batches and epochs
    # |trainer - sampler| log-prob: sum, tokens, max (first mini-batch)
    gap: torch.Tensor | None = None
    norms: list[float] = field(default_factory=list)
    skipped: int = 0


def _prepare(
    model: torch.nn.Module, batch: UpdateBatch, spec: LossSpec, s: UpdateSettings
) -> _Pass:
    ro = batch.rollout
    ent = batch.entropy if batch.entropy is not None else ro.entropy
    if ent is None:
        ent = sampling_view(model, ro, batch.weights, False, s.fwd)[1]
    if spec.kl_coef > 0 and batch.ref_logprobs is None:
        raise ValueError("rl_update: kl_coef > 0 needs ref_logprobs")
    loss_mask = ro.response_mask * batch.weights[:, None]
    adv = batch.advantages
    adv_tok = adv[:, None].expand_as(loss_mask) if adv.dim() == 1 else adv
    grad_rows = (batch.weights > 0) & (
        (adv_tok != 0).any(-1) | (spec.entropy_coef > 0) | (spec.kl_coef > 0)
    )
    return _Pass(
        batch,
        spec,
        s,
        ro.logprobs if batch.old_logprobs is None else batch.old_logprobs,
        ent,
        loss_mask,
        adv_tok,
        grad_rows,
        torch.zeros_like(loss_mask, dtype=torch.bool),
        gap=torch.zeros(3, dtype=torch.float64, device=s.device),
    )


def rl_update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: UpdateBatch,
    spec: LossSpec,
    s: UpdateSettings,
) -> UpdateStats:
    """ppo_epochs x mini_batches optimizer steps on one rollout batch, minimising
    skyexp.rl.objective.objective with the pieces of `spec`.

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
    p = _prepare(model, batch, spec, s)
    for epoch in range(s.ppo_epochs):
        for m, sel in enumerate(_mini_batches(batch.weights, batch.rollout.n, s.mini_batches)):
            _mini_batch(model, optimizer, p, sel, first=(epoch == 0, m == 0))
    return _stats(p)


def _mini_batch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    p: _Pass,
    sel: torch.Tensor,
    first: tuple[bool, bool],
) -> None:
    """One optimizer step over the rows `sel`. first = (first epoch, first mini-batch)."""
    s, dev = p.s, p.s.device
    sel_tokens = p.loss_mask[sel].sum().item()
    glob = all_reduce_sum([sel_tokens, float(p.batch.weights[sel].sum().item())], dev)
    norm = Normalisers(num_tokens=float(glob[0]), num_seqs=float(glob[1]),
                       max_len=p.batch.max_response_len or p.loss_mask.shape[1])
    needed = p.grad_rows[sel]
    if p.spec.select is not None and first[0]:
        p.chosen[sel] = p.spec.select(p.adv_tok[sel], p.old[sel], p.ent[sel], p.loss_mask[sel])
    if p.spec.grads_zero_advantage:
        needed = needed | p.chosen[sel].any(-1)
    chunks = micro_batches(p.batch.rollout, sel[needed], s.fwd)
    bad_loss = torch.zeros((), dtype=torch.bool, device=dev)
    for j, (idx, live) in enumerate(chunks):
        with _no_sync(model, last=j == len(chunks) - 1):
            loss, logp, lm, rlen = _micro_batch(model, p, idx, live, norm)
            (loss * s.world_size).backward()
            bad_loss |= ~torch.isfinite(loss.detach())
        if all(first):
            _sampler_gap(p, logp.detach(), idx, rlen, lm)
    p.trained_tokens += sel_tokens
    if chunks and norm.num_tokens > 0:
        gn = _grad_norm_and_clip(model, s.grad_clip)
        # a non-finite loss or gradient on any rank skips this optimizer step everywhere
        if all_reduce_max(float(bool(bad_loss) or not math.isfinite(gn)), dev) == 0:
            p.norms.append(gn)
            optimizer.step()
        else:
            p.skipped += 1
    optimizer.zero_grad(set_to_none=True)


def _micro_batch(
    model: torch.nn.Module, p: _Pass, idx: torch.Tensor, live: float, norm: Normalisers
):
    """Forward the rows `idx`, evaluate the objective; returns (loss, token log-probs, loss mask,
    response width). `live` = 0 marks a padding micro-batch (see micro_batches)."""
    ro, dev = p.batch.rollout, p.s.device
    mb = MicroRows.of(ro, idx, p.s.fwd)
    rlen = mb.resp_mask.shape[1]
    top_lp = top1 = None
    if p.spec.topk > 0:  # SimKO: the top-K log-probs from the same forward
        logp, ent, top_lp, top1 = token_topk_stats(
            model, mb, ro.temperature, p.spec.needs_entropy, p.spec.topk, p.s.fwd
        )
    else:
        logp, ent = token_stats(model, mb, ro.temperature, p.spec.needs_entropy, p.s.fwd)

    def cut(x: torch.Tensor | None) -> torch.Tensor | None:
        return x[idx, :rlen].to(dev) if x is not None else None

    lm = cut(p.loss_mask) * live
    x = TokenInputs(
        logp,
        cut(p.old),
        cut(p.adv_tok),
        lm,
        entropy=ent,
        ref_logp=cut(p.batch.ref_logprobs) if p.spec.kl_coef > 0 else None,
        is_weights=cut(p.batch.is_weights),
        entropy_rows=(p.batch.entropy_rows[idx].to(dev)
                      if p.batch.entropy_rows is not None else None),
        topk_logp=top_lp,
        top1=top1,
        sampler_entropy=cut(p.ent) if top_lp is not None else None,
        selected=cut(p.chosen) if p.spec.select is not None else None,
    )
    loss, sums = objective(x, norm, p.spec)
    p.sums = reduce_named(p.sums, sums)
    return loss, logp, lm, rlen


def _sampler_gap(
    p: _Pass, logp: torch.Tensor, idx: torch.Tensor, rlen: int, lm: torch.Tensor
) -> None:
    """|log pi_trainer - log pi_sampler| on the first mini-batch's tokens: sum, count, max."""
    gap = (logp - p.batch.rollout.logprobs[idx, :rlen].to(p.s.device)).abs() * lm
    p.gap[:2] += torch.stack([gap.sum(), lm.sum()]).double()
    p.gap[2] = torch.maximum(p.gap[2], gap.max().double())


def _stats(p: _Pass) -> UpdateStats:
    """The update's detached scalars, summed over ranks."""
    dev, resp_mask = p.s.device, p.batch.rollout.response_mask
    sums = p.sums or {k: torch.zeros((), dtype=torch.float64, device=dev) for k in STAT_NAMES}
    tot = dict(
        zip(
            (*STAT_NAMES, "trained"),
            all_reduce_sum(
                torch.stack(
                    [
                        *(sums[k] for k in STAT_NAMES),
                        torch.tensor(p.trained_tokens, dtype=torch.float64, device=dev),
                    ]
                ),
                dev,
            ).tolist(),
        )
    )
    trained, fwd = max(tot["trained"], 1.0), max(tot["tokens"], 1.0)
    gap_sum, gap_tokens = all_reduce_sum(p.gap[:2], dev).tolist()
    # the loss's own sums (seq_losses), same keys on every rank
    extra = sorted(k for k in sums if k not in STAT_NAMES)
    extra_tot = (
        dict(zip(extra, all_reduce_sum(torch.stack([sums[k] for k in extra]), dev).tolist()))
        if extra
        else {}
    )
    return UpdateStats(
        pg_loss=tot["pg"] / trained,
        # the sampler's, over every response token
        entropy=global_token_mean(p.ent, resp_mask, dev),
        entropy_coef=p.spec.entropy_coef,
        clipfrac_low=tot["clipped_low"] / trained,
        clipfrac_high=tot["clipped_high"] / trained,
        dualclip_frac=tot["dual_clipped"] / trained,
        rule_frac=tot["rule_selected"] / trained,
        ppo_kl=tot["approx_kl"] / fwd,
        kl_ref=tot["kl_ref"] / fwd if p.spec.kl_coef > 0 else None,
        grad_norm=sum(p.norms) / len(p.norms) if p.norms else 0.0,
        optimizer_steps=len(p.norms),
        skipped_updates=p.skipped,
        num_tokens=int(resp_mask.sum().item()),
        entropy_hist=_hist_sample(p.ent, resp_mask),
        sampler_logprob_diff=gap_sum / max(gap_tokens, 1.0),
        sampler_logprob_diff_max=all_reduce_max(float(p.gap[2]), dev),
        loss_stats=loss_metrics(extra_tot, tot["trained"]),
    )


def global_token_mean(x: torch.Tensor, mask: torch.Tensor, device: torch.device) -> float:
    """Mean of x [N, R] over the masked tokens of every rank."""
    tot = all_reduce_sum([float((x * mask).sum()), float(mask.sum())], device)
    return float(tot[0]) / max(float(tot[1]), 1.0)


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


def sft_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    packed: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int],
    s: UpdateSettings,
) -> tuple[float, float]:
    """One optimizer step of token-mean NLL on response tokens. `packed` is
    skyexp.model.layout.pack's
    (sequences [N, P+R], attention mask [N, P+R], response mask [N, R] (the loss is on these
    tokens only), P). Micro-batches are length-sorted and cut like the RL update's (rows, token
    budget). Returns (loss, grad norm)."""
    seq, attn, resp_mask, prompt_len = packed
    device, f = s.device, replace(s.fwd, share_prompts=False)
    num_tokens = float(all_reduce_sum([resp_mask.sum().item()], device)[0])
    total = 0.0
    order = torch.argsort(attn.sum(-1), stable=True)
    chunks = [
        order[c] for c in token_budget_split(attn.sum(-1)[order], f.micro_batch_size, f.max_tokens)
    ]
    for j, idx in enumerate(chunks):
        mseq, mattn, mrm, plen = trim(seq[idx], attn[idx], resp_mask[idx], prompt_len)
        with _no_sync(model, last=j == len(chunks) - 1):
            mb = MicroRows(mseq.to(device), mattn.to(device), mrm.to(device), plen)
            logp, _ = token_stats(model, mb, 1.0, False, f)
            loss = -(logp * mb.resp_mask).sum() / max(num_tokens, 1.0)
            (loss * s.world_size).backward()
            total += loss.item()
    gn = _grad_norm_and_clip(model, s.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(all_reduce_sum([total], device)[0]), gn
