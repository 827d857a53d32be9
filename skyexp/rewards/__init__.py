"""Rewards: math-verify correctness of the final boxed answer, scored safely.

Model text is untrusted: extraction is linear-time string work in this process, and symbolic
checks run in a spawned process pool with per-item timeouts and a memory cap
(skyexp.rewards.pool). A hang, a crash or an error scores 0 and is counted, never stalls a step.
`score` returns correctness (1/0), which evaluation uses as is; the RL reward composes weighted
terms on top of it (skyexp.rewards.terms, `reward.terms`).
"""

from __future__ import annotations

from dataclasses import dataclass

from skyexp.config import RewardConfig
from skyexp.rewards.extract import fast_verdict, last_boxed


@dataclass(frozen=True)
class Scored:
    scores: list[float]  # [N] 1.0 correct, 0.0 otherwise
    extracted: list[str | None]  # [N] last \boxed{} content
    status: list[str]  # [N] ok | timeout | error

    @property
    def timeouts(self) -> int:
        return self.status.count("timeout")

    @property
    def errors(self) -> int:
        return self.status.count("error")


class MathVerifyReward:
    """score(texts, golds): 1.0 when the last \\boxed{} of the text is math-verify-equivalent to the
    gold."""

    def __init__(self, cfg: RewardConfig):
        from skyexp.rewards.pool import ScoringPool

        self.cfg = cfg
        self.pool = ScoringPool(cfg.workers, cfg.timeout_s, cfg.memory_mb)

    def score(self, texts: list[str], golds: list[str]) -> Scored:
        if len(texts) != len(golds):
            raise ValueError(f"score: {len(texts)} texts but {len(golds)} answers")
        extracted = [last_boxed(t) for t in texts]
        scores = [0.0] * len(texts)
        status = ["ok"] * len(texts)
        slow: list[int] = []
        for i, (pred, gold) in enumerate(zip(extracted, golds)):
            if pred is None:
                continue
            if len(pred) > self.cfg.max_answer_chars:
                status[i] = "error"
                continue
            verdict = fast_verdict(pred, gold)
            if verdict is None:
                slow.append(i)
            else:
                scores[i] = verdict
        for i, (score, st) in zip(slow, self.pool.verify([(extracted[i], golds[i]) for i in slow])):
            scores[i], status[i] = score, st
        return Scored(scores, extracted, status)

    def close(self) -> None:
        self.pool.close()


def build_reward(cfg: RewardConfig) -> MathVerifyReward:
    """The correctness scorer. Every reward preset verifies with math-verify; presets differ in
    terms."""
    return MathVerifyReward(cfg)
