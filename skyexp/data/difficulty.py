"""Pass-rate bookkeeping for difficulty filtering (pure functions).

Offline (DeepScaleR, Skywork-OR1 data preparation): sample n responses per prompt with the
current model, keep the prompts it solves sometimes, 0 < pass rate < 1 — a prompt it never or
always solves gives every sample the same reward, hence zero advantage under RLOO/GRPO.

Between stages (Skywork-OR1 §3, online filtering, arXiv 2505.22312): drop the prompts the policy
solved in every sample it drew for them during the previous stage. `tally` and `merge` count
(correct, samples) per prompt id as rollouts are scored; `fully_solved` and `without` apply the
rule at a stage boundary. Wiring it into the context schedule is the stage runner's job.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from skyexp.records import Problem

Counts = dict[str, tuple[int, int]]  # problem id -> (correct samples, samples)


def tally(ids: Sequence[str], rewards: Iterable[Sequence[float]]) -> Counts:
    """Counts from one batch: ids [B], rewards [B][n] (1.0 = correct)."""
    out: Counts = {}
    for pid, row in zip(ids, rewards):
        row = list(row)
        c, t = out.get(pid, (0, 0))
        out[pid] = (c + sum(1 for r in row if r > 0.5), t + len(row))
    return out


def merge(a: Mapping[str, tuple[int, int]], b: Mapping[str, tuple[int, int]]) -> Counts:
    out = dict(a)
    for pid, (c, t) in b.items():
        c0, t0 = out.get(pid, (0, 0))
        out[pid] = (c0 + c, t0 + t)
    return out


def pass_rate(correct: int, samples: int) -> float:
    if samples <= 0:
        raise ValueError(f"pass_rate: no samples (correct={correct})")
    return correct / samples


def in_band(rate: float, drop_all_wrong: bool = True, drop_all_right: bool = True) -> bool:
    """Whether a prompt with this pass rate stays: the all-wrong and all-right ends are dropped."""
    return not ((drop_all_wrong and rate <= 0.0) or (drop_all_right and rate >= 1.0))


def fully_solved(counts: Mapping[str, tuple[int, int]]) -> set[str]:
    """Ids whose every sample was correct (and that were sampled at all)."""
    return {pid for pid, (c, t) in counts.items() if t > 0 and c == t}


def without(problems: list[Problem], ids: set[str]) -> tuple[list[Problem], int]:
    """The problems not in `ids`, and how many were dropped."""
    kept = [p for p in problems if p.id not in ids]
    return kept, len(problems) - len(kept)
