"""Worker for tests/e2e/test_sequence_parallel.py, under torchrun --nproc_per_node=2 (gloo):

    sp_worker.py equal <out.pt>          sp=2 (both ranks, FSDP2 over both) vs sp=1 (rank 0 alone)
    sp_worker.py memory <out.pt> <L>     activation bytes per rank of one forward, sp=2 vs sp=1

equal: on the same packed rows (lengths not multiples of 2, a row boundary inside a slice, a row
across the slice boundary), each case's token log-probs and entropies (no grad), and the loss
and every parameter gradient of a token-mean loss built as the RL update builds it (normaliser
all-reduced over the world, loss x world_size, FSDP averaging the gradients).

offload: two AdamW steps with trainer.offload = none / optimizer / params (the same numbers).

memory: the bytes of the tensors autograd saves for backward during one forward of a row of L
tokens (saved_tensors_hooks; storages counted once, parameters excluded): the activation memory
a backward would need, measured, on each rank. sp=1 is the plain padding-free forward.
"""

from __future__ import annotations

import copy
import sys
from functools import partial

import torch
import torch.distributed as dist

from skyexp import distributed
from skyexp.model import sequence_parallel
from skyexp.model.forward import token_stats
from skyexp.model.layout import ForwardSettings, MicroRows, pack

# (tied head, KV heads, gradient checkpointing, logprob chunk): 4 query heads; KV 2 splits over
# the group, KV 1 is replicated
CASES = {
    "tied": (True, 4, False, 5),
    "untied": (False, 4, False, 5),
    "tied_checkpointing": (True, 4, True, 7),
    "untied_gqa2_checkpointing": (False, 2, True, 5),
    "tied_gqa1_replicated": (True, 1, False, 5),
}


def build(tied: bool, kv: int, checkpointing: bool, hidden: int = 64, layers: int = 2,
          vocab: int = 300, intermediate: int = 128, max_pos: int = 32768):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=kv,
                      max_position_embeddings=max_pos, tie_word_embeddings=tied,
                      attn_implementation="sdpa")
    torch.manual_seed(5)
    model = Qwen2ForCausalLM(cfg)
    if checkpointing:
        model.gradient_checkpointing_enable()
    return model.train()


def rows() -> MicroRows:
    """Prompts 3, 5, 2 and responses 7, 4, 10 tokens: 31 packed tokens, slices of 16 at sp=2
    (one padding token); rows end at 10 and 19 (inside slice 0, across the slice boundary)."""
    g = torch.Generator().manual_seed(1)
    lens = [(3, 7), (5, 4), (2, 10)]
    prompts = [torch.randint(1, 300, (p,), generator=g).tolist() for p, _ in lens]
    responses = [torch.randint(1, 300, (r,), generator=g).tolist() for _, r in lens]
    seq, attn, rmask, plen = pack(prompts, responses, 0)
    return MicroRows(seq, attn, rmask, plen)


def loss_and_grads(model, mb: MicroRows, f: ForwardSettings, world: int):
    adv = torch.linspace(-1.0, 1.5, mb.resp_mask.numel()).view_as(mb.resp_mask)
    logp, ent = token_stats(model, mb, 0.9, True, f)
    n = distributed.all_reduce_sum([float(mb.resp_mask.sum())], torch.device("cpu"))[0]
    loss = -((adv * logp + 0.05 * ent) * mb.resp_mask).sum() / n
    (loss * world).backward()
    grads = {}
    for name, p in model.named_parameters():
        g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        grads[name] = g.detach().clone()
    # the loss the update reports: the ranks' terms summed (each SP rank holds 1/s of it)
    total = distributed.all_reduce_sum([float(loss.detach())], torch.device("cpu"))[0]
    return float(total), grads


def equal(out_path: str) -> None:
    d = distributed.setup("cpu", 1)
    mb = rows()
    cpu = torch.device("cpu")
    out = {}
    for name, (tied, kv, ckpt, chunk) in CASES.items():
        fc = ForwardSettings(8, cpu, logprob_chunk=chunk, padding_free=True)
        base = build(tied, kv, ckpt)
        res = {}
        if d.rank == 0:  # sp = 1: the plain padding-free forward, one process
            ref = copy.deepcopy(base)
            with torch.no_grad():
                lp, en = token_stats(ref, mb, 0.9, True, fc)
            loss, grads = _local(partial(loss_and_grads, ref, mb, fc, 1))
            res["sp1"] = {"logp": lp, "ent": en, "loss": loss, "grads": grads}
        model = copy.deepcopy(base)
        sequence_parallel.enable(model, 2, "sdpa")
        distributed.shard(model, d)
        with torch.no_grad():
            lp, en = token_stats(model, mb, 0.9, True, fc)
        loss, grads = loss_and_grads(model, mb, fc, d.world_size)
        res["sp2"] = {"logp": lp, "ent": en, "loss": loss, "grads": grads,
                      "calls": sequence_parallel.of(model).calls}
        out[name] = res
    if d.is_main:
        torch.save(out, out_path)
    distributed.barrier()
    distributed.teardown()


def _local(fn):
    """fn() on this rank alone: all_reduce_sum sees a world of one."""
    real = dist.is_initialized
    dist.is_initialized = lambda: False
    try:
        return fn()
    finally:
        dist.is_initialized = real


def saved_bytes(fn, exclude: set[int]) -> tuple[int, object]:
    """(bytes of the distinct storages autograd saved while fn() ran, except those in `exclude`
    (the parameters'), fn's result)."""
    seen: dict[int, int] = {}

    def pack_hook(t):
        st = t.untyped_storage()
        if st.data_ptr() not in exclude:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda t: t):
        result = fn()
    return sum(seen.values()), result


def memory(out_path: str, length: str) -> None:
    d = distributed.setup("cpu", 1)
    n = int(length)
    g = torch.Generator().manual_seed(2)
    seq, attn, rmask, plen = pack([torch.randint(1, 300, (64,), generator=g).tolist()],
                                  [torch.randint(1, 300, (n - 64,), generator=g).tolist()], 0)
    mb = MicroRows(seq, attn, rmask, plen)
    f = ForwardSettings(1, torch.device("cpu"), logprob_chunk=256, padding_free=True)
    base = build(True, 4, False, hidden=64, layers=2, intermediate=128)
    out = {}
    for sp in (1, 2):
        model = copy.deepcopy(base)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        if sp == 2:
            sequence_parallel.enable(model, 2, "sdpa")
        b, (lp, _) = saved_bytes(lambda m=model: token_stats(m, mb, 1.0, True, f), params)
        out[f"sp{sp}"] = {"bytes": b, "logp_sum": float(lp.sum())}
        distributed.barrier()
    gathered = distributed.all_gather_objects(out)
    if d.is_main:
        torch.save(gathered, out_path)
    distributed.barrier()
    distributed.teardown()


def offload(out_path: str) -> None:
    """Two AdamW steps of the sp=2 loss with trainer.offload = none / optimizer / params: the
    parameters after them (offload moves memory, not numbers), and where the state lives."""
    d = distributed.setup("cpu", 1, sp_size=2)
    mb = rows()
    f = ForwardSettings(8, torch.device("cpu"), logprob_chunk=5, padding_free=True)
    out = {}
    for mode in ("none", "optimizer", "params"):
        model = build(False, 4, False)
        sequence_parallel.enable(model, 2, "sdpa")
        distributed.shard(model, d, mode)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        if mode == "optimizer":
            distributed.offload_optimizer(opt)
        for _ in range(2):
            loss_and_grads(model, mb, f, d.world_size)
            opt.step()
            opt.zero_grad(set_to_none=True)
        state = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
                 for n, p in model.named_parameters()}
        moments = [v for st in opt.state.values() for k, v in st.items() if k != "step"]
        out[mode] = {"params": state, "state_on_cpu": all(v.device.type == "cpu" for v in moments)}
    if d.is_main:
        torch.save(out, out_path)
    distributed.barrier()
    distributed.teardown()


if __name__ == "__main__":
    {"equal": equal, "memory": memory, "offload": offload}[sys.argv[1]](*sys.argv[2:])
