"""Task data: sources, mixes, prompt templates, and the per-rank prompt sampler.

`load_task(cfg.data)` gives the training problems: the built-in arith task, one source
(skyexp.data.sources: the recipes' hub sets, or any jsonl/parquet/hub set), or a mix of sources
(skyexp.data.mix). Rows without a usable problem or answer are skipped and counted with their
row numbers; more than `data.max_bad_fraction` bad rows stop the run before any training.
Problems of the eval files in `data.decontam` are removed (skyexp.data.decontam) and reported.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass, field
from typing import Any

from skyexp.config import DataConfig, MixEntry
from skyexp.config.names import DATA_SOURCES, implements
from skyexp.data import arith
from skyexp.data.decontam import find_contaminated
from skyexp.data.lengths import fit_prompts, prompt_limit
from skyexp.data.mix import build_mix, labels_for
from skyexp.data.rows import DataError, clean_rows, get_path, read_jsonl, read_rows
from skyexp.data.sources import SOURCES, Request, load_source
from skyexp.data.templates import Template, apply_template, template_of
from skyexp.records import Problem, PromptBatch

__all__ = [
    "DataError",
    "TaskData",
    "PromptSampler",
    "Template",
    "apply_template",
    "clean_rows",
    "decontaminate",
    "fit_task",
    "load_task",
    "make_batch",
    "read_jsonl",
    "render_prompt",
    "template_of",
    "SOURCE_NAMES",
]

log = logging.getLogger(__name__)

SOURCE_NAMES = ["arith", *SOURCES, "mix"]
implements(SOURCE_NAMES, DATA_SOURCES, "skyexp.data.SOURCE_NAMES")


@dataclass
class TaskData:
    train: list[Problem]
    eval: list[Problem]  # the source's held-out split (may be empty)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (row number, reason)
    # counts: bad, filtered, duplicates, contaminated
    stats: dict[str, Any] = field(default_factory=dict)


def _request(cfg: DataConfig, entry: MixEntry | None = None, label: str = "") -> Request:
    e = entry or MixEntry(
        source=cfg.source, path=cfg.path, split=cfg.split, data_sources=cfg.data_sources
    )
    return Request(
        source=e.source,
        path=e.path,
        split=e.split,
        problem_key=e.problem_key or cfg.problem_key,
        answer_key=e.answer_key or cfg.answer_key,
        data_sources=tuple(e.data_sources),
        strip_system=cfg.strip_system,
        difficulty_key=cfg.difficulty_key,
        difficulty_range=tuple(cfg.difficulty_range),
        max_bad_fraction=cfg.max_bad_fraction,
        label=label,
    )


def _load_mix(cfg: DataConfig) -> TaskData:
    labels = labels_for([m.source for m in cfg.mix])
    loaded = [load_source(_request(cfg, m, lb)) for m, lb in zip(cfg.mix, labels)]
    problems, stats = build_mix(
        [(lb, ld.problems) for lb, ld in zip(labels, loaded)],
        [m.weight for m in cfg.mix],
        [m.count for m in cfg.mix],
        cfg.task_seed,
        cfg.dedup,
    )
    for st, ld in zip(stats, loaded):
        st.bad, st.filtered = len(ld.bad), ld.filtered
        log.info("data mix: %s", st.line())
    if not problems:
        raise DataError("data.mix: the mix is empty (every source gave 0 problems)")
    skipped = [(i, f"{lb}: {r}") for lb, ld in zip(labels, loaded) for i, r in ld.bad]
    dups = sum(st.dup_within + sum(st.dup_across.values()) for st in stats)
    return TaskData(
        problems,
        [],
        skipped,
        {
            "bad": len(skipped),
            "filtered": sum(ld.filtered for ld in loaded),
            "duplicates": dups,
            "sources": {st.label: st.taken for st in stats},
        },
    )


def decontaminate(
    problems: list[Problem],
    bench_paths: list[str],
    key: str = "problem",
    n: int = 10,
    threshold: float = 0.6,
) -> tuple[list[Problem], list[dict[str, Any]]]:
    """Drop the problems that match a benchmark problem; return (kept, one record per drop)."""
    report: list[dict[str, Any]] = []
    dropped: set[int] = set()
    for path in bench_paths:
        rows = read_rows(path)
        at = [i for i, r in enumerate(rows) if isinstance(get_path(r, key), str)]  # file positions
        bench_rows = [rows[i] for i in at]
        bench = [get_path(r, key) for r in bench_rows]
        for h in find_contaminated([p.problem for p in problems], bench, n, threshold):
            if h.train_index in dropped:
                continue
            dropped.add(h.train_index)
            p, b = problems[h.train_index], bench_rows[h.bench_index]
            report.append(
                {
                    "id": p.id,
                    "problem": p.problem,
                    "benchmark": path,
                    "benchmark_id": str(b.get("id", f"row {at[h.bench_index] + 1}")),
                    "benchmark_problem": bench[h.bench_index],
                    "match": h.match,
                    "overlap": round(h.overlap, 4),
                }
            )
    return [p for i, p in enumerate(problems) if i not in dropped], report


def load_task(cfg: DataConfig) -> TaskData:
    """The training problems (and the held-out split, where the source has one)."""
    if cfg.source == "arith":
        train, held_out = arith.load(
            cfg.levels, cfg.train_size, cfg.eval_size, cfg.task_seed, cfg.slip_rate
        )
        return TaskData(train, held_out)
    if cfg.source == "mix":
        task = _load_mix(cfg)
    else:
        ld = load_source(_request(cfg))
        task = TaskData(ld.problems, [], ld.bad, {"bad": len(ld.bad), "filtered": ld.filtered})
    if cfg.decontam:
        task.train, report = decontaminate(task.train, cfg.decontam)
        task.stats["contaminated"] = len(report)
        for r in report:
            log.warning(
                "decontam: dropped %s (%s match %.2f with %s in %s)",
                r["id"],
                r["match"],
                r["overlap"],
                r["benchmark_id"],
                r["benchmark"],
            )
        if not task.train:
            raise DataError("data.decontam: every training problem matched a benchmark")
    return task


class PromptSampler:
    """Deterministic shuffled epochs over the problems. Every step draws the next `batch_size`
    problems of the global order; rank r takes the r-th contiguous slice, so ranks see disjoint
    prompts and the union is the same for any world size. State (epoch, pos) makes it resumable
    at the exact position, also under another world size; the state carries a fingerprint of the
    problem list, so resuming onto different data fails instead of silently drawing other
    prompts."""

    def __init__(
        self,
        problems: list[Problem],
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ):
        self.problems, self.seed, self.rank, self.world, self.shuffle = (
            problems,
            seed,
            rank,
            world_size,
            shuffle,
        )
        self.epoch, self.pos = 0, 0
        self._order = self._make_order()
        self.fingerprint = hashlib.sha1("\x00".join(p.id for p in problems).encode()).hexdigest()[
            :16
        ]

    def _make_order(self) -> list[int]:
        order = list(range(len(self.problems)))
        if self.shuffle:
            random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        return order

    def next(self, batch_size: int) -> list[Problem]:
        picked: list[int] = []
        while len(picked) < batch_size:
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._make_order()
            take = min(batch_size - len(picked), len(self._order) - self.pos)
            picked += self._order[self.pos : self.pos + take]
            self.pos += take
        share = batch_size // self.world
        return [self.problems[i] for i in picked[self.rank * share : (self.rank + 1) * share]]

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed, "size": len(self.problems),
                "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, mine in (
            ("seed", self.seed),
            ("size", len(self.problems)),
            ("fingerprint", self.fingerprint),
        ):
            if key in state and state[key] != mine:
                raise DataError(
                    f"sampler state does not match this data ({key}: saved {state[key]!r}, now "
                    f"{mine!r}): "
                    "resume with the same data and seed"
                )
        self.epoch = state["epoch"]
        self._order = self._make_order()
        self.pos = state["pos"]


def render_prompt(p: Problem, tokenizer: Any, template: str | Template, chat: bool) -> str:
    """One problem's prompt text (a row's own system prompt applies when the template has none)."""
    return apply_template(p.problem, template, tokenizer, chat, p.meta.get("system", ""))


def fit_task(
    task: TaskData, tokenizer: Any, cfg: DataConfig, chat: bool, context: int | None
) -> TaskData:
    """The task without prompts longer than data.max_prompt_len tokens or the model's context
    (skyexp.data.lengths), as the rollout will see them; dropped prompts are counted in
    task.stats."""
    template = template_of(cfg)
    return fit_prompts(task, tokenizer, lambda p: render_prompt(p, tokenizer, template, chat),
                       prompt_limit(cfg.max_prompt_len, context))


def make_batch(
    problems: list[Problem], tokenizer: Any, template: str | Template, chat: bool
) -> PromptBatch:
    """This rank's prompts, rendered (a row's own system prompt applies when the template has
    none)."""
    prompts = [render_prompt(p, tokenizer, template, chat) for p in problems]
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    return PromptBatch(
        ids=[p.id for p in problems],
        prompts=prompts,
        prompt_ids=ids,
        answers=[p.answer for p in problems],
    )
