"""Typed records passed between the loop's stages. Frozen: a stage never mutates another's
output."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Problem:
    """One task row after loading and cleaning."""

    id: str
    problem: str
    answer: str  # ground truth, LaTeX allowed, no \boxed{}
    solution: str | None = None  # worked solution ending in \boxed{answer}, when the source has one
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PromptBatch:
    """This rank's share of a step's prompts."""

    ids: list[str]  # [B] problem ids
    prompts: list[str]  # [B] prompt text after the template
    prompt_ids: list[list[int]]  # [B] token ids, unpadded
    answers: list[str]  # [B]


@dataclass(frozen=True)
class Rollout:
    """n samples for each of B prompts, rows grouped by prompt (row = b * n + j).

    The sequence layout is [left-padded prompt | response | right padding]; the response part
    starts at column `prompt_len`.
    """

    sequences: torch.Tensor  # [B*n, P+R] long
    attention_mask: torch.Tensor  # [B*n, P+R] long, 1 on real tokens
    response_mask: torch.Tensor  # [B*n, R] float, 1 on generated tokens (EOS included)
    logprobs: torch.Tensor  # [B*n, R] float32, log pi_sample(token) under softmax(logits / T)
    truncated: torch.Tensor  # [B*n] bool, hit the length cap before EOS
    prompt_len: int  # P
    n: int
    temperature: float
    # [B*n, R] float32 entropy of softmax(logits / T) at each step, when the engine has it
    entropy: torch.Tensor | None = None

    @property
    def responses(self) -> torch.Tensor:  # [B*n, R]
        return self.sequences[:, self.prompt_len :]

    @property
    def response_lengths(self) -> torch.Tensor:  # [B*n]
        return self.response_mask.sum(-1)


@dataclass(frozen=True)
class Scores:
    """Rewards of a rollout and how scoring went."""

    rewards: torch.Tensor  # [B, n] float
    extracted: list[str | None]  # [B*n] last \boxed{} content, None when absent
    timeouts: int = 0
    errors: int = 0


@dataclass(frozen=True)
class UpdateStats:
    """Detached scalars from one policy update (averaged over the update's tokens, all ranks)."""

    pg_loss: float
    entropy: float  # the sampling policy's mean token entropy over every response token
    entropy_coef: float
    clipfrac_low: float  # share of trained tokens with A < 0 held by the lower PPO clip
    clipfrac_high: float  # ... with A > 0 held by the upper clip
    ppo_kl: float  # k1 estimate of KL(old || new) on the tokens that went through the forward pass
    grad_norm: float
    num_tokens: int
    # [H] token entropies (rank-local sample) for the histogram
    entropy_hist: torch.Tensor | None = None
    dualclip_frac: float = 0.0  # share of trained tokens held by the dual clip
    rule_frac: float = 0.0  # share of trained tokens selected by the entropy token rule
    kl_ref: float | None = None  # mean KL-to-reference estimator over trained tokens (KL loss on)
    optimizer_steps: int = 0
    skipped_updates: int = 0  # optimizer steps skipped because the loss or gradient was not finite
    # |log pi_trainer - log pi_sampler| on the tokens of the first mini-batch, before any optimizer
    # step
    sampler_logprob_diff: float = 0.0  # mean
    sampler_logprob_diff_max: float = 0.0
    # the policy loss's own (seq_losses.loss_metrics)
    loss_stats: dict[str, float] = field(default_factory=dict)
