"""Reward terms, composed with weights (`reward.terms`): total = sum_k w_k * term_k.

Each term maps a ScoreInput (texts, correctness, lengths, truncation, the length cap) and the
reward config to a value per sample, float32 [N]. Correctness comes from math-verify
(skyexp.rewards.MathVerifyReward); everything here is linear-time work on untrusted text. Terms
are logged unweighted as `reward/<term>/mean`; the weighted total is `critic/score/mean`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from skyexp.config import RewardConfig, names
from skyexp.config.names import implements
from skyexp.rewards.extract import last_boxed

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class ScoreInput:
    texts: list[str]  # [N] decoded responses
    correct: torch.Tensor  # [N] float 1/0 from math-verify
    lengths: torch.Tensor  # [N] response tokens (EOS included)
    truncated: torch.Tensor  # [N] bool, hit the cap before EOS
    max_len: int  # the stage's response-length cap
    # where the batch sits in the run, for terms that draw (the `random` term): trainer.seed, the
    # RL step, and a stream number that tells apart the batches of one step (rank, generation round)
    seed: int = 0
    step: int = 0
    stream: int = 0


def accuracy(x: ScoreInput, c: RewardConfig) -> torch.Tensor:
    """`reward.correct` for a verified answer, `reward.wrong` otherwise: 1/0 by default, +-1 as in
    DAPO (arXiv 2503.14476)."""
    return torch.where(x.correct > 0, c.correct, c.wrong).float()


def follows_template(text: str, think: bool) -> bool:
    """The response ends in a final \\boxed{} answer and, with think=True, opens with exactly one
    <think>...</think> block that the answer follows (DeepSeek-R1's template, arXiv 2501.12948).
    Plain substring counts and one brace scan: linear in the text, no regex backtracking."""
    stripped = text.lstrip()
    if think:
        if (
            not stripped.startswith(THINK_OPEN)
            or stripped.count(THINK_OPEN) != 1
            or stripped.count(THINK_CLOSE) != 1
        ):
            return False
        stripped = stripped[stripped.index(THINK_CLOSE) + len(THINK_CLOSE):]
    return last_boxed(stripped) is not None


def format_term(x: ScoreInput, c: RewardConfig) -> torch.Tensor:
    """1 when the response follows the template (`reward.format_think` asks for the think block),
    else 0."""
    return torch.tensor([float(follows_template(t, c.format_think)) for t in x.texts])


def overlong(x: ScoreInput, c: RewardConfig) -> torch.Tensor:
    """DAPO soft overlong punishment (arXiv 2503.14476, eq. 13), with L_max the stage cap and
    L_cache = overlong_buffer * L_max (DAPO: 4096 of 20480, i.e. 0.2):
        0                                  if |y| <= L_max - L_cache
        ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
    scaled by overlong_penalty (DAPO: 1.0), so a response at the cap gets -overlong_penalty."""
    cache = max(c.overlong_buffer * x.max_len, 1e-9)
    start = x.max_len - cache
    pen = ((start - x.lengths.float()) / cache).clamp(max=0.0, min=-1.0)
    return pen * c.overlong_penalty


def cosine(x: ScoreInput, c: RewardConfig) -> torch.Tensor:
    """Cosine length-scaled reward (Yeo et al., "Demystifying long CoT", arXiv 2502.03373):
        R = r_L + (r_0 - r_L) * (1 + cos(pi * L / L_max)) / 2
    with (r_0, r_L) = reward.cos_correct (2, 1) for a correct answer and reward.cos_wrong (-10, 0)
    for a wrong one, so short correct answers earn most and wrong answers are penalised less the
    longer the model thought; a truncated response gets reward.cos_exceed (-10). It already
    encodes correctness: use it instead of the accuracy term (weight accuracy 0)."""
    t = (x.lengths.float() / max(x.max_len, 1)).clamp(0, 1)
    r0 = torch.where(x.correct > 0, c.cos_correct[0], c.cos_wrong[0])
    rl = torch.where(x.correct > 0, c.cos_correct[1], c.cos_wrong[1])
    r = rl + (r0 - rl) * 0.5 * (1 + torch.cos(math.pi * t))
    return torch.where(x.truncated, torch.tensor(c.cos_exceed, dtype=r.dtype), r).float()


_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    """SplitMix64's finaliser (Steele et al., 2014): a 64-bit integer hash with full avalanche."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def uniform_key(*keys: int) -> float:
    """A uniform draw in [0, 1) that is a pure function of the integer keys (counter-based: no
    generator state, so it does not depend on the batch size, the order of scoring or any RNG the
    run consumes elsewhere)."""
    h = 0
    for k in keys:
        h = _splitmix64(h ^ (k & _MASK64))
    return (h >> 11) / float(1 << 53)


def random_term(x: ScoreInput, c: RewardConfig) -> torch.Tensor:
    """The random-reward control (Park et al., arXiv 2509.26114): each sample's verdict is
    Bernoulli(`reward.random_p`), independent of the response and of its correctness:
        z_i = 1[u(seed, step, stream, i) < p],   term_i = reward.correct if z_i else reward.wrong
    with u a counter-based uniform (`uniform_key`) of trainer.seed, the RL step, the batch's
    stream (rank and generation round) and the sample's index in the batch, so a rerun with the
    same seed draws the same rewards and a resumed run continues where it stopped. With only this
    term the advantage carries no information about the answers, so any entropy movement comes
    from the clip (the paper's finding: clip-low raises entropy, clip-high lowers it).
    Departures: the paper's reward is a plain 0/1 coin (their p = 0.5 is read from the abstract's
    setting, not checked against its tables); here the two outcomes take reward.correct /
    reward.wrong, so `reward=random reward.wrong=-1` is the +-1 form. A run with a nonzero weight
    on this term is marked in its W&B name and in summary.json (`reward_random: true`)."""
    draws = [uniform_key(x.seed, x.step, x.stream, i) < c.random_p for i in range(len(x.texts))]
    z = torch.tensor(draws, dtype=torch.bool)
    return torch.where(z, c.correct, c.wrong).float()


REWARD_TERMS: dict[str, Callable[[ScoreInput, RewardConfig], torch.Tensor]] = {
    "accuracy": accuracy,
    "format": format_term,
    "overlong": overlong,
    "cosine": cosine,
    "random": random_term,
}
implements(REWARD_TERMS, names.REWARD_TERMS, "skyexp.rewards.terms.REWARD_TERMS")


def combine(x: ScoreInput, c: RewardConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(total [N], {term: unweighted value [N]}) over the terms with a nonzero weight."""
    parts = {name: REWARD_TERMS[name](x, c) for name, w in c.terms.items() if w != 0}
    total = torch.zeros(len(x.texts))
    for name, v in parts.items():
        total = total + c.terms[name] * v
    return total, parts
