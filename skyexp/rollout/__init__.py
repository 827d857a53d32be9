"""Rollout engines behind one protocol, registered in ENGINES by `rollout.name`.
`build_engine(name, ...)` builds one from its keyword arguments, `engine_for(cfg, ...)` from a run's
config; nothing heavy is imported until an engine is chosen (vLLM is an optional extra:
`rollout=vllm`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, Protocol

import torch

from skyexp.config.names import ROLLOUT_ENGINES, implements
from skyexp.records import Rollout
from skyexp.rollout.errors import MissingExtraError  # noqa: F401 (raised by engines, caught by skyexp.cli)


class Engine(Protocol):
    def generate(
        self,
        prompt_ids: list[list[int]],
        n: int,
        max_tokens: int,
        temperature: float,
        top_p: float = 1.0,
    ) -> Rollout:
        """n samples per prompt; temperature 0 means greedy."""
        ...

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Load the policy's current weights (possibly FSDP-sharded) into the engine."""
        ...

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load (name, full tensor) pairs as they come (from another rank: skyexp.rl.placement)."""
        ...


@contextmanager
def sampling_stream(engine: Any, stream: torch.Generator | None) -> Iterator[None]:
    """The engine samples from `stream` inside the block (an engine without a generator, vLLM,
    samples from its own seeded state): a rank that generates for several others uses each one's
    stream (skyexp.rl.generator)."""
    own = getattr(engine, "generator", None)
    if stream is None or own is None:
        yield
        return
    engine.generator = stream
    try:
        yield
    finally:
        engine.generator = own


def _hf(**kwargs: Any) -> Engine:
    from skyexp.rollout.hf import HFEngine

    return HFEngine(**kwargs)


def _vllm(**kwargs: Any) -> Engine:
    from skyexp.rollout.vllm import VLLMEngine

    return VLLMEngine(**kwargs)


def _hf_for(
    cfg: Any, model_path: str, device: torch.device | str, common: dict[str, Any]
) -> Engine:
    from skyexp.model.loading import load_model

    return _hf(
        model=load_model(model_path, cfg.model, device),
        lean=cfg.rollout.lean,
        device=device,
        **common,
    )


def _vllm_for(
    cfg: Any, model_path: str, device: torch.device | str, common: dict[str, Any]
) -> Engine:
    from skyexp.rollout.vllm_setup import VLLMSettings

    settings = VLLMSettings(
        dtype=cfg.model.dtype,
        trust_remote_code=cfg.model.trust_remote_code,
        deterministic=cfg.trainer.deterministic,
        **{k: getattr(cfg.rollout, k) for k in VLLM_SETTINGS},
    )
    return _vllm(model=model_path, settings=settings, device=device, **common)


class EngineEntry(NamedTuple):
    """A registered rollout engine: its constructor, and how a run's config builds it."""

    build: Callable[..., Engine]  # the engine class's keyword arguments -> Engine
    # (cfg, model path, device, common)
    from_config: Callable[[Any, str, torch.device | str, dict[str, Any]], Engine]


# rollout.name -> engine; nothing heavy is imported until one is built
ENGINES: dict[str, EngineEntry] = {
    "hf": EngineEntry(_hf, _hf_for),
    "vllm": EngineEntry(_vllm, _vllm_for),
}
implements(ENGINES, ROLLOUT_ENGINES, "skyexp.rollout.ENGINES")
VLLM_SETTINGS = (
    "tensor_parallel_size",
    "gpu_memory_utilization",
    "kv_cache_gb",
    "max_model_len",
    "enforce_eager",
    "sleep",
)


def build_engine(name: str, **kwargs: Any) -> Engine:
    """hf: HFEngine(model=<loaded HF model>, eos_id, pad_id, seed, max_batch, device).
    vllm: VLLMEngine(model=<path, or a loaded HF model standing for its path>, the same, and
    settings=VLLMSettings(...) (RolloutConfig's vLLM keys, the model's dtype))."""
    if name not in ENGINES:
        raise KeyError(f"unknown rollout engine '{name}'; valid options: {', '.join(ENGINES)}")
    return ENGINES[name].build(**kwargs)


def engine_for(
    cfg: Any, model_path: str, tokenizer: Any, device: torch.device | str, seed: int
) -> Engine:
    """The configured engine (cfg.rollout) on its own copy of the model at `model_path`: the one
    construction shared by training and the offline jobs (skyexp.filter, skyexp.distill)."""
    common = dict(
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        seed=seed,
        max_batch=cfg.rollout.max_batch,
    )
    return ENGINES[cfg.rollout.name].from_config(cfg, model_path, device, common)
