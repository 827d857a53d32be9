"""The step's training batch: generate, score, filter groups, and (DAPO dynamic sampling) keep
generating until enough groups are informative. Then advantages over the groups that train.

collect_batch returns every sample generated this step (for metrics: the policy's own
behaviour) together with the groups that train. With `algo.dynamic_sampling` (DAPO, arXiv
2503.14476) generation repeats, a prompt batch at a time, until each rank holds its share
(batch_size / world_size) of groups that pass `algo.filter_groups`, or `algo.max_gen_batches`
batches were generated; the first groups that passed train, the rest do not. Departures from
DAPO: each rank fills its own share (DAPO fills the global batch; a rank already full skips the
prompts drawn for it while others keep generating, so the prompt samplers stay in step), and at
the cap the step trains on the groups it has (verl raises an error); `batch/gen_batches` and
`batch/train_groups` show both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from skyexp.algos.advantages import ADVANTAGES, TOKEN_RETURNS, whiten
from skyexp.algos.filters import FILTERS
from skyexp.algos.kl import KL_ESTIMATORS
from skyexp.config import AlgoConfig
from skyexp.config.names import bind
from skyexp.config.stages import StagePlan
from skyexp.data import make_batch, template_of
from skyexp.distributed import all_gather_objects, all_reduce_sum
from skyexp.records import Problem, Rollout
from skyexp.rewards import Scored
from skyexp.rewards.terms import ScoreInput, combine
from skyexp.rl.state import RunState, Timer


@dataclass(frozen=True)
class StepBatch:
    """Everything one RL step generated on this rank. G groups of n samples, rows grouped by group."""

    rollout: Rollout  # [G*n, ...] every generated sample
    ids: list[str]  # [G] the problem id of each group
    correct: torch.Tensor  # [G, n] 1/0 math-verify correctness
    rewards: torch.Tensor  # [G, n] weighted total of the reward terms
    terms: dict[str, torch.Tensor]  # {term: [G, n]} unweighted values
    kept: torch.Tensor  # [G] bool, passed the group filter
    train: torch.Tensor  # [G] bool, trains this step (kept, and within the batch quota)
    statuses: list[str]  # [G*n] scoring status (ok | timeout | error)
    extracted: list[str | None]  # [G*n] final boxed answers
    gen_batches: int  # generation rounds this step took (the same on every rank)
    prompts: tuple[str, ...] = ()  # [G] prompt text (for the sample table)
    answers: tuple[str, ...] = ()  # [G] ground truth
    texts: tuple[str, ...] = ()  # [G*n] decoded responses

    def row_weights(self, mask_truncated: bool) -> torch.Tensor:
        """[G*n] 1 for rows that train. DAPO overlong filtering (mask_truncated) drops truncated
        responses from the loss; they still count in their group's baseline."""
        w = self.train.repeat_interleave(self.rollout.n).float()
        return w * (~self.rollout.truncated).float() if mask_truncated else w


class _Round(NamedTuple):
    """One generation round: a prompt batch's rollout, scored and filtered."""

    rollout: Rollout  # [g*n, ...]
    rewards: torch.Tensor  # [g, n]
    correct: torch.Tensor  # [g, n]
    terms: dict[str, torch.Tensor]  # {term: [g, n]}
    scored: Scored
    keep: torch.Tensor  # [g] passed the group filter
    ids: list[str]
    prompts: list[str]
    answers: list[str]
    texts: list[str]


def _round(run: RunState, stage: StagePlan, temperature: float, problems: list[Problem], timer: Timer) -> _Round:
    """Generate n samples for each problem, score them, apply the group filter."""
    cfg = run.cfg
    prompts = make_batch(problems, run.tokenizer, template_of(cfg.data), cfg.model.chat_template)
    with timer("gen"):
        rollout = run.engine.generate(prompts.prompt_ids, stage.n, stage.max_response_len, temperature, cfg.rollout.top_p)
    with timer("reward"):
        texts = run.tokenizer.batch_decode(rollout.responses, skip_special_tokens=True)
        scored = run.reward.score(texts, [x for x in prompts.answers for _ in range(stage.n)])
        correct = torch.tensor(scored.scores, dtype=torch.float32)
        total, terms = combine(ScoreInput(texts, correct, rollout.response_lengths, rollout.truncated,
                                          stage.max_response_len), stage.reward)
    rewards, correct = total.view(-1, stage.n), correct.view(-1, stage.n)
    keep = run_filter(cfg.algo, rewards, correct)
    return _Round(rollout, rewards, correct, {k: v.view(-1, stage.n) for k, v in terms.items()}, scored, keep,
                  prompts.ids, prompts.prompts, prompts.answers, texts)


def run_filter(a: AlgoConfig, rewards: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """algo.filter_groups over [G, n] rewards and correctness: [G] bool, the groups kept."""
    return bind(FILTERS[a.filter_groups], {"algo": a}, f"algo.filter_groups '{a.filter_groups}'")(rewards, correct)


def collect_batch(run: RunState, stage: StagePlan, temperature: float, timer: Timer) -> StepBatch:
    """Generate and score prompt batches (several under dynamic sampling), filter groups."""
    a = run.cfg.algo
    quota = stage.batch_size // run.d.dp_size  # this rank's share of the groups that train
    rounds: list[_Round] = []
    have, drawn = 0, 0
    while True:
        drawn += 1
        # every rank draws every round, so the samplers stay in step; a rank whose share is full
        # skips its prompts instead of generating
        problems = run.sampler.next((a.gen_batch_size or stage.batch_size) if a.dynamic_sampling else stage.batch_size)
        if have < quota or not a.dynamic_sampling:
            rounds.append(_round(run, stage, temperature, problems, timer))
            have += int(rounds[-1].keep.sum())
        if not a.dynamic_sampling or drawn >= a.max_gen_batches:
            break
        if all_reduce_sum([float(have < quota)], run.d.device)[0] == 0:  # every rank holds its share
            break
    return _assemble(rounds, quota, a.dynamic_sampling, drawn, run.tokenizer.pad_token_id)


def _assemble(rounds: list[_Round], quota: int, dynamic: bool, drawn: int, pad_id: int) -> StepBatch:
    kept = torch.cat([r.keep for r in rounds])
    return StepBatch(
        rollout=concat_rollouts([r.rollout for r in rounds], pad_id),
        ids=[x for r in rounds for x in r.ids],
        correct=torch.cat([r.correct for r in rounds]),
        rewards=torch.cat([r.rewards for r in rounds]),
        terms={k: torch.cat([r.terms[k] for r in rounds]) for k in rounds[0].terms},
        kept=kept,
        train=kept & (kept.cumsum(0) <= quota) if dynamic else kept,
        statuses=[s for r in rounds for s in r.scored.status],
        extracted=[x for r in rounds for x in r.scored.extracted],
        gen_batches=drawn,
        prompts=tuple(x for r in rounds for x in r.prompts),
        answers=tuple(x for r in rounds for x in r.answers),
        texts=tuple(x for r in rounds for x in r.texts),
    )


def concat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """One Rollout from several: prompts re-left-padded to the longest, responses right-padded."""
    if len(parts) == 1:
        return parts[0]
    plen = max(p.prompt_len for p in parts)
    rlen = max(p.response_mask.shape[1] for p in parts)

    def seq(p: Rollout, x: torch.Tensor, fill: float) -> torch.Tensor:
        out = torch.full((x.shape[0], plen + rlen), fill, dtype=x.dtype)
        out[:, plen - p.prompt_len : plen - p.prompt_len + x.shape[1]] = x
        return out

    def resp(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x.new_zeros(x.shape[0], rlen - x.shape[1])], dim=1)

    has_entropy = all(p.entropy is not None for p in parts)
    return Rollout(
        sequences=torch.cat([seq(p, p.sequences, pad_id) for p in parts]),
        attention_mask=torch.cat([seq(p, p.attention_mask, 0) for p in parts]),
        response_mask=torch.cat([resp(p.response_mask) for p in parts]),
        logprobs=torch.cat([resp(p.logprobs) for p in parts]),
        truncated=torch.cat([p.truncated for p in parts]),
        prompt_len=plen,
        n=parts[0].n,
        temperature=parts[0].temperature,
        entropy=torch.cat([resp(p.entropy) for p in parts]) if has_entropy else None,
    )


def kl_coefs(a: AlgoConfig) -> tuple[float, float]:
    """(coefficient of the KL loss term, coefficient of the KL reward penalty): one is a.kl_coef."""
    return (a.kl_coef, 0.0) if a.kl_mode == "loss" else (0.0, a.kl_coef)


def kl_tokens(a: AlgoConfig, logp: torch.Tensor, ref_logp: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """Per-token KL of the sampler to the reference, KL_t on response tokens [G*n, R] (0 elsewhere,
    and everywhere when no reference is loaded)."""
    if ref_logp is None:
        return torch.zeros_like(mask)
    return KL_ESTIMATORS[a.kl_estimator](logp, ref_logp) * mask


def kl_penalty(a: AlgoConfig, logp: torch.Tensor, ref_logp: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence KL of the sampler to the reference, sum_t KL_t over response tokens [G*n]
    (the RLOO-style reward penalty r - beta * KL, Ahmadian et al. 2402.14740; TRL uses k1).
    Zero when no reference is loaded."""
    return kl_tokens(a, logp, ref_logp, mask).sum(-1)


def step_advantages(a: AlgoConfig, rewards: torch.Tensor, train: torch.Tensor, logp: torch.Tensor,
                    ref_logp: torch.Tensor | None, mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The step's advantages for this rank's rows: [G*n], one per sequence, with the KL penalty (if
    in the reward) subtracted from the scalar reward; or [G*n, R], one per token, for an estimator
    with a token-level form (TOKEN_RETURNS: REINFORCE++, arXiv 2501.03262) when
    `algo.kl_mode=reward`, which charges -beta * KL_t to each token instead (issue 17).
    rewards [G, n], train [G], logp / ref_logp / mask [G*n, R]; logp and ref_logp must be there for
    every row of a training group, masked or not: each enters its group's baseline."""
    beta = kl_coefs(a)[1]
    if a.kl_mode == "reward" and a.advantage in TOKEN_RETURNS:
        return token_advantages(a, rewards, kl_tokens(a, logp, ref_logp, mask), mask, train, device)
    return group_advantages(a, rewards - beta * kl_penalty(a, logp, ref_logp, mask).view_as(rewards), train, device)


def token_advantages(a: AlgoConfig, rewards: torch.Tensor, token_kl: torch.Tensor, mask: torch.Tensor, train: torch.Tensor,
                     device: torch.device) -> torch.Tensor:
    """TOKEN_RETURNS[a.advantage] on this rank's training groups, whitened with the mean and std
    over the response tokens of the training groups of every rank; [G*n, R], 0 on rows of groups
    that do not train. Groups never straddle ranks, so only the statistics are reduced."""
    rows = train.repeat_interleave(rewards.shape[1])  # [G*n]
    g = TOKEN_RETURNS[a.advantage](rewards[train], token_kl[rows], mask[rows], kl_coefs(a)[1]).double()  # [rows, R]
    m = mask[rows].double()
    total, count = all_reduce_sum([float((g * m).sum()), float(m.sum())], device).tolist()
    mean = total / max(count, 1.0)
    var = float(all_reduce_sum([float(((g - mean).pow(2) * m).sum())], device)[0]) / max(count, 1.0)
    adv = torch.zeros_like(mask)
    adv[rows] = whiten(g, m, mean, var**0.5, a.adv_eps).to(adv.dtype)
    return adv


def group_advantages(a: AlgoConfig, rewards: torch.Tensor, train: torch.Tensor, device: torch.device) -> torch.Tensor:
    """ADVANTAGES[a.advantage] over the groups that train on every rank (gathered, so batch-level
    statistics are global), returned for this rank's rows [G*n]; 0 for groups that do not train."""
    mine = rewards[train]
    everyone = all_gather_objects(mine)
    adv = torch.zeros_like(rewards)
    if sum(x.shape[0] for x in everyone) == 0:
        return adv.flatten()
    adv_all = advantage_fn(a)(torch.cat(everyone))
    start = sum(x.shape[0] for x in everyone[: _rank(len(everyone))])
    adv[train] = adv_all[start : start + mine.shape[0]]
    return adv.flatten()


def advantage_fn(a: AlgoConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """ADVANTAGES[a.advantage] with its config parameters (algo.norm_by_std, algo.adv_eps,
    algo.passk_k, ...) bound by name."""
    return bind(ADVANTAGES[a.advantage], {"algo": a}, f"algo.advantage '{a.advantage}'")


def _rank(world: int) -> int:
    import torch.distributed as dist

    return dist.get_rank() if world > 1 else 0
