"""What both frameworks share in bench/rl_step.py: the composed skyexp config, the models (one
directory of weights loaded by both), the prompts, the reward, the FLOP count and the matmul peak.

The reward is a stand-in: an untrained model never writes a correct boxed answer, so a
correctness reward would be 0 everywhere, every GRPO advantage 0, and skyexp would skip the
whole update (it does not forward rows whose gradient is exactly zero) while TRL still runs it.
`ParityReward` gives 1 when the byte sum of the response is even: about half of the samples,
nearly every group mixed, so both frameworks train on every row, the work the comparison counts.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]

# Qwen2 shapes (byte-level tokenizer of 279 tokens, tied embeddings, 64-dim heads except tiny).
MODELS: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=224),  # 0.34M
    "small": dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=704),  # 3.3M
    "25m": dict(hidden_size=512, num_layers=8, num_heads=8, intermediate_size=1408),  # 25.9M
}


@dataclass(frozen=True)
class Work:
    """One RL step's work: `prompts` x `samples` responses of at most `max_new_tokens`."""

    model: str = "tiny"
    prompts: int = 16
    samples: int = 8
    max_new_tokens: int = 64
    lr: float = 1e-6
    seed: int = 0

    def label(self) -> str:
        return f"{self.model} {self.prompts}x{self.samples}x{self.max_new_tokens}"


def compose_config(work: Work, cache_dir: str, threads: int) -> Any:
    """The typed skyexp config of `work`, composed from conf/ as `python -m skyexp` composes it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from skyexp.cli import register_schema
    from skyexp.config import to_typed

    arch = MODELS[work.model]
    overrides = [
        "algo=grpo",
        "sft=none",
        "entropy=none",
        "temperature=t1_0",
        "rollout=hf",
        "logger=local",
        f"algo.batch_size={work.prompts}",
        f"algo.n={work.samples}",
        f"context.stages.0.max_response_len={work.max_new_tokens}",
        "context.stages.0.steps=1000",
        f"model.hidden_size={arch['hidden_size']}",
        f"model.num_layers={arch['num_layers']}",
        f"model.num_heads={arch['num_heads']}",
        f"model.intermediate_size={arch['intermediate_size']}",
        f"trainer.lr={work.lr}",
        f"trainer.seed={work.seed}",
        "trainer.device=cpu",
        f"trainer.threads={threads}",
        f"trainer.cache_dir={cache_dir}",
        "trainer.micro_batch_size=64",
        "trainer.fsdp=false",  # one process, as TRL: FSDP2 over a world of one only copies tensors
        "trainer.warmup_steps=0",
        "data.train_size=2000",
        "eval.before=false",
        "eval.after=false",
        "logger.progress=false",
    ]
    register_schema()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return to_typed(compose(config_name="train", overrides=overrides))


def prompt_schedule(cfg: Any, tokenizer: Any, steps: int) -> list[dict[str, str]]:
    """The prompts skyexp's sampler draws over `steps` steps, in order, as TRL dataset rows
    (TRL reads them unshuffled, so both frameworks see the same prompts at every step)."""
    from skyexp.data import PromptSampler, load_task, make_batch, template_of

    sampler = PromptSampler(load_task(cfg.data).train, cfg.trainer.seed, 0, 1, cfg.data.shuffle)
    rows = []
    for _ in range(steps):
        batch = make_batch(
            sampler.next(cfg.algo.batch_size),
            tokenizer,
            template_of(cfg.data),
            cfg.model.chat_template,
        )
        rows += [{"prompt": p, "answer": a} for p, a in zip(batch.prompts, batch.answers)]
    return rows


def parity(text: str) -> float:
    return float(sum(text.encode("utf-8", "replace")) % 2 == 0)


class ParityReward:
    """skyexp's reward protocol (score(texts, golds) -> Scored; close()) with the stand-in
    reward."""

    def score(self, texts: list[str], golds: list[str]):
        from skyexp.rewards import Scored

        return Scored([parity(t) for t in texts], [None] * len(texts), ["ok"] * len(texts))

    def close(self) -> None:
        pass


def trl_parity_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """The same reward in TRL's reward-function signature."""
    return [parity(c) for c in completions]


def matmul_params(model: torch.nn.Module) -> int:
    """N: weights that take part in a matrix product per token (every Linear, the tied LM head
    once). Embedding lookups and norms do no matrix work."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def step_flops(n_params: int, tokens: float) -> tuple[float, float]:
    """(generation FLOPs, update FLOPs) of a step whose sequences hold `tokens` real tokens
    (prompt + response): 2N per token to generate, 6N per token to train (forward + backward).
    Attention's own FLOPs (about 2% here) are left out, as in the issue's estimate."""
    return 2.0 * n_params * tokens, 6.0 * n_params * tokens


def matmul_peak(sizes: tuple[int, ...] = (1024, 2048, 3072), reps: int = 5) -> dict[str, float]:
    """GFLOP/s of large fp32 square matmuls at the current thread count; the best size counts."""
    out: dict[str, float] = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b  # warm-up
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        out[str(n)] = 2 * n**3 / min(times) / 1e9
    out["peak"] = max(out.values())
    return out


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def summarise(values: list[float]) -> dict[str, float]:
    """Median and spread of measured steps."""
    if not values:
        return {
            "median": float("nan"),
            "min": float("nan"),
            "max": float("nan"),
            "spread": float("nan"),
            "n": 0,
        }
    med = statistics.median(values)
    qs = (
        statistics.quantiles(values, n=4, method="inclusive")
        if len(values) > 1
        else [med, med, med]
    )
    return {
        "median": med,
        "min": min(values),
        "max": max(values),
        "p25": qs[0],
        "p75": qs[2],
        "spread": (max(values) - min(values)) / med if med else float("nan"),
        "n": len(values),
    }
