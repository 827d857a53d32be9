"""The step's training batch: generate, score, filter groups, and (DAPO dynamic sampling) keep
generating until enough groups are informative (advantages: skyexp.rl.advantage).

collect_batch returns every sample generated this step (for metrics: the policy's own
behaviour) together with the groups that train. With `algo.dynamic_sampling` (DAPO, arXiv
2503.14476) generation repeats, a prompt batch at a time, until each rank holds its share
(batch_size / world_size) of groups that pass `algo.filter_groups`, or `algo.max_gen_batches`
batches were generated; the first groups that passed train, the rest do not. Departures from
DAPO: each rank fills its own share (DAPO fills the global batch; a rank already full skips the
prompts drawn for it while others keep generating, so the prompt samplers stay in step), and at
the cap the step trains on the groups it has (verl raises an error); `batch/gen_batches` and
`batch/train_groups` show both.

A `Share` names what one collect fills: the RL step it is for, which data-parallel share of the
prompt batch, the prompt sampler it draws from and the engine's sampling stream. In the
synchronous loop a rank fills its own share of the current step; a generator rank of the
disaggregated placement (skyexp.rl.placement) fills the shares of the trainer ranks it serves,
each with the stream and sampler that rank would have used, so every share is generated exactly
as the synchronous loop would generate it from the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch

from skyexp.config import Config
from skyexp.config.algorithm import Algorithm
from skyexp.config.stages import StagePlan
from skyexp.data import PromptSampler, make_batch, template_of
from skyexp.distributed import Dist, all_reduce_sum
from skyexp.records import Problem, Rollout
from skyexp.rewards import Scored
from skyexp.rewards.terms import ScoreInput, combine
from skyexp.rl.state import Run, Timer
from skyexp.rollout import Engine, sampling_stream


class Generating(Protocol):
    """What generation reads of a run: a Run, or a generator rank's (skyexp.rl.generator)."""

    cfg: Config
    d: Dist
    tokenizer: Any
    engine: Engine
    reward: Any
    algorithm: Algorithm


@dataclass(frozen=True)
class Share:
    """One data-parallel share of RL step `step`'s prompt batch: share `part` of `parts`, drawn
    from `sampler` (whose rank and world are part and parts), sampled with `stream` (the engine's
    random generator while it generates this share; None: the engine's own)."""

    step: int
    part: int
    parts: int
    sampler: PromptSampler
    stream: torch.Generator | None = None


@dataclass(frozen=True)
class StepBatch:
    """Everything one RL step generated on this rank. G groups of n samples, rows grouped by
    group."""

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


def _round(
    run: Generating,
    stage: StagePlan,
    temperature: float,
    problems: list[Problem],
    timer: Timer,
    share: Share,
    index: int = 0,
) -> _Round:
    """Generate n samples for each problem, score them, apply the group filter. `index`: the
    generation round within the step (dynamic sampling), which with the share and the step keys
    the draws of the random reward term (skyexp.rewards.terms.random_term)."""
    cfg = run.cfg
    prompts = make_batch(problems, run.tokenizer, template_of(cfg.data), cfg.model.chat_template)
    with timer("gen"), sampling_stream(run.engine, share.stream):
        rollout = run.engine.generate(
            prompts.prompt_ids, stage.n, stage.max_response_len, temperature, cfg.rollout.top_p
        )
    with timer("reward"):
        texts = run.tokenizer.batch_decode(rollout.responses, skip_special_tokens=True)
        scored = run.reward.score(texts, [x for x in prompts.answers for _ in range(stage.n)])
        correct = torch.tensor(scored.scores, dtype=torch.float32)
        total, terms = combine(
            ScoreInput(
                texts,
                correct,
                rollout.response_lengths,
                rollout.truncated,
                stage.max_response_len,
                seed=cfg.trainer.seed,
                step=share.step,
                stream=share.part * 4096 + index,
            ),
            stage.reward,
        )
    rewards, correct = total.view(-1, stage.n), correct.view(-1, stage.n)
    keep = run.algorithm.group_filter(rewards, correct)  # algo.filter_groups
    return _Round(
        rollout,
        rewards,
        correct,
        {k: v.view(-1, stage.n) for k, v in terms.items()},
        scored,
        keep,
        prompts.ids,
        prompts.prompts,
        prompts.answers,
        texts,
    )


def collect_batch(run: Run, stage: StagePlan, temperature: float, timer: Timer) -> StepBatch:
    """This rank's share of the current step: generate and score prompt batches (several under
    dynamic sampling), filter groups."""
    share = Share(run.counters.rl_step, run.d.dp_rank, run.d.dp_size, run.live.sampler)
    return collect_shares(run, stage, temperature, [share], timer)[0]


def collect_shares(
    run: Generating, stage: StagePlan, temperature: float, shares: list[Share], timer: Timer
) -> list[StepBatch]:
    """The StepBatch of each share (of one step), generated round by round: under dynamic
    sampling every share draws every round and those not yet full generate, until every share of
    every rank is full (one collective over this process group) or algo.max_gen_batches."""
    a = run.cfg.algo
    quota = stage.batch_size // shares[0].parts  # a share of the groups that train
    rounds: list[list[_Round]] = [[] for _ in shares]
    have, drawn = [0] * len(shares), 0
    while True:
        drawn += 1
        for i, share in enumerate(shares):
            # every share draws every round, so the samplers stay in step; a full share skips its
            # prompts instead of generating
            problems = share.sampler.next(
                (a.gen_batch_size or stage.batch_size) if a.dynamic_sampling else stage.batch_size
            )
            if have[i] < quota or not a.dynamic_sampling:
                rounds[i].append(_round(run, stage, temperature, problems, timer, share, drawn - 1))
                have[i] += int(rounds[i][-1].keep.sum())
        if not a.dynamic_sampling or drawn >= a.max_gen_batches:
            break
        # every share of every rank is full
        if all_reduce_sum([float(any(h < quota for h in have))], run.d.device)[0] == 0:
            break
    pad = run.tokenizer.pad_token_id
    return [_assemble(r, quota, a.dynamic_sampling, drawn, pad) for r in rounds]


def _assemble(
    rounds: list[_Round], quota: int, dynamic: bool, drawn: int, pad_id: int
) -> StepBatch:
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
