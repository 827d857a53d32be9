"""Checks of the keys that spread one sequence or the training state beyond one device:
trainer.sp_size (Ulysses sequence parallelism, skyexp.model.sequence_parallel) and
trainer.offload (FSDP2 CPU offload, skyexp.distributed.shard). The checks that need the model's
own config (heads, KV heads) run in skyexp.model.sequence_parallel.check_model, before the
weights load."""

from __future__ import annotations

from collections.abc import Callable

OFFLOAD = ("none", "optimizer", "params")
SP_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")


def validate_parallel(c, check: Callable[[bool, str, str], None]) -> None:
    t = c.trainer
    check(
        t.offload in OFFLOAD, "trainer.offload", f"'{t.offload}' is not one of {', '.join(OFFLOAD)}"
    )
    check(
        t.offload == "none" or t.fsdp, "trainer.offload", "needs trainer.fsdp=true (FSDP2 offloads)"
    )
    check(t.sp_size >= 1, "trainer.sp_size", "must be >= 1")
    if t.sp_size == 1:
        return
    check(
        t.padding_free,
        "trainer.padding_free",
        f"trainer.sp_size={t.sp_size} slices the padding-free packed row: set "
        "trainer.padding_free=true",
    )
    check(t.logprob_chunk > 0, "trainer.logprob_chunk",
          "sequence parallelism runs the chunked lm head on each slice: must be > 0")
    check(t.fsdp, "trainer.fsdp", f"trainer.sp_size={t.sp_size} needs the FSDP2-sharded policy")
    check(c.model.attn_implementation in SP_ATTENTION, "model.attn_implementation",
          f"'{c.model.attn_implementation}' is not covered by the Ulysses attention "
          f"(trainer.sp_size={t.sp_size}); use one of {', '.join(SP_ATTENTION)}")


def check_parallel_world(c, world_size: int, check: Callable[[bool, str, str], None]) -> None:
    s = c.trainer.sp_size
    check(world_size % s == 0, "trainer.sp_size",
          f"{s} does not divide the {world_size} ranks (world = data-parallel x sp_size)")


def validate_async(c, check: Callable[[bool, str, str], None]) -> None:
    """rollout.staleness, trainer.rollout_ranks, trainer.sync_timeout_s (skyexp.rl.async_loop,
    skyexp.rl.placement); the number of ranks is checked when the ranks start."""
    t = c.trainer
    check(c.rollout.staleness >= 0, "rollout.staleness", "must be >= 0 (0: synchronous)")
    check(t.rollout_ranks >= 0, "trainer.rollout_ranks", "must be >= 0 (0: every rank trains)")
    check(t.sync_timeout_s > 0, "trainer.sync_timeout_s", "must be > 0 seconds")
    if t.rollout_ranks:
        check(t.sp_size == 1, "trainer.sp_size",
              "sequence parallelism is not supported with trainer.rollout_ranks > 0")
        check(t.rollout_ranks % c.rollout.tensor_parallel_size == 0,
              "rollout.tensor_parallel_size",
              f"must divide trainer.rollout_ranks={t.rollout_ranks} (an engine's ranks generate)")
