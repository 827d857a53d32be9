"""The lifecycle in-process: a 3-stage run crosses two boundaries (length cap, temperature,
truncation mode and prompt drop change), resumes exactly from any checkpoint, and survives
non-finite steps. Rewards come from a scripted scorer, so which prompts are solved in every
sample is known and the drop can be recounted."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from conftest import tiny
from test_config import compose_cfg

import skyexp.rl.step as rl_step_mod
import skyexp.train as train_mod
from skyexp import checkpoint, distributed
from skyexp.config import RewardConfig, to_typed
from skyexp.config.stages import plan_run
from skyexp.data import PromptSampler, load_task
from skyexp.model.loading import load_model, resolve_path
from skyexp.rewards import Scored
from skyexp.rl import boundaries, faults

STEPS, LENS = (2, 3, 2), (16, 24, 32)
BASE = tiny("trainer.threads=1", "trainer.warmup_steps=0", "trainer.micro_batch_size=16")
RUN = BASE + [
    "context=tiny_3stage",
    *[f"context.stages.{i}.steps={s}" for i, s in enumerate(STEPS)],
    *[f"context.stages.{i}.max_response_len={n}" for i, n in enumerate(LENS)],
    "context.reset_optimizer=true",
    "+context.stages.1.truncated=mask",
    "+context.stages.2.truncated=soft_penalty",
    "temperature=linear",
    "temperature.value=0.7",
    "temperature.end=1.1",
    "temperature.steps=0",
    "+context.stages.2.temperature=0.9",
    "algo.old_logprobs=recompute",
    "entropy=adaptive",
    "entropy.target=9.0",
    "trainer.save_every=1",
    "trainer.keep_last=0",
    "eval.every=3",
    "eval.size=4",
    "eval.n=2",
    "eval.max_response_len=12",  # evals use the engine's RNG mid-run
]


class ParityReward:
    """Prompts with an even answer are solved in every sample; the others in samples 0 and 2 of
    each group of 4 (mixed groups, so advantages are not zero)."""

    cfg = RewardConfig()

    def score(self, texts, golds):
        s = [1.0 if int(g) % 2 == 0 or i % 2 == 0 else 0.0 for i, g in enumerate(golds)]
        return Scored(s, ["x"] * len(texts), ["ok"] * len(texts))

    def close(self):
        pass


@pytest.fixture()
def scripted(monkeypatch):
    monkeypatch.setattr(train_mod, "build_reward", lambda cfg: ParityReward())


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _comparable(rows):
    return [
        {
            k: v
            for k, v in r.items()
            if not k.startswith(("timing_s/", "timing_per_token_ms/")) and k != "perf/throughput"
        }
        for r in rows
    ]


def _final_params(run_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(run_dir / "final").state_dict()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (scripted rewards), shared by the tests below."""
    mp = pytest.MonkeyPatch()
    mp.setattr(train_mod, "build_reward", lambda cfg: ParityReward())
    run_dir = tmp_path_factory.mktemp("ref")
    cfg = to_typed(compose_cfg(RUN))
    try:
        summary = train_mod.train(cfg, run_dir)
    finally:
        mp.undo()
    return cfg, run_dir, summary


@pytest.mark.slow
def test_three_stages_in_one_run(reference):
    cfg, run_dir, summary = reference
    rows = _rows(run_dir)
    rl = [r for r in rows if "actor/pg_loss" in r]
    stages = [0] * STEPS[0] + [1] * STEPS[1] + [2] * STEPS[2]
    assert [r["train/stage"] for r in rl] == stages and summary["rl_steps"] == sum(STEPS)
    assert [r["train/max_response_len"] for r in rl] == [LENS[s] for s in stages]
    assert all(r["response_length/max"] <= LENS[s] for r, s in zip(rl, stages))
    assert (
        max(r["response_length/max"] for r in rl if r["train/stage"] == 2) > LENS[1]
    )  # the cap really grew
    # temperature: the linear schedule over the 7 steps, then stage 2's own 0.9; the trainer's
    # recomputed log-probs match the sampler's, so the loss used the rollout's temperature
    expect = [0.7 + 0.4 * k / 6 for k in range(5)] + [0.9, 0.9]
    assert [r["rollout/temperature"] for r in rl] == pytest.approx(expect)
    assert all(r["rollout/logprob_diff"] < 1e-4 for r in rl)
    # truncation: kept in stage 0, masked out of the loss in stage 1, soft penalty in stage 2
    assert all(
        r["batch/truncated_masked"] == 0 and r["response_length/clip_ratio"] > 0 for r in rl[:2]
    )
    assert all(
        r["batch/truncated_masked"] == pytest.approx(r["response_length/clip_ratio"])
        for r in rl[2:5]
    )
    assert all("reward/overlong/mean" in r for r in rl[5:]) and not any(
        "reward/overlong/mean" in r for r in rl[:5]
    )
    assert any(r["reward/overlong/mean"] < 0 for r in rl[5:])
    assert all(r["train/skipped_steps"] == 0 for r in rl)
    # the prompts dropped at each boundary: recounted by replaying the samplers
    problems = load_task(cfg.data).train
    sampler, dropped, expected = PromptSampler(problems, cfg.trainer.seed), set(), []
    for i, steps in enumerate(STEPS[:-1]):
        drawn = [p for _ in range(steps) for p in sampler.next(4)]
        solved = {p.id for p in drawn if int(p.answer) % 2 == 0}
        expected.append(len(solved))
        dropped |= solved
        sampler = PromptSampler(
            [p for p in problems if p.id not in dropped], cfg.trainer.seed + i + 1
        )
    bounds = [r for r in rows if "train/dropped_solved" in r]
    assert [r["train/dropped_solved"] for r in bounds] == expected and all(e > 0 for e in expected)
    assert [r["train/prompts"] for r in bounds] == [
        len(problems) - expected[0],
        len(problems) - sum(expected),
    ]
    assert [r["train/stage"] for r in bounds] == [1, 2]
    assert [p.name for p in checkpoint.complete_checkpoints(run_dir)] == [
        f"step_{k:08d}" for k in range(1, 8)
    ]
    assert [r["train/rl_step"] for r in rows if "val/arith/pass@1" in r] == [3, 6]  # eval.every=3


@pytest.mark.slow
@pytest.mark.parametrize(
    "k", [2, 3]
)  # a stage end (the boundary runs after the resume); mid-stage, after an eval
def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(reference, scripted, tmp_path, k):
    cfg, ref_dir, _ = reference
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(
        ref_dir / "checkpoints" / f"step_{k:08d}", run_dir / "checkpoints" / f"step_{k:08d}"
    )
    shutil.copy(
        ref_dir / "metrics.jsonl", run_dir / "metrics.jsonl"
    )  # the killed run logged on past its checkpoint
    summary = train_mod.train(to_typed(compose_cfg(RUN + ["trainer.resume=auto"])), run_dir)
    assert summary["resumed_from"].endswith(f"step_{k:08d}")
    assert _comparable(_rows(run_dir)) == _comparable(_rows(ref_dir))
    a, b = _final_params(ref_dir), _final_params(run_dir)
    assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.slow
def test_non_finite_steps_are_skipped_then_stop_the_run(scripted, tmp_path, monkeypatch, dist1):
    bad_steps: set[int] = set()
    calls = []
    real = rl_step_mod.step_advantages

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        return (
            dataclasses.replace(out, advantages=out.advantages * float("nan"))
            if len(calls) - 1 in bad_steps
            else out
        )

    monkeypatch.setattr(rl_step_mod, "step_advantages", poisoned)
    args = BASE + [
        "context.stages.0.steps=4",
        "context.stages.0.max_response_len=12",
        "trainer.max_bad_steps=2",
        "trainer.save_every=1",
        "trainer.keep_last=0",
    ]
    bad_steps.update({1})
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    train_mod.train(to_typed(compose_cfg(args)), tmp_path / "one")
    rl = [r for r in _rows(tmp_path / "one") if "actor/pg_loss" in r]
    assert [r["train/skipped_steps"] for r in rl] == [0, 1, 1, 1]
    assert [r["actor/optimizer_steps"] for r in rl] == [1, 0, 1, 1] and rl[1][
        "actor/skipped_updates"
    ] == 1
    # two bad steps in a row stop the run with a checkpoint of the last good parameters
    calls.clear()
    bad_steps.update({2})
    with pytest.raises(faults.Stopped) as e:
        train_mod.train(to_typed(compose_cfg(args)), tmp_path / "two")
    assert e.value.exit_code == faults.NONFINITE_EXIT and "trainer.max_bad_steps=2" in str(e.value)
    saved = checkpoint.complete_checkpoints(tmp_path / "two")
    assert (
        saved[-1].name == "step_00000003"
        and checkpoint.read_state(saved[-1])["reason"] == "nonfinite"
    )
    assert "step_00000003" in str(e.value) and not (tmp_path / "two" / "final").exists()

    mcfg = to_typed(compose_cfg(args)).model

    def params(path):
        m = load_model(resolve_path(mcfg), mcfg)
        distributed.shard(m, dist1)
        checkpoint.load(path, m, torch.optim.AdamW(m.parameters()), dist1)
        return {k: v.full_tensor() for k, v in m.state_dict().items()}

    good, last = (
        params(saved[0]),
        params(saved[-1]),
    )  # after step 0, and after the two skipped steps
    assert all(torch.equal(good[k], last[k]) for k in good)


def test_boundary_resets_the_optimizer_only_when_asked(dist1):
    from types import SimpleNamespace

    from skyexp.rl.state import Counters, Live

    cfg = to_typed(compose_cfg(BASE + ["context=sky_t1_mini"]))
    model = torch.nn.Linear(2, 1)
    for reset in (False, True):
        cfg.context.reset_optimizer = reset
        opt, _ = boundaries.make_optimizer(cfg, model)
        model(torch.ones(1, 2)).sum().backward()
        opt.step()
        logged = []
        run = SimpleNamespace(
            cfg=cfg,
            d=dist1,
            counters=Counters(rl_step=5),
            log=logged.append,
            opt=opt,
            live=Live(boundaries.make_sampler(cfg, [], 0, 1), {"a": (1, 1)}),
        )
        boundaries.enter_stage(run, plan_run(cfg).stages[1])
        assert bool(opt.state) is not reset and run.live.solved == {}
        assert logged == [{"train/stage": 1, "train/max_response_len": 16384, "train/rl_step": 5}]
