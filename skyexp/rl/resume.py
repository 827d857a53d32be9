"""Saving and restoring an RL run exactly: a run resumed from a checkpoint continues as if it had
never stopped.

The checkpoint holds the policy and AdamW state (DCP, sharded), the LR scheduler, every RNG of
every rank, the prompt sampler's position and the prompts dropped at stage boundaries, the pass
counts of the current stage (for the next boundary's drop), the run's Counters (position, entropy
controller, faults, history: `asdict`), the logger step and the W&B run id; in asynchronous RL
also every batch generated but not yet trained and where generation stood
(skyexp.rl.async_loop). On CPU the resumed
run's metrics and parameters equal an uninterrupted run's bit for bit (tests/test_resume.py).
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skyexp import checkpoint
from skyexp.config import ConfigError
from skyexp.data import PromptSampler
from skyexp.data.difficulty import without
from skyexp.rl.async_loop import resume_generation
from skyexp.rl.boundaries import dropped_ids, merged_counts
from skyexp.rl.state import Counters, Run
from skyexp.rollout import Engine

log = logging.getLogger("skyexp")

STATE_VERSION = 3  # 3: the loop's counters under "counters", as asdict(Counters)


@dataclass(frozen=True)
class SavedEval:
    """pass@k of an evaluation that ran before the resume (all that summary and plots need of
    it)."""

    pass_at: dict[int, float]


def rng_state(engine: Engine) -> dict[str, Any]:
    np_name, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_gauss, np_cached],
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    # the rollout engine's sampling generator, when it has one
    gen = getattr(engine, "generator", None)
    if gen is not None:
        out["engine"] = gen.get_state()
    return out


def set_rng_state(engine: Engine, s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    name, keys, pos, gauss, cached = s["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, gauss, cached))
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    gen = getattr(engine, "generator", None)
    if gen is not None and "engine" in s:
        gen.set_state(s["engine"])


def save(run: Run, reason: str) -> Path:
    """Checkpoint the run after its last completed step. All ranks call this."""
    cfg, d = run.cfg, run.d
    path = run.run_dir / checkpoint.CKPT_DIR / f"{checkpoint.PREFIX}{run.counters.rl_step:08d}"
    state = {
        "version": STATE_VERSION,
        "reason": reason,
        "counters": asdict(run.counters),
        "world_size": d.world_size,
        "sampler": run.live.sampler.state_dict(),
        "dropped": dropped_ids(run),
        "solved": merged_counts(run),
        "scheduler": run.sched.state_dict(),
        "wandb_id": run.logger.run_id,
        "config": asdict(cfg),
    }
    private = rng_state(run.engine)
    if run.live.pipe is not None:  # generation's position and the batches in flight
        shared, mine = run.live.pipe.saved(run)
        state.update(shared)
        private.update(mine)
    t = time.perf_counter()
    # a reset reference is not rebuilt from the start
    ref = run.live.ref if run.counters.ref_reset_step > 0 else None
    checkpoint.save(path, run.policy, run.opt, state, private, d, cfg.trainer.keep_last, ref)
    log.info(
        "checkpoint %s after RL step %d (%s): %.1f MB in %.2fs",
        path.name,
        run.counters.rl_step - 1,
        reason,
        checkpoint.size_bytes(path) / 2**20,
        time.perf_counter() - t,
    )
    return path


def restore(run: Run, path: Path) -> dict[str, Any]:
    """Load a checkpoint into the run (all ranks). The RNGs are restored last: call this after
    every other set-up step, right before the RL loop."""
    cfg, d, t = run.cfg, run.d, time.perf_counter()
    state = checkpoint.read_state(path)
    if state.get("version", 1) != STATE_VERSION:
        raise ConfigError(
            f"config key 'trainer.resume': {path} was written by another skyexp "
            f"(checkpoint state version {state.get('version', 1)}, this one reads "
            f"{STATE_VERSION}); resume it "
            "with that version or start afresh"
        )
    warn_config_changes(state["config"], asdict(cfg))
    private = checkpoint.load(path, run.policy, run.opt, d)
    run.sched.load_state_dict(state["scheduler"])
    run.counters.load(Counters.of(state["counters"]))
    # the reference of a ProRL reset: the policy at that step, saved with the run
    if run.counters.ref_reset_step > 0:
        checkpoint.load_ref(path, run.live.ref)
    # merged at the boundary
    run.live.solved = {k: tuple(v) for k, v in state["solved"].items()} if d.is_main else {}
    # the sampler in use: over the prompts not dropped so far, with its own seed; its state's
    # fingerprint of the problem list makes a wrong reconstruction fail loudly
    kept, _ = without(run.problems, set(state["dropped"]))
    run.live.sampler = PromptSampler(
        kept, state["sampler"]["seed"], d.dp_rank, d.dp_size, cfg.data.shuffle
    )
    run.live.sampler.load_state_dict(state["sampler"])
    if run.engine is not None:
        run.engine.sync_weights(run.policy)
    if private:
        set_rng_state(run.engine, private)
    # asynchronous RL: the batches in flight, or generation rewound to the last trained batch
    resumed = resume_generation(run, state, private, run.live.pipe)
    if run.live.pipe is not None:
        run.live.pipe.restore(run, resumed)
    if state["world_size"] != d.world_size:
        log.warning(
            "resuming %d-rank checkpoint on %d ranks: model and optimizer are resharded, but "
            "ranks without a "
            "saved RNG state start fresh ones, so rollouts differ from an uninterrupted run",
            state["world_size"],
            d.world_size,
        )
    c = run.counters
    log.info(
        "resumed from %s: RL step %d (stage %d, step %d of it) in %.2fs",
        path,
        c.rl_step,
        c.stage,
        c.step_in_stage,
        time.perf_counter() - t,
    )
    return state


IGNORED_CHANGES = ("trainer.resume", "logger.")


def warn_config_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Name the config values that differ from the checkpoint's (the run goes on with the new
    ones)."""
    a, b = _flat(saved), _flat(now)
    changed = [
        k
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k) and not k.startswith(IGNORED_CHANGES)
    ]
    if changed:
        log.warning("resuming with a changed config (continuing with the new values): %s",
                    "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed))
    return changed


def _flat(x: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(x, dict):
        out: dict[str, Any] = {}
        for k, v in x.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(x, sort_keys=True) if isinstance(x, list) else x}


def rewind_logs(run_dir: Path, global_step: int) -> int:
    """Rewind metrics.jsonl and every tables/*.jsonl (sample completions) of a run directory to its
    checkpoint (see rewind_metrics). Returns how many rows were dropped in all."""
    files = [run_dir / "metrics.jsonl", *sorted((run_dir / "tables").glob("*.jsonl"))]
    return sum(rewind_metrics(f, global_step) for f in files)


def rewind_metrics(path: Path, global_step: int) -> int:
    """Drop the rows a killed run logged after its checkpoint from a JSONL log (they are logged
    again by the resumed run). Returns how many were dropped."""
    if not path.exists():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    keep = [ln for ln in lines if ln.strip() and _row_step(ln) < global_step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(keep))
    tmp.replace(path)
    return len(lines) - len(keep)


def _row_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):  # a torn last line from the kill
        return float("inf")
