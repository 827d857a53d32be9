"""ProRL reference resets (algo.ref_reset_every): the reference becomes the policy, AdamW restarts,
and a run resumed from a checkpoint taken after a reset continues exactly (its KL to the reference
and its parameters equal the uninterrupted run's): the reset reference is saved with the run."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import tiny
from test_resume import comparable, run

ARGS = tiny(
    "trainer.threads=1",
    "trainer.micro_batch_size=16",
    "context.stages.0.steps=6",
    "algo.kl_coef=0.5",
    "algo.ref_reset_every=3",
    "trainer.save_every=2",
    "trainer.keep_last=0",
    # the untrained tiny model scores 0 everywhere (zero advantages): an entropy bonus moves the
    # policy anyway, so the KL to the reference grows between resets
    "entropy=fixed",
    "entropy.coef=0.01",
)


def test_reset_copies_the_policy_and_clears_adam(tiny_dir, dist1):
    from types import SimpleNamespace

    from skyexp.config import AlgoConfig, ModelConfig
    from skyexp.model.loading import load_model
    from skyexp.rl.boundaries import reset_reference
    from skyexp.rl.state import Counters, Live

    policy, ref = load_model(str(tiny_dir), ModelConfig()), load_model(str(tiny_dir), ModelConfig())
    with torch.no_grad():
        next(policy.parameters()).add_(1.0)
    opt = torch.optim.AdamW(policy.parameters())
    policy(torch.tensor([[1, 2]])).logits.sum().backward()
    opt.step()
    run = SimpleNamespace(
        cfg=SimpleNamespace(algo=AlgoConfig(kl_coef=0.1, ref_reset_every=3)),
        live=Live(None, ref=ref),
        policy=policy,
        opt=opt,
        counters=Counters(rl_step=2),
    )
    assert not reset_reference(run) and opt.state
    run.counters.rl_step = 3
    assert reset_reference(run) and run.counters.ref_reset_step == 3 and not opt.state
    assert all(
        torch.equal(a, b) for a, b in zip(ref.state_dict().values(), policy.state_dict().values())
    )


@pytest.mark.slow
def test_resume_after_a_reset_is_exact(tmp_path):
    full = tmp_path / "full"
    run(ARGS, full)
    rows = [r for r in comparable(full) if "actor/pg_loss" in r]
    assert [r["train/rl_step"] for r in rows] == list(range(6))
    # resets after steps 3 and 6: the KL to the reference right after a reset starts from ~0 again
    kl = [r["actor/kl_loss"] for r in rows]
    assert kl[3] < kl[2], kl
    state = json.loads((full / "checkpoints" / "step_00000004" / "state.json").read_text())
    assert (
        state["counters"]["ref_reset_step"] == 3
        and (full / "checkpoints" / "step_00000004" / "ref").is_dir()
    )
    assert not (
        full / "checkpoints" / "step_00000002" / "ref"
    ).exists()  # before any reset: rebuilt from the start
    # resume a copy of the step-4 checkpoint in a fresh run directory
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(
        full / "checkpoints" / "step_00000004", resumed / "checkpoints" / "step_00000004"
    )
    run(ARGS + ["trainer.resume=auto"], resumed)
    got = [r for r in comparable(resumed) if "actor/pg_loss" in r]
    assert [r["train/rl_step"] for r in got] == [4, 5]
    for g, w in zip(got, rows[4:]):
        assert g == w, {k: (g.get(k), w.get(k)) for k in set(g) | set(w) if g.get(k) != w.get(k)}
    from safetensors.torch import load_file

    a, b = (load_file(p / "final" / "model.safetensors") for p in (resumed, full))
    assert all(torch.equal(a[k], b[k]) for k in a)
