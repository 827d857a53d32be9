"""Process group set-up, FSDP2 sharding and the few collectives the trainer needs.

One code path for every scale: a single process gets a world-size-1 group, `torchrun` gives
env:// rendezvous. gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger("skyexp")


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    # trainer.sp_size: groups of sp_size consecutive ranks split each row between them and hold
    # the same rows (skyexp.model.sequence_parallel); prompts and samples go to dp ranks
    sp_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def dp_rank(self) -> int:
        """Data-parallel rank: the ranks of one sequence-parallel group share it."""
        return self.rank // self.sp_size

    @property
    def dp_size(self) -> int:
        return self.world_size // self.sp_size


def setup(
    device: str = "auto",
    threads: int = 0,
    keep_memory: bool = False,
    deterministic: bool = False,
    sp_size: int = 1,
    group: tuple[Any, int, int] | None = None,
) -> Dist:
    """Start (or join) the process group and pin this rank's device and thread count; on CPU with
    `keep_memory` (trainer.keep_freed_memory), keep freed memory in the process (keep_freed_memory).
    `deterministic` (trainer.deterministic): see `make_deterministic`; on CPU it also means one
    thread. `group` = (store, rank, size): this process's default group is that part of the job
    (skyexp.rl.placement: the generator or the trainer ranks), not every rank of torchrun's."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda but no CUDA device is visible")
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    backend = "nccl" if use_cuda else "gloo"
    if deterministic:
        make_deterministic(use_cuda)  # before the first cuBLAS call and the NCCL communicator
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
        n = threads or max(1, (os.cpu_count() or 1) // local_world)
        if deterministic and n != 1:
            log.info(
                "trainer.deterministic: 1 CPU thread per rank instead of %d (a reduction split "
                "over threads "
                "can add in another order from run to run)",
                n,
            )
        torch.set_num_threads(1 if deterministic else n)
        if keep_memory:
            keep_freed_memory()
    if group is not None:
        store, rank, world = group
        dist.init_process_group(
            backend, store=store, rank=rank, world_size=world, device_id=dev if use_cuda else None
        )
    elif not dist.is_initialized():
        if "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend, device_id=dev if use_cuda else None)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return Dist(rank, world, local_rank, local_world, dev, sp_size)


# NCCL settings for run-to-run identical collectives: one fixed algorithm and protocol, and no
# in-network (switch) or NVLink-SHARP reductions, whose order is not fixed. User settings win.
NCCL_DETERMINISTIC = {
    "NCCL_ALGO": "Ring",
    "NCCL_PROTO": "Simple",
    "NCCL_NVLS_ENABLE": "0",
    "NCCL_COLLNET_ENABLE": "0",
}


def make_deterministic(use_cuda: bool) -> None:
    """torch.use_deterministic_algorithms (an op without a deterministic kernel warns, naming
    itself, instead of stopping a long run); on GPUs also cuBLAS's fixed workspace
    (CUBLAS_WORKSPACE_CONFIG, which use_deterministic_algorithms requires), cuDNN without autotuning
    and NCCL_DETERMINISTIC. What this does and does not make reproducible: README,
    Reproducibility."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    if use_cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        for key, value in NCCL_DETERMINISTIC.items():
            os.environ.setdefault(key, value)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Make glibc malloc keep freed blocks for reuse instead of handing them back to the kernel.

    A CPU step allocates and frees the same large activations again and again. By default glibc
    serves blocks above a threshold (at most 32 MiB) with mmap and unmaps them when freed, and
    trims the top of the heap when more than twice that is free, so the next step page-faults
    every page in again, zero-filled by the kernel. Measured on the 2-core VM: an elementwise op
    on a 23 MB tensor ran 1.8-3.3x slower with fresh pages, and a 25.9M-model step took up to 100k
    faults. Here blocks up to 1 GiB come from the heap and the heap is trimmed only beyond 2 GiB
    free: memory is reused as PyTorch's CUDA caching allocator reuses it, and the resident size
    stays at the step's peak. Returns False where the C library has no mallopt (not glibc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # some glibc versions refuse a threshold above 32 MiB: fall back to that
    mmap_ok = mallopt(M_MMAP_THRESHOLD, 1 << 30) == 1 or mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1
    return mmap_ok and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(model: torch.nn.Module, d: Dist, offload: str = "none") -> torch.nn.Module:
    """FSDP2: shard each decoder layer, then the root (embeddings, norm, head), over every rank
    (data- and sequence-parallel alike). offload="params" (trainer.offload): FSDP2's
    CPUOffloadPolicy, the sharded parameters and their gradients live on the CPU (each layer's
    shard is copied to the device for its all-gather, forward and backward; gradients are copied
    back after the reduce-scatter), so the optimizer built on them keeps its state on the CPU and
    steps there. "optimizer" is offload_optimizer's, on the optimizer; "none": all on the device."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    mesh = init_device_mesh(d.device.type, (d.world_size,))
    policy = (
        CPUOffloadPolicy(pin_memory=d.device.type == "cuda")
        if offload == "params"
        else OffloadPolicy()
    )
    for layer in _decoder_layers(model):
        fully_shard(layer, mesh=mesh, offload_policy=policy)
    fully_shard(model, mesh=mesh, offload_policy=policy)
    return model


def offload_optimizer(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """trainer.offload=optimizer: the optimizer's state (AdamW's two moments, 8 bytes a
    parameter in float32, 2/3 of the fp32 training state without the master weights) lives on
    the CPU between steps: moved to the parameters' device just before each step and back after
    it (step hooks), as verl's optimizer offload does. The forward and backward run without it;
    the step pays two copies of it. A no-op on CPU parameters."""

    def to_device(o: torch.optim.Optimizer, *_: Any) -> None:
        _move_state(o, None)

    def to_cpu(o: torch.optim.Optimizer, *_: Any) -> None:
        _move_state(o, torch.device("cpu"))

    opt.register_step_pre_hook(to_device)
    opt.register_step_post_hook(to_cpu)
    return opt


def _move_state(opt: torch.optim.Optimizer, device: torch.device | None) -> None:
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state.get(p, {})
            target = device or _local(p).device
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and v.device != target and k != "step":
                    state[k] = v.to(target, non_blocking=True)


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if hasattr(p, "to_local") else p


def _call(self: torch.nn.Module, fn: Any, *args: Any) -> Any:
    return fn(*args)


def run_in_forward(model: torch.nn.Module, fn: Any, *args: Any) -> Any:
    """fn(*args) run as a forward method of `model`. Under FSDP2 the root's parameters (embeddings,
    final norm, an untied lm head) are all-gathered around the call and its outputs get the
    pre-backward hooks, exactly as for model(...); so fn may read model.lm_head.weight as a plain
    tensor (outside a forward it is a sharded DTensor). Without FSDP: fn(*args)."""
    from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method

    if not isinstance(model, FSDPModule):
        return fn(*args)
    method = model.__dict__.get("_skyexp_forward")
    # first call (or a deep copy)
    if method is None or getattr(method, "__self__", None) is not model:
        model._skyexp_forward = _call.__get__(model, type(model))
        register_fsdp_forward_method(model, "_skyexp_forward")
    return model._skyexp_forward(fn, *args)


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    return list(layers) if layers is not None else []


def full_parameters(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, full tensor) one parameter at a time: each sharded DTensor is all-gathered
    only while it is consumed, so a 7B model never needs a second full copy in memory."""
    for name, p in model.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        yield name, full.detach()


def all_reduce_sum(values: list[float] | torch.Tensor, device: torch.device) -> torch.Tensor:
    t = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=torch.float64)
    t = t.to(device).clone()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.cpu()


def all_reduce_max(value: float, device: torch.device) -> float:
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_reduce_max_list(values: list[float], device: torch.device) -> list[float]:
    """Elementwise max over ranks of a list of floats, in one collective."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.cpu().tolist()


def all_gather_objects(obj: Any) -> list[Any]:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
