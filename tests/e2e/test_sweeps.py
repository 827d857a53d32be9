"""Tiny sweeps run as Hydra multiruns: runs grouped in W&B (as the run reports it in
wandb_run.json), named by their overrides, with complete metrics.jsonl and tables; each sweep's
knob reaches its runs."""

from __future__ import annotations

import json

import pytest
from conftest import run_skyexp
from omegaconf import OmegaConf

from skyexp.analysis import load_runs, load_table, rl_frame

pytestmark = pytest.mark.slow


def test_tiny_entropy_collapse_runs_share_a_wandb_group(tiny_sweep):
    runs = load_runs(tiny_sweep)
    assert [r.name for r in runs] == [
        "entropy=none,temperature=t1_0",
        "entropy=adaptive,temperature=t1_0",
    ]
    for run in runs:
        wb = run.wandb  # wandb_run.json: read back from the W&B run object (what W&B stored)
        assert (
            wb["group"] == "tiny_entropy_collapse"
            and wb["name"] == run.name
            and wb["mode"] == "offline"
        )
        assert wb["job_type"] == "sweep" and wb["tags"] == ["tiny", "entropy_collapse"]
        assert (run.path / "wandb").is_dir() and wb["dir"].endswith(wb["id"])
        assert (
            len(run.summary["git_commit"]) >= 40
            and run.config["entropy"]["name"] == run.name.split(",")[0].split("=")[1]
        )
        # the local record is complete
        rl = run.metrics[run.metrics["actor/entropy"].notna()]
        assert rl["train/rl_step"].tolist() == [0, 1]
        assert run.summary["rl_steps"] == 2 and "pass@4_after" in run.summary
        table = load_table(run, "samples/completions")
        assert table["rl_step"].tolist() == [0] * 4 + [1] * 4 and all(
            t.startswith("Compute") for t in table["prompt"]
        )
        hist = load_table(run, "actor/entropy_hist")
        assert hist["step"].tolist() == rl["step"].tolist() and all(
            len(c) == 64 for c in hist["counts"]
        )
    # the swept controller acts: adaptive switches its bonus on (the smoke form's target is far
    # above the entropy), none never does
    coef = rl_frame(runs).groupby("run", sort=False)["actor/entropy_coeff"].apply(list)
    assert coef["entropy=none,temperature=t1_0"] == [0.0, 0.0]
    assert coef["entropy=adaptive,temperature=t1_0"] == [0.0, pytest.approx(2e-3)]  # entropy.delta
    # the sweep trains: with its bonus in force the adaptive arm's step 1 updates whatever the
    # rewards. (Step 0, and the other arm, train only where some group got unequal rewards, which a
    # 100-step warm-up does not guarantee in 4 groups; the full sweep's 500-step warm-up trained at
    # every step of both arms: docs/experiments.md.)
    steps = rl_frame(runs).groupby("run", sort=False)["actor/optimizer_steps"].apply(list)
    assert steps["entropy=adaptive,temperature=t1_0"][1] == 1, steps


# the smoke form of every tiny sweep (each runs 30 steps from the overlay's 500-step warm-up): a
# 100-step warm-up shared with smoke_entropy_collapse through the session's cache, 2 RL steps
QUICK = [
    "eval.before=false",
    "eval.after=false",
    "logger.mode=disabled",
    "sft.steps=100",
    "algo.n=2",
    "algo.batch_size=4",
    "context.stages.0.steps=2",
    "context.stages.0.max_response_len=16",
]


def _rl_rows(run) -> list[dict]:
    return [
        json.loads(x)
        for x in (run.path / "metrics.jsonl").read_text().splitlines()
        if "actor/pg_loss" in x
    ]


# (sweep, swept key, extra overrides, check of a job's RL rows given its value)
OTHERS = [
    # a fixed bonus and no group filter give every mini-batch a gradient on the untrained model:
    # optimizer steps per RL step = ppo_epochs x 2 mini-batches exactly
    (
        "tiny_offpolicy",
        "algo.ppo_epochs",
        ["entropy=fixed", "algo.filter_groups=none"],
        lambda rl, v: [r["actor/optimizer_steps"] for r in rl] == [2 * int(v)] * 2,
    ),
    # the KL loss (and its reference policy) exists only in the job with a coefficient
    (
        "tiny_kl",
        "algo.kl_coef",
        [],
        lambda rl, v: all(("actor/kl_loss" in r) == (float(v) > 0) for r in rl),
    ),
    # on-policy with one mini-batch nothing clips in 2 steps: the check is that each job got its
    # value
    ("tiny_clip_higher", "algo.clip_high", [], None),
    # the random-reward control logs its own term (summary.json's guard is checked below)
    (
        "tiny_clip_asymmetry",
        "algo.clip_low",
        [],
        lambda rl, v: all("reward/random/mean" in r for r in rl),
    ),
]


@pytest.mark.parametrize("name,key,extra,check", OTHERS, ids=[o[0] for o in OTHERS])
def test_other_tiny_sweeps_run_two_jobs(tmp_path, name, key, extra, check):
    r = run_skyexp(["-m", f"+sweep={name}", *QUICK, *extra], tmp_path, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    (sweep,) = list((tmp_path / "out").glob("*/*"))
    runs = load_runs(sweep)
    values = [str(OmegaConf.select(OmegaConf.create(run.config), key)) for run in runs]
    assert len(runs) == 2 and len(set(values)) == 2, values
    for run, v in zip(runs, values):
        assert f"{key}={v}" in run.name.split(",") and run.config["logger"]["group"] == name
        rl = _rl_rows(run)
        assert [x["train/rl_step"] for x in rl] == [0, 1]
        assert check is None or check(rl, v), (run.name, rl)
        # the guard (its W&B name prefix: tests/rewards/test_reward_terms.py)
        random_control = name == "tiny_clip_asymmetry"
        summary = json.loads((run.path / "summary.json").read_text())
        assert summary["reward_random"] is random_control
