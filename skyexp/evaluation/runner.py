"""The benchmark runner used before, during and after RL and by `python -m skyexp.eval`: sample n
responses per problem through the rollout engine (grouped by prompt length), score them with the
training reward, gather over ranks, and return an EvalResult (skyexp.evaluation.estimators)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skyexp.config import EvalConfig
from skyexp.data import Template, apply_template
from skyexp.distributed import all_gather_objects
from skyexp.evaluation.estimators import EvalResult
from skyexp.records import Problem
from skyexp.rewards.vote import group_wrong_answers
from skyexp.rollout import sampling_stream

log = logging.getLogger("skyexp")


def eval_template(e: EvalConfig) -> Template:
    """The prompt of a benchmark: eval.prompt_template, eval.system_prompt, eval.response_prefix."""
    return Template(e.prompt_template, e.system_prompt, e.response_prefix)


def response_cap(engine, requested: int) -> int:
    """Never sample past the model's context window: generating beyond max_position_embeddings
    is meaningless (and vLLM refuses it), and the long-CoT protocols ask for 32k tokens."""
    limit = getattr(
        getattr(getattr(engine, "model", None), "config", None), "max_position_embeddings", None
    )
    if isinstance(limit, int) and 0 < limit < requested:
        log.warning(
            "eval.max_response_len=%d exceeds the model's context (%d tokens): using %d",
            requested,
            limit,
            limit,
        )
        return limit
    return requested


def length_groups(lengths: list[int]) -> list[list[int]]:
    """Indices grouped for generation: sorted by prompt length, each group's longest prompt at most
    twice its shortest. The engine left-pads a call's prompts to the longest one, so one call over
    a benchmark whose prompts run from 50 to 4000 tokens spends most of its attention on padding;
    grouped, padding stays under half of any group's prompt tokens."""
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if groups and lengths[i] <= 2 * max(1, lengths[groups[-1][0]]):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


@dataclass
class SampledEvalResult(EvalResult):
    """An EvalResult that also carries the sampled responses' mean token entropy (nats, of
    softmax(logits / eval.temperature), token-weighted over every sample): the policy's entropy at
    one common temperature, comparable across runs that trained at different rollout temperatures.
    None when the engine reports no entropies (vLLM); then nothing extra is logged."""

    entropy: float | None = None

    def metrics(self, prefix: str = "val") -> dict[str, float]:
        out = super().metrics(prefix)
        if self.entropy is not None:
            out[f"{prefix}/{self.name}/entropy"] = self.entropy
        return out


def generate_by_length(
    engine,
    tokenizer,
    ids: list[list[int]],
    n: int,
    max_len: int,
    temperature: float,
    top_p: float,
    entropy: list[float] | None = None,
) -> tuple[list[str], list[int], list[bool]]:
    """n samples per prompt, one engine call per length group -> per sample, in prompt order
    (prompt i's samples at i*n ... i*n + n-1): decoded text, response length, truncated?
    `entropy`, a [sum, tokens] accumulator, gains the response tokens' entropies when the engine has
    them."""
    texts: list[str] = [""] * (len(ids) * n)
    lengths, truncated = [0] * len(texts), [False] * len(texts)
    for group in length_groups([len(x) for x in ids]):
        ro = engine.generate([ids[i] for i in group], n, max_len, temperature, top_p)
        if entropy is not None and getattr(ro, "entropy", None) is not None:
            entropy[0] += float((ro.entropy * ro.response_mask).sum())
            entropy[1] += float(ro.response_mask.sum())
        decoded = tokenizer.batch_decode(ro.responses, skip_special_tokens=True)
        for j, i in enumerate(group):
            for s in range(n):
                texts[i * n + s] = decoded[j * n + s]
                lengths[i * n + s] = int(ro.response_lengths[j * n + s])
                truncated[i * n + s] = bool(ro.truncated[j * n + s])
    return texts, lengths, truncated


def _problem_record(
    p: Problem,
    rs: range,
    grp: list[tuple[str, int]],
    scored: Any,
    gen: tuple[list[str], list[int], list[bool]],
) -> tuple[int, list[int], list[float], dict]:
    """One problem's result from its sample rows `rs`: the number correct, the sizes of its groups
    of equal wrong answers, the scores, and its eval/*.jsonl record (samples and maj@k votes)."""
    texts, lengths, truncated = gen
    samples = [
        {
            "text": texts[r],
            "extracted": scored.extracted[r],
            "score": scored.scores[r],
            "status": scored.status[r],
            "length": lengths[r],
            "truncated": truncated[r],
        }
        for r in rs
    ]
    c = int(sum(scored.scores[r] > 0 for r in rs))
    votes = ([{"answer": p.answer, "count": c, "correct": True}] if c else []) + [
        {"answer": a, "count": m, "correct": False} for a, m in grp
    ]
    record = {"id": p.id, "problem": p.problem, "answer": p.answer, "correct": c, "votes": votes,
              "samples": samples}
    return c, [m for _, m in grp], [scored.scores[r] for r in rs], record


def run_eval(
    engine,
    reward,
    tokenizer,
    problems: list[Problem],
    cfg: EvalConfig,
    template: str | Template,
    chat: bool,
    shard: tuple[int, int] = (0, 1),
    shards: list[tuple[tuple[int, int], Any]] | None = None,
) -> EvalResult:
    """Sample cfg.n answers per problem (this rank's share: shard = (rank, world size)), score them,
    group the wrong answers for maj@k, gather every rank's results (in problem order). `template`
    renders each problem (`eval_template(cfg)` for benchmarks; the identity "{problem}" for prompts
    rendered already). `shards`: [(shard, sampling stream)], several shards this rank evaluates in
    turn, each sampled from its own stream (a generator rank evaluating for each trainer rank it
    serves, skyexp.rl.generator); the result is the same as one rank per shard."""
    t0 = time.perf_counter()
    if cfg.size:
        problems = problems[: cfg.size]
    max_len = response_cap(engine, cfg.max_response_len)
    parts = []
    for (index, world), stream in shards or [(shard, None)]:
        with sampling_stream(engine, stream):
            parts.append((index, *_eval_shard(
                engine, reward, tokenizer, problems, cfg, template, chat, (index, world), max_len
            )))
    # in shard order, as one rank per shard would add them
    gathered = sorted((p for rank in all_gather_objects(parts) for p in rank), key=lambda x: x[0])
    merged = sorted((item for _, part, *_ in gathered for item in part), key=lambda x: x[0])
    ent_sum, ent_tokens = sum(g[4][0] for g in gathered), sum(g[4][1] for g in gathered)
    return SampledEvalResult(
        name=cfg.name,
        n=cfg.n,
        correct=[m[1] for m in merged],
        records=[m[4] for m in merged],
        timeouts=sum(g[2] for g in gathered),
        errors=sum(g[3] for g in gathered),
        wrong_groups=[m[2] for m in merged],
        scores=[m[3] for m in merged],
        max_response_len=max_len,
        seconds=time.perf_counter() - t0,
        entropy=ent_sum / ent_tokens if ent_tokens else None,
    )


def _eval_shard(
    engine,
    reward,
    tokenizer,
    problems: list[Problem],
    cfg: EvalConfig,
    template: str | Template,
    chat: bool,
    shard: tuple[int, int],
    max_len: int,
) -> tuple[list[tuple[int, int, list[int], list[float], dict]], int, int, list[float]]:
    """One shard's evaluation: (per problem (index, correct, wrong groups, scores, record),
    timeouts, errors, [entropy sum, tokens])."""
    mine = list(range(shard[0], len(problems), shard[1]))
    local: list[tuple[int, int, list[int], list[float], dict]] = []
    timeouts = errors = 0
    ent = [0.0, 0.0]  # [entropy sum, tokens] over this shard's samples
    if mine:
        prompts = [apply_template(problems[i].problem, template, tokenizer, chat) for i in mine]
        ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        texts, lengths, truncated = generate_by_length(
            engine, tokenizer, ids, cfg.n, max_len, cfg.temperature, cfg.top_p, ent
        )
        golds = [problems[i].answer for i in mine for _ in range(cfg.n)]
        scored = reward.score(texts, golds)
        timeouts, errors = scored.timeouts, scored.errors
        rows = [range(j * cfg.n, (j + 1) * cfg.n) for j in range(len(mine))]
        # a reward without a math-verify pool groups by text alone
        pool = getattr(reward, "pool", None)
        groups = group_wrong_answers(
            [[(scored.extracted[r], scored.scores[r] > 0) for r in rs] for rs in rows],
            pool.verify if pool else None,
            cfg.vote_max_pairs,
            reward.cfg.max_answer_chars,
        )
        gen = (texts, lengths, truncated)
        local = [(i, *_problem_record(problems[i], rs, grp, scored, gen))
                 for i, rs, grp in zip(mine, rows, groups)]
    return local, timeouts, errors, ent


def eval_due(every: int, rl_step: int, total_steps: int, after: bool) -> bool:
    """eval.every=N: evaluate after every N-th RL step (rl_step counts finished steps), except
    after the last step when eval.after will evaluate the same weights anyway."""
    if after and rl_step == total_steps:
        return False
    return every > 0 and rl_step > 0 and rl_step % every == 0


def write_records(records: list[dict[str, Any]], path: Path) -> None:
    """One JSON object per problem: its samples (text, extracted answer, score, status, length,
    truncation) and the vote groups behind maj@k."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )
