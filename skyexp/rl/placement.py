"""Disaggregated placement (`trainer.rollout_ranks = g`): under torchrun the first g ranks only
generate, the others only train; torch.distributed only (no Ray, no RPC layer).

Process groups, all made from torchrun's own store:
- each side's default group: the generators' (vLLM's tensor-parallel groups live there, and the
  dynamic-sampling vote) and the trainers' (FSDP2, every collective of the update, checkpoints:
  to the trainer code a trainer rank is a rank of a world of T = world - g ranks);
- `links` (gloo, every rank): generated batches, generator -> trainer, point to point, as
  serialised tensors (skyexp.rl.queue.to_bytes);
- `control` (gloo: the generators and trainer 0): the control messages and evaluation results;
- `weights` (the generators and trainer 0; NCCL on GPUs, gloo on CPUs): after each optimizer
  step trainer 0 broadcasts the full weights one tensor at a time, as the trainers all-gather
  them (skyexp.distributed.full_parameters), into the engine's in-place reload.

Trainer rank i trains share i of every step's prompt batch (what rank i trains in the
synchronous loop on T ranks); generator j generates the shares i with i % g == j, each with the
prompt sampler and sampling stream rank i would have had, so at staleness 0 the disaggregated run
is the synchronous run on T ranks (tests/e2e/test_async.py). g <= T.

Every wait is bounded by trainer.sync_timeout_s (the groups' timeout); a rank that dies breaks
its connections at once. Each rank keeps a heartbeat in the store, so the message of a rank that
was lost names it (skyexp.rl.faults.RankLost).
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from skyexp import distributed
from skyexp.config import ConfigError
from skyexp.distributed import Dist
from skyexp.rl.queue import from_bytes, to_bytes

log = logging.getLogger("skyexp")

GENERATOR, TRAINER = "generator", "trainer"
HEARTBEAT_S = 1.0  # how often a rank writes its heartbeat
GONE_S = 3.0  # a heartbeat older than this: the rank is dead or stopped


class RankLost(RuntimeError):
    """Another rank died, hung or timed out; the message names it and what waited for it."""


class RankSetupError(ConfigError):
    """The ranks cannot be placed as configured."""


@dataclass(frozen=True)
class Bridge:
    """This rank's place in the job and the groups that cross the two sides."""

    role: str
    rank: int  # global rank
    world: int
    generators: int  # g
    trainers: int  # T
    links: Any  # gloo, every rank
    control: Any  # gloo, generators + trainer 0 (None on other trainers)
    weights: Any  # NCCL (GPU) or gloo, generators + trainer 0 (None on other trainers)
    store: Any
    timeout_s: float
    device: torch.device

    @property
    def root(self) -> int:
        """Trainer 0's rank in `control` and `weights` (the generators keep theirs)."""
        return self.generators

    def generator_of(self, trainer: int) -> int:
        return generator_of(trainer, self.generators)

    def shares_of(self, generator: int) -> list[int]:
        return shares_of(generator, self.generators, self.trainers)

    def trainer_rank(self, trainer: int) -> int:
        """The global rank of trainer `trainer`."""
        return self.generators + trainer

    def lost(self, what: str, error: BaseException, suspects: list[int]) -> RankLost:
        """The error of a wait that failed: names the suspect ranks whose heartbeat stopped."""
        why = self.gone(suspects)
        if why is None:
            who = ", ".join(f"{_name(r, self.generators)} (global rank {r})" for r in suspects)
            why = (f"{who} did not answer within trainer.sync_timeout_s={self.timeout_s:g}s "
                   "or closed the connection")
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else repr(error)
        return RankLost(f"{why}; {_name(self.rank, self.generators)} waited for {what} ({first})")

    def gone(self, ranks: list[int]) -> str | None:
        """Which of `ranks` are gone, or None: each must write a heartbeat within GONE_S from now
        (a live rank writes one every HEARTBEAT_S; a killed or stopped one does not)."""
        since = time.time()
        gone = list(ranks)
        while gone and time.time() < since + GONE_S:
            gone = [r for r in gone if heartbeat_age(self.store, r) > time.time() - since]
            time.sleep(0.1)
        if not gone:
            return None
        who = ", ".join(f"{_name(r, self.generators)} (global rank {r})" for r in gone)
        return f"{who} gone: no heartbeat for over {GONE_S:.0f}s (killed or stopped)"


def _name(rank: int, generators: int) -> str:
    return f"generator rank {rank}" if rank < generators else f"trainer rank {rank - generators}"


def generator_of(trainer: int, generators: int) -> int:
    """The generator that generates trainer `trainer`'s share."""
    return trainer % generators


def shares_of(generator: int, generators: int, trainers: int) -> list[int]:
    """The trainer shares generator `generator` generates."""
    return [i for i in range(trainers) if i % generators == generator]


def start(cfg: Any) -> tuple[Dist, Bridge]:
    """Join torchrun's job, split it into generators and trainers, build the crossing groups.
    Every rank calls this first, in place of skyexp.distributed.setup."""
    t = cfg.trainer
    if "MASTER_ADDR" not in os.environ:
        raise RankSetupError(
            f"trainer.rollout_ranks={t.rollout_ranks} needs torchrun with more ranks than that "
            "(e.g. torchrun --nproc_per_node=2 -m skyexp ... or trainer.nproc_per_node=2)"
        )
    timeout = datetime.timedelta(seconds=t.sync_timeout_s)
    store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
    g = t.rollout_ranks
    if world <= g or world - g < g:
        raise RankSetupError(
            f"trainer.rollout_ranks={g} on {world} ranks: needs at least as many trainer ranks as "
            f"generator ranks (world >= 2 x rollout_ranks)"
        )
    role = GENERATOR if rank < g else TRAINER
    mine, size = (rank, g) if role == GENERATOR else (rank - g, world - g)
    d = distributed.setup(
        t.device,
        t.threads,
        t.keep_freed_memory,
        t.deterministic,
        t.sp_size,
        group=(dist.PrefixStore(f"skyexp/{role}", store), mine, size),
    )
    links = dist.ProcessGroupGloo(dist.PrefixStore("skyexp/links", store), rank, world, timeout)
    control = weights = None
    if rank <= g:  # the generators and trainer 0
        control = dist.ProcessGroupGloo(
            dist.PrefixStore("skyexp/control", store), rank, g + 1, timeout
        )
        weights = control
        if d.device.type == "cuda":
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = timeout
            weights = dist.ProcessGroupNCCL(
                dist.PrefixStore("skyexp/weights", store), rank, g + 1, opts
            )
    bridge = Bridge(role, rank, world, g, world - g, links, control, weights, store,
                    t.sync_timeout_s, d.device)
    _start_heartbeat(store, rank)
    log.info("placement: global rank %d is %s %d of %d (%d generators, %d trainers)",
             rank, role, mine, size, g, world - g)
    return d, bridge


# -- heartbeats: which rank is gone


def _start_heartbeat(store: Any, rank: int) -> None:
    def beat() -> None:
        while True:
            try:
                store.set(f"skyexp/alive/{rank}", repr(time.time()))
            except Exception:  # the job's store is gone: the job is ending
                return
            time.sleep(HEARTBEAT_S)

    threading.Thread(target=beat, name="skyexp-heartbeat", daemon=True).start()


def heartbeat_age(store: Any, rank: int) -> float:
    """Seconds since rank `rank` last wrote its heartbeat (inf: never, or unreadable)."""
    try:
        store.wait([f"skyexp/alive/{rank}"], datetime.timedelta(seconds=1))
        return time.time() - float(store.get(f"skyexp/alive/{rank}").decode())
    except Exception:
        return float("inf")


# -- the wire: objects as byte tensors over raw process groups (waits bounded by their timeout)

TAG = 0


def send_object(pg: Any, obj: Any, dst: int) -> list[Any]:
    """Start sending `obj` to rank `dst`; returns what must stay alive until it is received
    (wait_sent)."""
    payload = to_bytes(obj)
    size = torch.tensor([payload.numel()], dtype=torch.int64)
    return [(size, pg.send([size], dst, TAG)), (payload, pg.send([payload], dst, TAG))]


def wait_sent(pending: list[Any]) -> None:
    for _, work in pending:
        work.wait()


def recv_object(pg: Any, src: int) -> Any:
    size = torch.zeros(1, dtype=torch.int64)
    pg.recv([size], src, TAG).wait()
    payload = torch.empty(int(size.item()), dtype=torch.uint8)
    pg.recv([payload], src, TAG).wait()
    return from_bytes(payload)


def broadcast_object(pg: Any, obj: Any, root: int, is_root: bool) -> Any:
    payload = to_bytes(obj) if is_root else None
    size = torch.tensor([payload.numel() if is_root else 0], dtype=torch.int64)
    _broadcast(pg, size, root)
    if not is_root:
        payload = torch.empty(int(size.item()), dtype=torch.uint8)
    _broadcast(pg, payload, root)
    return obj if is_root else from_bytes(payload)


def _broadcast(pg: Any, t: torch.Tensor, root: int) -> None:
    opts = dist.BroadcastOptions()
    opts.rootRank = root
    pg.broadcast([t], opts).wait()


def barrier(pg: Any) -> None:
    pg.barrier(dist.BarrierOptions()).wait()


def manifest(policy: torch.nn.Module) -> list[tuple[str, list[int], str]]:
    """(name, full shape, dtype) of every parameter, in named_parameters order: what a generator
    allocates to receive the weights."""
    out = []
    for name, p in policy.named_parameters():
        out.append((name, list(p.shape), str(p.dtype).removeprefix("torch.")))
    return out


def send_weights(bridge: Bridge, policy: torch.nn.Module, send: bool) -> BaseException | None:
    """Trainer side of the weight stream: every trainer all-gathers each parameter in turn
    (a collective of the trainers); trainer 0 broadcasts it to the generators (when `send`). A
    failed broadcast stops the sending, not the gathering (the other trainers are in it): the
    error is returned."""
    error: BaseException | None = None
    for _, full in distributed.full_parameters(policy):
        if bridge.weights is None or error is not None or not send:
            continue
        try:
            t = full.contiguous()
            _broadcast(bridge.weights, t if t.device.type == bridge.device.type
                       else t.to(bridge.device), bridge.root)
        except RuntimeError as e:
            error = e
    return error


def receive_weights(bridge: Bridge, names: list[tuple[str, list[int], str]]):
    """Generator side: (name, tensor) pairs as they arrive, one at a time (for an engine's
    load_weights, which must consume all of them)."""
    for name, shape, dtype in names:
        t = torch.empty(shape, dtype=getattr(torch, dtype), device=_wire_device(bridge))
        _broadcast(bridge.weights, t, bridge.root)
        yield name, t


def _wire_device(bridge: Bridge) -> torch.device:
    return bridge.device if bridge.device.type == "cuda" else torch.device("cpu")
