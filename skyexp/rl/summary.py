"""What a run reports in summary.json, as typed records: `Summary` (the run's identity and data,
the SFT result, each phase's time, the RL outcome and pass@k before and after RL), and `PreRL`,
what of it a checkpoint keeps for a resumed run (the summary as it stood after the evaluation
before RL, that evaluation's pass@k, and the `Clock` across processes). summary.json's keys are
`Summary.to_json`'s (the README lists the main ones)."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class Summary:
    """summary.json as the phases fill it in (None: not reached, or not applicable)."""

    world_size: int
    params: int
    rollout: str
    git_commit: str
    data: dict[str, Any]  # problems; rows skipped, duplicates, ... (the data loader's counts)
    reward_random: bool  # a random-reward control: never to be read as a real result
    times: dict[str, float] = field(default_factory=dict)  # phase -> seconds (time_s/<phase>)
    sft: dict[str, Any] = field(default_factory=dict)  # the SFT stage's sft/* entries
    sft_cached: bool | None = None
    sft_dir: str | None = None
    resumed_from: str | None = None  # the checkpoint this process continued from
    wall_s: float | None = None  # over every process of the run
    rl_steps: int | None = None
    # mean entropy and reward of the first and last few RL steps
    ends: dict[str, float] = field(default_factory=dict)
    pass_at: dict[str, dict[int, float]] = field(
        default_factory=dict
    )  # before / after -> {k: pass@k}
    skipped_steps: int | None = None
    resumed_at: list[int] | None = None  # the RL step of each resume

    def to_json(self) -> dict[str, Any]:
        """summary.json: flat keys (time_s/<phase>, sft/*, pass@<k>_<before|after>), those not
        reached left out."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "times":
                out.update({f"time_s/{k}": v for k, v in value.items()})
            elif f.name in ("sft", "ends"):
                out.update(value)
            elif f.name == "pass_at":
                out.update(
                    {f"pass@{k}_{label}": v for label, ks in value.items() for k, v in ks.items()}
                )
            elif value is not None:
                out[f.name] = value
        return out

    def resume(self, saved: Summary, world_size: int, checkpoint: Path) -> None:
        """Continue the summary the checkpoint kept (in place: a phase timer holds this object),
        on this process's ranks."""
        for f in fields(self):
            setattr(self, f.name, copy.deepcopy(getattr(saved, f.name)))
        self.world_size, self.resumed_from = world_size, str(checkpoint)

    @staticmethod
    def of(saved: dict[str, Any]) -> Summary:
        """A checkpoint's asdict form (JSON: pass@k's k came back as strings)."""
        pass_at = {
            label: {int(k): v for k, v in ks.items()} for label, ks in saved["pass_at"].items()
        }
        return Summary(**{**saved, "pass_at": pass_at})


@dataclass
class Clock:
    """The run's time across processes: this process's start and RL start, and what the processes
    before it spent up to the checkpoint it resumed from."""

    t0: float
    rl_t0: float
    wall_before_s: float = 0.0
    rl_before_s: float = 0.0
    resumed_at: list[int] = field(default_factory=list)  # the RL step of each resume

    @staticmethod
    def start(old: Clock | None, resume: Path | None, rl_step: int, t0: float) -> Clock:
        """This process's clock; resuming, the time before it runs to the checkpoint's DONE file."""
        ck = Clock(t0, time.time())
        if resume and old:
            saved = (resume / "DONE").stat().st_mtime
            ck.wall_before_s = old.wall_before_s + saved - old.t0
            ck.rl_before_s = old.rl_before_s + saved - old.rl_t0
            ck.resumed_at = [*old.resumed_at, rl_step]
        return ck


@dataclass
class PreRL:
    """What a checkpoint keeps of the phases before RL (saved with the counters)."""

    summary: Summary | None = None  # as it stood after the evaluation before RL
    before_pass_at: dict[int, float] | None = None  # that evaluation's pass@k (None: not run)
    clock: Clock | None = None

    @staticmethod
    def of(saved: dict[str, Any]) -> PreRL:
        """A checkpoint's asdict form."""
        before = saved.get("before_pass_at")
        return PreRL(
            Summary.of(saved["summary"]) if saved.get("summary") else None,
            {int(k): v for k, v in before.items()} if before else None,
            Clock(**saved["clock"]) if saved.get("clock") else None,
        )
