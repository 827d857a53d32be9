"""Rollout engines behind one protocol. `build_engine(name, ...)` builds one; nothing heavy is
imported until an engine is chosen (vLLM is an optional extra: `rollout=vllm`)."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from skyexp.records import Rollout
from skyexp.rollout.errors import MissingExtraError  # noqa: F401 (raised by engines, caught by skyexp.cli)


class Engine(Protocol):
    def generate(
        self, prompt_ids: list[list[int]], n: int, max_tokens: int, temperature: float, top_p: float = 1.0
    ) -> Rollout:
        """n samples per prompt; temperature 0 means greedy."""
        ...

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Load the policy's current weights (possibly FSDP-sharded) into the engine."""
        ...


def build_engine(name: str, **kwargs: Any) -> Engine:
    """hf: HFEngine(model=<loaded HF model>, eos_id, pad_id, seed, max_batch, device).
    vllm: VLLMEngine(model=<path, or a loaded HF model standing for its path>, the same, and
    settings=VLLMSettings(...) (RolloutConfig's vLLM keys, the model's dtype))."""
    if name == "hf":
        from skyexp.rollout.hf import HFEngine

        return HFEngine(**kwargs)
    if name == "vllm":
        from skyexp.rollout.vllm import VLLMEngine

        return VLLMEngine(**kwargs)
    raise KeyError(f"unknown rollout engine '{name}'; valid options: {', '.join(ENGINE_NAMES)}")


ENGINE_NAMES = ["hf", "vllm"]
VLLM_SETTINGS = ("tensor_parallel_size", "gpu_memory_utilization", "kv_cache_gb", "max_model_len", "enforce_eager", "sleep")


def engine_for(cfg: Any, model_path: str, tokenizer: Any, device: torch.device | str, seed: int) -> Engine:
    """The configured engine (cfg.rollout) on its own copy of the model at `model_path`: the one
    construction shared by training and the offline jobs (skyexp.filter, skyexp.distill)."""
    common = dict(eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, seed=seed,
                  max_batch=cfg.rollout.max_batch, device=device)
    if cfg.rollout.name == "vllm":
        from skyexp.rollout.vllm import VLLMSettings

        settings = VLLMSettings(dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code,
                                deterministic=cfg.trainer.deterministic, **{k: getattr(cfg.rollout, k) for k in VLLM_SETTINGS})
        return build_engine("vllm", model=model_path, settings=settings, **common)
    from skyexp.model.loading import load_model

    return build_engine(cfg.rollout.name, model=load_model(model_path, cfg.model, device), lean=cfg.rollout.lean, **common)
