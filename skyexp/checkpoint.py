"""Saving what a run produces. Every write goes to a temporary directory that is renamed into
place only when complete, so a killed process never leaves a directory that looks finished.

Training checkpoints live in `<run dir>/checkpoints/step_<rl step>/`:

    model/          torch.distributed.checkpoint (DCP): the FSDP2-sharded policy and AdamW state,
                    one file per rank plus .metadata (loadable onto another number of ranks)
    rank_<r>.pt     what is private to rank r: every RNG (torch, python, numpy, CUDA, the rollout
                    engine's sampler)
    state.json      everything else, as written by skyexp.rl.resume: stage, step, data-sampler
                    position, prompts dropped at stage boundaries, entropy-controller state, LR
                    scheduler, W&B run id, the config
    DONE            written last, before the rename

All ranks write into `checkpoints/.tmp-step_<n>-*` (a shared file system when ranks span nodes);
rank 0 renames it to `step_<n>` once every rank has finished, then deletes all but the newest
`trainer.keep_last`. A directory is a checkpoint only under its final name with DONE inside.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from skyexp.config import ConfigError
from skyexp.distributed import Dist, barrier, broadcast_object

CKPT_DIR = "checkpoints"
PREFIX = "step_"


def export_hf(
    policy: torch.nn.Module, tokenizer, out_dir: Path, d: Dist, meta: dict | None = None
) -> None:
    """Write the (possibly FSDP-sharded) policy in Hugging Face format, loadable by
    AutoModelForCausalLM, vLLM and `python -m skyexp.eval`. All ranks call this; rank 0 writes."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(
        policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if d.is_main:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
        policy.save_pretrained(tmp, state_dict=state)
        tokenizer.save_pretrained(tmp)
        (tmp / "DONE").write_text(json.dumps(meta or {}))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    barrier()


def step_of(path: Path) -> int:
    return int(path.name[len(PREFIX):])


def is_complete(path: Path) -> bool:
    return (
        path.is_dir()
        and path.name.startswith(PREFIX)
        and path.name[len(PREFIX) :].isdigit()
        and (path / "DONE").exists()
    )


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """The run's complete checkpoints, oldest first."""
    return _complete_in(run_dir / CKPT_DIR)


def _complete_in(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if is_complete(p)), key=step_of)


def resolve_resume(resume: str, run_dir: Path) -> Path | None:
    """trainer.resume -> the checkpoint to start from. "" starts afresh; auto takes the newest
    complete checkpoint of the run dir (none yet: start afresh); anything else is a checkpoint
    dir."""
    if not resume:
        return None
    if resume == "auto":
        found = complete_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume).expanduser()
    if not is_complete(path):
        raise ConfigError(
            f"config key 'trainer.resume': {path} is not a complete checkpoint "
            f"(a {PREFIX}<n> directory with DONE inside); use trainer.resume=auto to take the "
            "newest one"
        )
    return path


def read_state(path: Path) -> dict[str, Any]:
    return json.loads((path / "state.json").read_text())


def save(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    rank_state: dict[str, Any],
    d: Dist,
    keep_last: int,
    ref: torch.nn.Module | None = None,
) -> Path:
    """Write a checkpoint to `path` (…/checkpoints/step_<n>) atomically. All ranks call this.
    `state` (JSON) is written by rank 0; `rank_state` (tensors and plain values) by every rank;
    `ref`, a reference model that is no longer the run's starting point (ProRL resets), under
    ref/."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if is_complete(path):  # this step is already saved (a stop right after a resume)
        return path
    tmp = None
    if d.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(".tmp-*"):  # left by a save that was killed
            shutil.rmtree(stale, ignore_errors=True)
        tmp = tempfile.mkdtemp(dir=path.parent, prefix=f".tmp-{path.name}-")
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the checkpoint from the rest of the team
    tmp = Path(broadcast_object(tmp))
    # An optimizer without state (no step taken yet) is left out: DCP would initialise it with a
    # zero-lr step, which changes Adam's step count and so every later update.
    with_optim = bool(optimizer.state)
    if with_optim:
        msd, osd = get_state_dict(model, optimizer)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp / "model"))
    else:
        dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=str(tmp / "model"))
    if ref is not None:
        dcp.save({"model": get_model_state_dict(ref)}, checkpoint_id=str(tmp / "ref"))
    torch.save(rank_state, tmp / f"rank_{d.rank}.pt")
    barrier()
    if d.is_main:
        _write_synced(
            tmp / "state.json", json.dumps({**state, "optimizer_saved": with_optim}, indent=1)
        )
        _write_synced(tmp / "DONE", str(d.world_size))
        commit(tmp, path)
        prune(path.parent, keep_last)
    barrier()
    return path


def commit(tmp: Path, path: Path) -> None:
    """The one step that makes a checkpoint exist: an atomic rename, then the directory synced."""
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def prune(root: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints (0 keeps all); return the
    deleted."""
    old = _complete_in(root)[:-keep_last] if keep_last > 0 else []
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return old


def load(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, d: Dist
) -> dict[str, Any]:
    """Load a checkpoint's model and optimizer state in place (resharded to this world size) and
    return this rank's private state ({} when the checkpoint had fewer ranks). All ranks call
    this."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    state = read_state(path)
    if state.get("optimizer_saved", True):
        msd, osd = get_state_dict(model, optimizer)
        both = {"model": msd, "optim": osd}
        dcp.load(both, checkpoint_id=str(path / "model"))
        set_state_dict(
            model, optimizer, model_state_dict=both["model"], optim_state_dict=both["optim"]
        )
    else:
        msd = {"model": get_model_state_dict(model)}
        dcp.load(msd, checkpoint_id=str(path / "model"))
        set_model_state_dict(model, msd["model"])
        optimizer.state.clear()
    mine = path / f"rank_{d.rank}.pt"
    return torch.load(mine, weights_only=True) if mine.exists() else {}


def load_ref(path: Path, ref: torch.nn.Module) -> None:
    """Load the reference model a checkpoint saved (save's `ref`) into `ref`, resharded. All
    ranks."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    msd = {"model": get_model_state_dict(ref)}
    dcp.load(msd, checkpoint_id=str(path / "ref"))
    set_model_state_dict(ref, msd["model"])


def size_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
