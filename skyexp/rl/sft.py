"""The SFT stage: token-mean NLL on response tokens only, warm-up then cosine LR.

Its result is an ordinary Hugging Face checkpoint in the cache, keyed by a hash of everything
that determines it (model, SFT settings, data or the SFT file's content, prompt template, seed):
a rerun with the same config loads it and skips the stage. Real pipelines (Sky-T1's
SFT -> RL -> SFT -> RL) use the same stage on SFT sets: hub conversation sets
(NovaSky-AI/Sky-T1-7B-step1-sft-5k), local files, or the output of `python -m skyexp.distill`
(skyexp.data.sft_data describes the formats).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from skyexp.checkpoint import export_hf
from skyexp.config import Config
from skyexp.data import DataError, PromptSampler, apply_template, template_of
from skyexp.data.rows import collect, read_rows
from skyexp.data.sft_data import parse_conversation, parse_pair
from skyexp.data.templates import render_messages
from skyexp.distributed import Dist
from skyexp.model.layout import ForwardSettings, pack
from skyexp.model.start import cache_dir, cached, start_path  # noqa: F401 (the SFT result's cache key)
from skyexp.records import Problem
from skyexp.rl.update import UpdateSettings, sft_step

log = logging.getLogger("skyexp")


def sft_examples(cfg: Config, train: list[Problem], tokenizer) -> list[tuple[str, str]]:
    """(prompt text, response) pairs: the data source's worked solutions, or an SFT set."""
    s, chat, tmpl = cfg.sft, cfg.model.chat_template, template_of(cfg.data)
    if s.source == "data":
        pairs = [
            (apply_template(p.problem, tmpl, tokenizer, chat, p.meta.get("system", "")), p.solution)
            for p in train
            if p.solution
        ]
        if not pairs:
            raise DataError(
                f"sft.source=data: data source '{cfg.data.source}' has no worked solutions; use "
                "an SFT set (sft.source=jsonl)"
            )
        return pairs
    if s.source in ("jsonl", "parquet") and not Path(s.path).is_file():
        raise DataError(f"sft.path: file not found: {s.path}")
    rows = read_rows(s.path, s.split)
    if s.format == "conversation":
        convs, _ = collect(
            rows,
            lambda row, i: parse_conversation(row, s.messages_key, s.system_key),
            s.path,
            cfg.data.max_bad_fraction,
        )
        return [(render_messages(msgs, tokenizer, chat), response) for msgs, response in convs]
    pairs, _ = collect(
        rows,
        lambda row, i: parse_pair(row, s.prompt_key, s.response_key),
        s.path,
        cfg.data.max_bad_fraction,
    )
    return [(apply_template(q, tmpl, tokenizer, chat), r) for q, r in pairs]


def lr_lambda(step: int, warmup: int, total: int, floor: float) -> float:
    """Linear warm-up to 1, then cosine from 1 down to `floor` (= lr_min / lr)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def line_every(every: int, steps: int) -> int:
    """logger.line_every_sft resolved: -1 gives about 20 lines per SFT stage; 0: none."""
    return max(1, steps // 20) if every < 0 else every


class SftLines:
    """Off a terminal the SFT stage's progress as log lines in the RL step lines' form
    (skyexp.tracking.step_line): `sft step:24 - progress:25/500 - sft/loss:0.4123 - sft/lr:0.002 -
    sft/grad_norm:0.8312 - perf/tokens_per_s:10234 - eta_s:118`. A line at the first step, every
    `every` steps and at the last; tokens/s over the steps since the previous line (prompt and
    response tokens, this rank), ETA from the stage's mean step time so far."""

    def __init__(self, steps: int, every: int):
        self.steps, self.every = steps, every
        self.start = self.last = time.perf_counter()
        self.tokens = 0

    def after(self, step: int, values: dict[str, float], tokens: int) -> None:
        self.tokens += tokens
        if not self.every or not (step % self.every == 0 or step == self.steps - 1):
            return
        now = time.perf_counter()
        rate = self.tokens / max(now - self.last, 1e-9)
        eta = (now - self.start) / (step + 1) * (self.steps - step - 1)
        parts = [f"sft step:{step}", f"progress:{step + 1}/{self.steps}"]
        parts += [f"{k}:{v:.4g}" for k, v in values.items()] + [
            f"perf/tokens_per_s:{rate:.0f}",
            f"eta_s:{eta:.0f}",
        ]
        log.info(" - ".join(parts))
        self.last, self.tokens = now, 0


def run_sft(
    cfg: Config,
    d: Dist,
    policy: torch.nn.Module,
    tokenizer,
    train: list[Problem],
    out_dir: Path,
    log_step,
    progress: bool,
) -> dict[str, float]:
    """Train `policy` in place for cfg.sft.steps steps; write the result to out_dir (rank 0)."""
    s = cfg.sft
    examples = sft_examples(cfg, train, tokenizer)
    log.info("sft: %d examples from %s", len(examples), s.path or f"data ({cfg.data.name})")
    problems = [Problem(id=str(i), problem=p, answer=r) for i, (p, r) in enumerate(examples)]
    sampler = PromptSampler(problems, cfg.trainer.seed + 17, d.dp_rank, d.dp_size)
    opt = torch.optim.AdamW(
        policy.parameters(), lr=s.lr, weight_decay=s.weight_decay, betas=tuple(cfg.trainer.betas)
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: lr_lambda(k, s.warmup_steps, s.steps, s.lr_min / s.lr)
    )
    policy.train()
    eos = tokenizer.eos_token_id
    bar = tqdm(range(s.steps), desc="sft", disable=not progress, dynamic_ncols=True)
    loss = 0.0
    # rows per micro-batch only: SFT keeps the head's default chunking and no token budget
    settings = UpdateSettings(
        ForwardSettings(cfg.trainer.micro_batch_size, d.device), cfg.trainer.grad_clip, d.world_size
    )
    lines = SftLines(
        s.steps, 0 if progress or not d.is_main else line_every(cfg.logger.line_every_sft, s.steps)
    )
    for step in bar:
        batch = sampler.next(s.batch_size)
        # rendered already
        prompts = tokenizer([p.problem for p in batch], add_special_tokens=False)["input_ids"]
        responses = [
            r[: s.max_len - 1] + [eos]
            for r in tokenizer([p.answer for p in batch], add_special_tokens=False)["input_ids"]
        ]
        packed = pack(prompts, responses, tokenizer.pad_token_id)
        lr = sched.get_last_lr()[0]  # the rate this step trains with
        loss, gnorm = sft_step(policy, opt, packed, settings)
        sched.step()
        log_step({"sft/step": step, "sft/loss": loss, "sft/grad_norm": gnorm,
                  "sft/lr": sched.get_last_lr()[0]})
        lines.after(
            step, {"sft/loss": loss, "sft/lr": lr, "sft/grad_norm": gnorm}, int(packed[1].sum())
        )
        bar.set_postfix(loss=f"{loss:.3f}")
    export_hf(policy, tokenizer, out_dir, d)
    return {"sft/final_loss": loss}
