"""Checkpoints: an exact round trip of the sharded model and optimizer, atomic commit, keep-last-K,
resume resolution, RNG state, metrics rewind, and skipped non-finite updates."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from conftest import loss_spec, update_settings

from skyexp import checkpoint, distributed
from skyexp.config import AlgoConfig, ConfigError, ModelConfig
from skyexp.model.loading import load_model, load_tokenizer
from skyexp.rl import resume
from skyexp.rl.update import UpdateBatch, rl_update
from skyexp.rollout.hf import HFEngine


def _sharded(tiny_dir, d):
    torch.manual_seed(0)
    m = load_model(str(tiny_dir), ModelConfig())
    distributed.shard(m, d)
    return m, torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01)


def _step(m, opt, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 200, (4, 12), generator=g)
    loss = m(input_ids=x, labels=x).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def _params(m) -> dict[str, torch.Tensor]:
    return {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
        for k, v in m.state_dict().items()
    }


def test_round_trip_continues_bit_for_bit(tiny_dir, dist1, tmp_path):
    m, opt = _sharded(tiny_dir, dist1)
    _step(m, opt, 1), _step(m, opt, 2)
    path = checkpoint.save(
        tmp_path / "checkpoints" / "step_00000002",
        m,
        opt,
        {"note": "x"},
        {"a": torch.arange(3)},
        dist1,
        2,
    )
    assert checkpoint.is_complete(path) and checkpoint.read_state(path) == {
        "note": "x",
        "optimizer_saved": True,
    }
    assert not list(path.parent.glob(".tmp-*"))
    ref = [_step(m, opt, s) for s in (3, 4, 5)]
    m2, opt2 = _sharded(tiny_dir, dist1)
    _step(m2, opt2, 99)  # a different history: everything must come from the checkpoint
    private = checkpoint.load(path, m2, opt2, dist1)
    assert torch.equal(private["a"], torch.arange(3))
    assert [_step(m2, opt2, s) for s in (3, 4, 5)] == ref
    a, b = _params(m), _params(m2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    st1, st2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(st1[i]["step"], st2[i]["step"]) for i in st1)


def test_an_optimizer_without_state_stays_without(tiny_dir, dist1, tmp_path):
    """DCP would initialise Adam with a zero-lr step (step count 1): saving before the first
    update must not change what the first update does."""
    m, opt = _sharded(tiny_dir, dist1)
    path = checkpoint.save(tmp_path / "checkpoints" / "step_00000000", m, opt, {}, {}, dist1, 0)
    assert not opt.state and checkpoint.read_state(path)["optimizer_saved"] is False
    ref = _step(m, opt, 7)
    m2, opt2 = _sharded(tiny_dir, dist1)
    checkpoint.load(path, m2, opt2, dist1)
    assert not opt2.state and _step(m2, opt2, 7) == ref
    assert all(float(s["step"]) == 1 for s in opt2.state.values())


def _fake(root, step, done=True, tmp=False):
    p = root / "checkpoints" / (f".tmp-step_{step:08d}-abc" if tmp else f"step_{step:08d}")
    p.mkdir(parents=True)
    (p / "state.json").write_text("{}")
    if done:
        (p / "DONE").write_text("1")
    return p


def test_only_complete_checkpoints_count(tmp_path):
    assert checkpoint.resolve_resume("auto", tmp_path) is None  # nothing yet: start afresh
    two = _fake(tmp_path, 2)
    _fake(tmp_path, 10)
    _fake(tmp_path, 4, done=False)  # never finished
    _fake(tmp_path, 6, tmp=True)  # killed before the rename, though complete inside
    assert checkpoint.complete_checkpoints(tmp_path) == [
        two,
        tmp_path / "checkpoints" / "step_00000010",
    ]
    assert checkpoint.resolve_resume("auto", tmp_path).name == "step_00000010"
    assert checkpoint.resolve_resume("", tmp_path) is None
    assert checkpoint.resolve_resume(str(two), tmp_path) == two
    for bad in (tmp_path / "checkpoints" / "step_00000004", tmp_path / "nowhere"):
        with pytest.raises(ConfigError, match="config key 'trainer.resume'"):
            checkpoint.resolve_resume(str(bad), tmp_path)


def test_keep_last_and_stale_temporaries(tiny_dir, dist1, tmp_path):
    for s in (1, 2, 3):
        _fake(tmp_path, s)
    stale = _fake(tmp_path, 4, tmp=True)
    m, opt = _sharded(tiny_dir, dist1)
    checkpoint.save(tmp_path / "checkpoints" / "step_00000004", m, opt, {}, {}, dist1, keep_last=2)
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path)] == [
        "step_00000003",
        "step_00000004",
    ]
    assert not stale.exists()
    assert checkpoint.prune(tmp_path / "checkpoints", 0) == []  # 0 keeps every checkpoint


def test_rng_state_round_trip(tiny_dir):
    tok = load_tokenizer(str(tiny_dir), ModelConfig())
    eng = HFEngine(
        load_model(str(tiny_dir), ModelConfig()), tok.eos_token_id, tok.pad_token_id, seed=3
    )
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    saved = resume.rng_state(eng)

    def draw():
        return (
            torch.rand(3).tolist(),
            random.random(),
            np.random.rand(),
            torch.rand(2, generator=eng.generator).tolist(),
        )

    ref = draw()
    draw()
    resume.set_rng_state(eng, saved)
    assert draw() == ref


def test_rng_state_survives_weights_only_load(tiny_dir, tmp_path):
    tok = load_tokenizer(str(tiny_dir), ModelConfig())
    eng = HFEngine(
        load_model(str(tiny_dir), ModelConfig()), tok.eos_token_id, tok.pad_token_id, seed=3
    )
    torch.save(resume.rng_state(eng), tmp_path / "r.pt")
    ref = (random.random(), np.random.rand(), torch.rand(2, generator=eng.generator).tolist())
    resume.set_rng_state(eng, torch.load(tmp_path / "r.pt", weights_only=True))
    assert (
        random.random(),
        np.random.rand(),
        torch.rand(2, generator=eng.generator).tolist(),
    ) == ref


def test_rewind_metrics_drops_rows_logged_after_the_checkpoint(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text(
        "".join(json.dumps({"step": s, "x": s}) + "\n" for s in range(6)) + '{"step": 6, "x"'
    )  # torn last line
    assert resume.rewind_metrics(f, 4) == 3
    assert [json.loads(x)["step"] for x in f.read_text().splitlines()] == [0, 1, 2, 3]
    assert resume.rewind_metrics(tmp_path / "none.jsonl", 1) == 0
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "samples.completions.jsonl").write_text("".join(
        json.dumps({"step": s, "prompt": "p"}) + "\n" for s in (1, 1, 5, 6)))
    assert resume.rewind_logs(tmp_path, 2) == 2 + 2  # metrics rows 2, 3; table rows of steps 5, 6
    assert [
        json.loads(x)["step"]
        for x in (tmp_path / "tables" / "samples.completions.jsonl").read_text().splitlines()
    ] == [1, 1]


def test_config_changes_are_named():
    saved = {
        "trainer": {"lr": 1e-3, "resume": ""},
        "logger": {"mode": "offline"},
        "context": {"stages": [{"steps": 2}]},
    }
    now = {
        "trainer": {"lr": 2e-3, "resume": "auto"},
        "logger": {"mode": "online"},
        "context": {"stages": [{"steps": 3}]},
    }
    assert resume.warn_config_changes(saved, now) == ["context.stages", "trainer.lr"]


def test_non_finite_update_is_skipped(tiny_dir, dist1):
    tok = load_tokenizer(str(tiny_dir), ModelConfig())
    policy = load_model(str(tiny_dir), ModelConfig())
    eng = HFEngine(
        load_model(str(tiny_dir), ModelConfig()), tok.eos_token_id, tok.pad_token_id, seed=0
    )
    ro = eng.generate(
        tok(["Compute 1+1.\n", "Compute 2+2.\n"], add_special_tokens=False)["input_ids"], 4, 6, 1.0
    )
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    adv = torch.randn(8)
    adv[3] = float("nan")
    algo = AlgoConfig(mini_batches=2, n=4)
    st = rl_update(policy, opt, UpdateBatch(ro, adv, torch.ones(8)), loss_spec(algo),
                   update_settings(64, 1.0, algo, device=dist1.device))
    # group 0 (the NaN row) skips its optimizer step; group 1 steps
    assert st.skipped_updates == 1 and st.optimizer_steps == 1
    changed = [k for k, v in policy.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(torch.isfinite(v).all() for v in policy.state_dict().values())
    adv[:] = float("inf")
    after_one = {k: v.clone() for k, v in policy.state_dict().items()}
    st = rl_update(policy, opt, UpdateBatch(ro, adv, torch.ones(8)), loss_spec(AlgoConfig(n=4)),
                   update_settings(64, 1.0, device=dist1.device))
    assert st.skipped_updates == 1 and st.optimizer_steps == 0
    assert all(torch.equal(v, after_one[k]) for k, v in policy.state_dict().items())
