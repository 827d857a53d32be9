"""Every algo preset composes and runs a few RL steps on the tiny model, in this process, paired
so that every entropy mechanism, reward preset and KL mode also runs once."""

from __future__ import annotations

import json
import math

import pytest
from conftest import tiny
from test_config import compose_cfg

from skyexp.config import to_typed

TINY = tiny(
    "sft=arith_warmup",
    "sft.steps=6",
    "sft.batch_size=16",
    "trainer.save_final=false",
    "trainer.micro_batch_size=8",
)

RUNS = {
    "rloo": ["algo=rloo", "entropy=fixed", "entropy.coef=0.01"],
    "grpo": [
        "algo=grpo",
        "entropy=adaptive",
        "entropy.target=9.0",
        "algo.kl_coef=0.05",
    ],  # KL loss; bonus on
    "dr_grpo": [
        "algo=dr_grpo",
        "entropy=high_entropy_tokens",
        "reward=format",
        "reward.format_think=false",
    ],
    "dapo": ["algo=dapo", "reward=dapo", "entropy=clip_cov", "algo.max_gen_batches=2"],
    "skywork_or1": ["algo=skywork_or1", "entropy=adaptive", "temperature=t1_0"],
    "reinforce_pp": [
        "algo=reinforce_pp",
        "algo.kl_coef=0.05",
        "algo.kl_mode=reward",
        "algo.kl_estimator=k1",
        "reward=cosine",
    ],
    # the barely trained model solves nothing: CE-GPPO's accuracy filter would drop every group,
    # so the smoke runs it unfiltered; AER's target far above the entropy switches the bonus on
    "ce_gppo": ["algo=ce_gppo", "algo.filter_groups=none", "algo.mini_batches=2", "entropy=aer",
                "entropy.aer_rho=50"],
    "simko": ["algo=simko", "entropy=aer", "entropy.aer_rho=50", "trainer.logprob_chunk=64"],
    "ppo_offpolicy": [
        "algo=ppo_offpolicy",
        "entropy=kl_cov",
        "algo.old_logprobs=recompute",
        "reward=cosine",
    ],
}


def _rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "actor/pg_loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUNS))
def test_preset_runs(name, tmp_path):
    from skyexp.train import train

    cfg = to_typed(compose_cfg(RUNS[name] + TINY))
    assert cfg.algo.name == name
    summary = train(cfg, tmp_path)
    assert summary["rl_steps"] == 2
    rl = _rows(tmp_path)
    assert [r["train/rl_step"] for r in rl] == [0, 1]
    for r in rl:
        for key in (
            "actor/entropy",
            "actor/entropy_trained",
            "critic/score/mean",
            "response_length/mean",
            "batch/solve_none",
            "batch/gen_batches",
            "actor/pg_clipfrac",
            "actor/ppo_kl",
            "actor/grad_norm",
        ):
            assert r.get(key) is not None and math.isfinite(r[key]), (key, r.get(key))
        assert r["actor/entropy"] > 0
        for term, w in cfg.reward.terms.items():
            assert (f"reward/{term}/mean" in r) == (w != 0), term
    last = rl[-1]
    if name == "rloo":
        assert all(r["actor/entropy_coeff"] == 0.01 and r["actor/optimizer_steps"] == 1 for r in rl)
    if name == "grpo":
        # entropy is far below the target 9: the bonus switches on at step 1 (c_0 = 0, c_1 = delta)
        assert [r["actor/entropy_coeff"] for r in rl] == [0.0, pytest.approx(1e-4)]
        assert last["actor/kl_loss"] >= 0 and last["critic/kl_coeff"] == 0.0
    if name in ("ce_gppo", "simko"):
        # AER: c_0 = 0, c_1 = delta; every prompt is hard (accuracy 0 <= 0.5)
        assert [r["actor/entropy_coeff"] for r in rl] == [0.0, pytest.approx(5e-4)]
        assert all(r["actor/aer_hard_frac"] == 1.0 for r in rl)
    if name == "simko":  # the bonus makes step 1 train: SimKO's own shares are logged
        assert 0 <= last["actor/simko_boost_frac"] <= 1 and "actor/simko_penalty_frac" in last
    if name == "dapo":
        # the barely trained model solves no group: dynamic sampling stops at the cap
        assert all(r["batch/gen_batches"] in (1, 2) for r in rl)
        assert all(r["batch/gen_batches"] == 2 for r in rl if r["batch/train_groups"] < 4)
    if name == "reinforce_pp":
        assert (
            "critic/kl" in last and last["critic/kl_coeff"] == 0.05 and "actor/kl_loss" not in last
        )
    if name == "ppo_offpolicy":
        # cosine rewards differ with length: every mini-batch trains -> 2 epochs x 4 mini-batches
        assert any(r["actor/optimizer_steps"] == 8 for r in rl)
        assert all(
            r["rollout/logprob_diff"] < 1e-3 for r in rl
        )  # hf engine log-probs match the trainer's
    if name in ("dr_grpo", "dapo", "ppo_offpolicy"):
        assert all("actor/token_rule_frac" in r for r in rl)


@pytest.mark.slow
def test_decoupled_off_policy_runs(tmp_path):
    """algo.off_policy=decoupled in the real loop (pi_prox recomputed, 2 epochs x 2 mini-batches):
    its metrics are logged every step; with the hf engine pi_prox = pi_sampler up to rounding, so
    every weight is ~1 and the cap drops nothing. Random rewards give the untrained groups
    advantages, so the update steps."""
    from skyexp.train import train

    extra = ["algo.off_policy=decoupled", "algo.old_logprobs=recompute", "algo.ppo_epochs=2",
             "algo.mini_batches=2", "reward=random"]
    train(to_typed(compose_cfg(extra + TINY)), tmp_path)
    rl = _rows(tmp_path)
    assert [r["train/rl_step"] for r in rl] == [0, 1]
    assert any(r["actor/optimizer_steps"] > 0 for r in rl)
    for r in rl:
        assert r["actor/off_policy_capped_frac"] == 0.0
        assert r["actor/off_policy_weight_mean"] == pytest.approx(1.0, abs=1e-4)
        assert "rollout/is_weight_mean" not in r
