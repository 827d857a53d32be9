"""Sequence parallelism in one process: the checks before anything loads (each naming its key),
the loud failure when the patched attention does not run (verl#7476), and the Ulysses path with
a group of one against the plain padding-free forward.
Two ranks: tests/e2e/test_sequence_parallel.py."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from sp_worker import build, rows

from skyexp.config import ConfigError
from skyexp.config.checks import check_world, to_typed
from skyexp.model import sequence_parallel
from skyexp.model.forward import token_stats
from skyexp.model.layout import ForwardSettings

F = ForwardSettings(8, torch.device("cpu"), logprob_chunk=5, padding_free=True)


def config(**trainer):
    return to_typed({"trainer": {"padding_free": True, **trainer}})


@pytest.mark.parametrize(
    "trainer, model, key",
    [
        ({"sp_size": 2, "padding_free": False}, {}, "trainer.padding_free"),
        ({"sp_size": 2}, {"attn_implementation": "flex_attention"}, "model.attn_implementation"),
        ({"sp_size": 0}, {}, "trainer.sp_size"),
        ({"sp_size": 2, "fsdp": False}, {}, "trainer.fsdp"),
        ({"offload": "gpu"}, {}, "trainer.offload"),
        ({"offload": "params", "fsdp": False}, {}, "trainer.offload"),
    ],
)
def test_config_checks_name_the_key(trainer, model, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        to_typed({"trainer": {"padding_free": True, **trainer}, "model": model})


def test_world_must_be_a_multiple_of_sp_size():
    with pytest.raises(ConfigError, match=r"trainer\.sp_size"):
        check_world(config(sp_size=2), 3)


@pytest.mark.parametrize("heads, kv, sp, ok", [(4, 4, 2, True), (4, 2, 4, True), (4, 1, 2, True),
                                               (6, 6, 4, False), (4, 3, 2, False), (8, 2, 4, True)])
def test_heads_against_sp_size(heads, kv, sp, ok):
    from transformers import Qwen2Config

    c = Qwen2Config(num_attention_heads=heads, num_key_value_heads=kv, hidden_size=heads * 8)
    if ok:
        sequence_parallel.check_model(c, sp, "sdpa")
    else:
        with pytest.raises(ConfigError, match=r"trainer\.sp_size"):
            sequence_parallel.check_model(c, sp, "sdpa")


def test_uncovered_attention_names_its_key():
    from transformers import Qwen2Config

    with pytest.raises(ConfigError, match=r"model\.attn_implementation"):
        sequence_parallel.check_model(Qwen2Config(), 2, "flex_attention")


def _group_of_one(model, inner="sdpa"):
    model.__dict__["_skyexp_sp"] = sequence_parallel.SequenceParallel(dist.group.WORLD, 1, 0, inner)
    return model


def test_unpatched_attention_fails_loudly(dist1):
    """The model keeps plain sdpa (the patch never engaged): the first forward raises."""
    model = _group_of_one(build(True, 4, False))
    with pytest.raises(RuntimeError, match=r"trainer\.sp_size=1: the Ulysses attention was not"):
        token_stats(model, rows(), 0.9, True, F)


@pytest.mark.parametrize("inner", ["sdpa", "eager"])
def test_group_of_one_equals_plain(dist1, inner):
    """Registered attention, slice machinery, per-row attention and the gather with s = 1: the
    log-probs, entropies and gradients of the plain padding-free forward."""
    base = build(False, 2, False)
    mb = rows()
    out = []
    for sp in (False, True):
        model = copy.deepcopy(base)
        if sp:
            model.set_attn_implementation(sequence_parallel.register(inner))
            _group_of_one(model, inner)
        lp, ent = token_stats(model, mb, 0.9, True, F)
        ((lp * mb.resp_mask).sum() + (ent * mb.resp_mask).sum()).backward()
        out.append((lp.detach(), ent.detach(), [p.grad.clone() for p in model.parameters()]))
    assert sequence_parallel.of(model).calls == 2
    (a, b, ga), (c, d, gc) = out
    assert torch.allclose(a, c, rtol=1e-5, atol=1e-6) and torch.allclose(b, d, rtol=1e-5, atol=1e-6)
    for x, y in zip(ga, gc):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-6)


def test_generation_outside_a_slice_is_the_inner_attention():
    """Outside an SP forward (generation, no slice) the registered attention is the inner one."""
    base = build(True, 4, False)
    model = copy.deepcopy(base)
    model.set_attn_implementation(sequence_parallel.register("sdpa"))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, base(ids).logits, atol=1e-6)
