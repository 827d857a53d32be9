"""Projected per-GPU peak of one RL update on 8 x 80 GB with trainer.sp_size in {1, 2, 4} and
trainer.offload in {none, optimizer, params}: a model, not a measurement (bench/README.md,
"Sequence parallelism and offload").

    python bench/sp_projection.py [bench/results/memory-cpu-sp2.json]

Per GPU, for one micro-batch of one sequence (prompt 1k + response), FSDP2 over 8 ranks:

    peak = states + fixed + per_token * tokens * f(s)

- states: fp32 parameters + gradients + AdamW moments, 16 B/param / 8 (bench/README.md, Memory
  model). offload=optimizer: the moments (8 of the 16 B) wait on the CPU during forward and
  backward and come back for the step, so the peak is max(states / 2 + activations, states);
  offload=params: FSDP2's CPUOffloadPolicy keeps parameters, gradients and moments on the CPU:
  0 on the device (the gathered bf16 layers are in `fixed`).
- fixed, per_token: fitted to the sp=1 projections of bench/README.md (7B: 25 / 29 / 35 GB at
  8k / 16k / 32k with checkpointing, 73 / 118 / 208 without; 32B: 84 / 91 / 107 and 244 / 394).
- f(s) = share of the per-token activations one rank holds at sp_size = s: 1/s in the Ulysses
  model (every activation is sequence-sharded except inside attention, where it is
  head-sharded: the same bytes), times the measured CPU excess e = (sp2 slope) / (sp1 slope / 2)
  from bench/memory.py --sp 2 (the slope of the per-rank peak above baseline over length), taken
  to hold for s = 4 too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

GB_PER_MB = 1 / 1024
MODELS = {  # name: (states GB/GPU, {ckpt: (fixed GB, per-token MB)}, responses)
    "Qwen2.5-7B": (15.2, {True: (7.4, 0.375), False: (7.4, 5.6)}, (32768, 65536)),
    "Qwen2.5-32B": (65.6, {True: (8.4, 1.0), False: (9.65, 18.75)}, (16384, 32768)),
}
PROMPT = 1024
GPU_GB = 80


def excess(path: Path | None) -> float:
    """e from the sp benchmark: 1.0 when no measurement is given."""
    if path is None or not path.exists():
        return 1.0
    rows = json.loads(path.read_text())["rows"]
    pts = {p: sorted((r["length"], r["above_gb"]) for r in rows
                     if r["path"] == p and "above_gb" in r) for p in ("sp1", "sp2")}
    slope = {p: (v[-1][1] - v[0][1]) / (v[-1][0] - v[0][0]) for p, v in pts.items()}
    return slope["sp2"] / (slope["sp1"] / 2)


def peak(states: float, fixed: float, per_token: float, tokens: int, s: int, e: float,
         offload: str) -> float:
    act = fixed + per_token * GB_PER_MB * tokens * (e / s if s > 1 else 1.0)
    if offload == "params":
        return act
    if offload == "optimizer":
        return max(states / 2 + act, states)
    return states + act


def table(e: float) -> str:
    lines = ["| model | response | sp | ckpt: none | ckpt: optimizer | ckpt: params "
             "| no ckpt: none | no ckpt: params |", "|---|---|---|---|---|---|---|---|"]
    for name, (states, fits, responses) in MODELS.items():
        for resp in responses:
            for s in (1, 2, 4):
                cells = []
                for ckpt, offloads in ((True, ("none", "optimizer", "params")),
                                       (False, ("none", "params"))):
                    fixed, per_token = fits[ckpt]
                    for off in offloads:
                        gb = peak(states, fixed, per_token, PROMPT + resp, s, e, off)
                        cells.append(f"{gb:.0f}" + ("" if gb <= GPU_GB * 0.9 else
                                                    " (tight)" if gb <= GPU_GB else " (no)"))
                lines.append(f"| {name} | {resp // 1024}k | {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else (
        Path(__file__).parent / "results" / "memory-cpu-sp2.json")
    e = excess(src)
    print(f"measured CPU excess e = {e:.2f} (1.00: exactly 1/s of the per-token activations)")
    print(table(e))
