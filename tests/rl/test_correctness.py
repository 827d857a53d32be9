"""Regression tests for issue 17, an audit of the RL maths against verl, TRL, OpenRLHF and the
papers:
1. KL in the reward + masked truncated rows: every row of a training group gets its log-probs;
2. equal-reward groups get exactly 0 advantage in float32;
3. REINFORCE++ with the KL in the reward is the paper's token-level estimator;
4. the ratio's numerical-safety cap changes no gradient the PPO objective defines.
Expected numbers are computed by hand in the comments (or quoted from the issue)."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from conftest import algorithm, estimator

from skyexp.algos.advantages import (
    ADVANTAGES,
    reinforce_pp,
    reinforce_pp_returns,
    reinforce_pp_tokens,
)
from skyexp.algos.losses import (
    LOG_RATIO_CAP,
    Normalisers,
    clipped_policy_loss,
    token_logprobs,
    token_mean,
)
from skyexp.config import ModelConfig
from skyexp.rl.advantage import step_advantages

# ---- 1. KL penalty in the reward with masked (truncated) rows ----


def _single_token_kl(kl: list[float]):
    """k1 log-probs whose per-sequence KL is `kl`: one response token per row, ref = 0."""
    logp = torch.tensor(kl)[:, None]
    return logp, torch.zeros_like(logp), torch.ones_like(logp)


def test_kl_in_reward_advantages_with_masked_rows_hand_values(dist1):
    """The issue's case: rewards [0, 1, 0, 1], rows 0 and 2 truncated and masked (weight 0) but in
    the
    group's baseline, GRPO, beta = 0.05. With the true per-sequence KL [0.998, 0.15, 0.158, 0.37]:
      r' = r - 0.05 KL = [-0.0499, 0.9925, -0.0079, 0.9815], mean 0.47905,
      centred [-0.52895, 0.51345, -0.48695, 0.50245], std (n-1) = sqrt(1.032995 / 3) = 0.586798,
      A = [-0.90141, 0.87500, -0.82984, 0.85626]   (the trained rows 1 and 3: 0.875 / 0.856).
    Reference log-probs left at 0 on the masked rows gave KL [4286.5, 0.15, 86.7, 0.37] and 0.52 /
    0.52."""
    a = algorithm(advantage="grpo", kl_coef=0.05, kl_mode="reward", kl_estimator="k1")
    rewards, train = torch.tensor([[0.0, 1.0, 0.0, 1.0]]), torch.tensor([True])
    adv = step_advantages(
        a, rewards, train, *_single_token_kl([0.998, 0.15, 0.158, 0.37]), dist1.device
    ).advantages
    assert adv.tolist() == pytest.approx([-0.90141, 0.87500, -0.82984, 0.85626], abs=1e-4)
    broken = step_advantages(
        a, rewards, train, *_single_token_kl([4286.5, 0.15, 86.7, 0.37]), dist1.device
    ).advantages
    assert broken[[1, 3]].tolist() == pytest.approx([0.5165, 0.5164], abs=1e-3)


@pytest.mark.slow
def test_rl_step_gives_masked_rows_old_and_reference_logprobs(tmp_path, monkeypatch):
    """The real step with the KL in the reward, overlong filtering and recomputed old log-probs:
    rows 0, 2, ... of every group are marked truncated (so masked); the advantages still see old
    and reference log-probs on every response token of every row of the groups that train. The
    run is REINFORCE++, so the update and the metrics also take its per-token advantages [G*n,
    R]."""
    from test_config import compose_cfg

    import skyexp.rl.step as step_mod
    import skyexp.train as train_mod
    from skyexp.config import to_typed

    seen = {}
    real_collect, real_adv = step_mod.collect_batch, step_mod.step_advantages

    def collect(*args):
        b = real_collect(*args)
        truncated = torch.arange(b.rollout.truncated.numel()) % 2 == 0
        # rewards with signal in every group (the untrained model scores 0 everywhere): the
        # advantages must then be non-zero, whatever the sampled answers
        rewards = (torch.arange(b.rewards.numel()) % 4 == 1).float().view_as(b.rewards)
        return dataclasses.replace(
            b, rollout=dataclasses.replace(b.rollout, truncated=truncated), rewards=rewards
        )

    def spy(a, rewards, train, logp, ref_logp, mask, device):
        seen.update(train=train, logp=logp, ref=ref_logp, mask=mask)
        out = real_adv(a, rewards, train, logp, ref_logp, mask, device)
        seen["adv"] = out.advantages
        return out

    monkeypatch.setattr(step_mod, "collect_batch", collect)
    monkeypatch.setattr(step_mod, "step_advantages", spy)
    cfg = to_typed(
        compose_cfg(
            [
                "algo=reinforce_pp",
                "algo.kl_coef=0.05",
                "algo.kl_mode=reward",
                "algo.kl_estimator=k1",
                "algo.mask_truncated=true",
                "algo.old_logprobs=recompute",
                "sft.steps=0",
                "context.stages.0.steps=1",
                "algo.batch_size=2",
                "algo.n=4",
                "context.stages.0.max_response_len=6",
                "eval.before=false",
                "eval.after=false",
                "logger=local",
                "logger.progress=false",
                "trainer.save_final=false",
                "trainer.micro_batch_size=8",
            ]
        )
    )
    summary = train_mod.train(cfg, tmp_path)
    assert summary["rl_steps"] == 1
    rows = seen["train"].repeat_interleave(4)
    assert rows.any()
    tokens = seen["mask"][rows] > 0
    assert (seen["ref"][rows][tokens] != 0).all() and (seen["logp"][rows][tokens] != 0).all()
    assert seen["adv"].shape == seen["mask"].shape and (seen["adv"][rows][tokens] != 0).any()


# ---- 2. equal-reward groups: exactly zero in float32 ----


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
@pytest.mark.parametrize("value", [1.2, 0.7, -1.99])
def test_equal_non_dyadic_rewards_give_exactly_zero(name, value):
    # n = 8 rewards of 1.2 in float32: the mean is off by ~1e-7; divided by std + 1e-6 that was
    # +0.1057 for every sample under grpo (0.7 -> 0.056, -1.99 -> -0.106)
    r = torch.full((1, 8), value)
    assert torch.equal(estimator(name)(r), torch.zeros_like(r))


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_equal_reward_groups_are_zero_over_a_sweep(name):
    """Values from -3 to 3 (and a few non-dyadic ones) x n = 2..16, each equal group beside one
    informative group (so batch statistics are not degenerate): every equal group exactly 0."""
    values = torch.cat(
        [torch.linspace(-3, 3, 241), torch.tensor([0.1, 0.3, 1 / 3, 2 / 3, 1e-3, 123.456, -7.77])]
    )
    for n in range(2, 17):
        informative = (torch.arange(n) == 0).float()[
            None
        ]  # one of n correct: no sample at the mean
        r = torch.cat([values[:, None].expand(-1, n), informative])
        adv = estimator(name)(r)
        assert torch.equal(adv[:-1], torch.zeros_like(adv[:-1])), n
        # best-of-group (and pass@k forms with k > 1) give wrong samples exactly 0 by design
        assert (
            (adv[-1] != 0).any()
            if name in ("passk_best", "passk_chen", "pkpo")
            else (adv[-1] != 0).all()
        )
    # reinforce_pp with n = 1 (the original form, batch baseline): a batch of equal rewards is 0
    assert torch.equal(reinforce_pp(torch.full((8, 1), 1.2), adv_eps=1e-6), torch.zeros(8, 1))


def test_only_exactly_equal_groups_are_zeroed():
    # one reward d = 1e-3 above the others: a real difference, which GRPO scales up to O(1) as its
    # formula does: mean 1.2 + d/8, centred +7d/8 and -d/8, std (n-1) = d/sqrt(8) -> 7 sqrt(8) / 8
    r = torch.full((1, 8), 1.2)
    r[0, 0] = 1.201
    adv = estimator("grpo", adv_eps=0.0)(r)
    assert adv[0, 0].item() == pytest.approx(7 / 8 * 8**0.5, rel=1e-3) and (adv[0, 1:] < 0).all()


# ---- 3. REINFORCE++ with the KL in the reward: the paper's token-level form ----

# The issue's case: one group, rewards [1, 0, 0], response masks [1,1,1], [1,1,0], [1,1,1],
# per-token
# k1 KL [0.1, 0.2, 3.0], [0.05, 0.05, -], [0, 0, 0], beta = 0.1.
REWARDS = torch.tensor([[1.0, 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
KL = torch.tensor([[0.1, 0.2, 3.0], [0.05, 0.05, 0.0], [0.0, 0.0, 0.0]])


def test_reinforce_pp_token_returns_hand_values():
    # group-centred outcome R' = [2/3, -1/3, -1/3] at the last token, -0.1 KL_t on every token:
    # seq 0: r = [-0.01, -0.02, -0.3 + 0.66667] -> returns-to-go [0.33667, 0.34667, 0.36667]
    # seq 1: r = [-0.005, -0.005 - 0.33333]      -> [-0.34333, -0.33833]
    # seq 2: r = [0, 0, -0.33333]                -> [-0.33333] * 3
    g = reinforce_pp_returns(REWARDS, KL, MASK, 0.1)
    expected = [[0.33667, 0.34667, 0.36667], [-0.34333, -0.33833, 0.0], [-1 / 3] * 3]
    assert g.tolist() == [pytest.approx(row, abs=1e-5) for row in expected]


def test_reinforce_pp_tokens_issue_numbers():
    # whitening over the 8 response tokens: mean -0.63167 / 8 = -0.078958; deviations
    # [0.415625, 0.425625, 0.445625], [-0.264375, -0.259375], [-0.254375] * 3; population variance
    # 0.883772 / 8 = 0.110472, std 0.332373 -> the issue's (OpenRLHF's reinforce_baseline) values
    adv = reinforce_pp_tokens(REWARDS, KL, MASK, 0.1)
    expected = [[1.2505, 1.2806, 1.3407], [-0.7954, -0.7804, 0.0], [-0.7653] * 3]
    assert adv.tolist() == [pytest.approx(row, abs=1e-4) for row in expected]


def test_sequence_form_is_the_former_estimator():
    # reinforce_pp_seq: r - 0.1 * sum_t KL_t = [0.67, -0.01, 0], centred [0.45, -0.23, -0.22],
    # rms sqrt(0.30380 / 3) = 0.318224 -> one advantage per sequence [1.414, -0.723, -0.691]
    adv = estimator("reinforce_pp_seq", adv_eps=0.0)(REWARDS - 0.1 * (KL * MASK).sum(-1)[None])
    assert adv[0].tolist() == pytest.approx([1.41411, -0.72276, -0.69134], abs=1e-4)


def test_reinforce_pp_tokens_single_sample_form():
    # n = 1, beta = 0: rewards [1, 0] with 1 and 3 response tokens -> returns [1], [0, 0, 0];
    # token mean 0.25, population std sqrt((0.5625 + 3 * 0.0625) / 4) = 0.43301 -> [1.7321],
    # [-0.5774] * 3
    mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    adv = reinforce_pp_tokens(torch.tensor([[1.0], [0.0]]), torch.zeros(2, 3), mask, 0.0)
    assert adv.tolist() == [
        pytest.approx([1.73205, 0.0, 0.0], abs=1e-4),
        pytest.approx([-0.57735] * 3, abs=1e-4),
    ]


def test_step_advantages_routes_reinforce_pp_by_kl_mode(dist1):
    """kl_mode=reward: per-token [G*n, R] from the sampler / reference log-probs (k1), statistics
    over
    the training groups only; kl_mode=loss: the sequence form [G*n]."""
    ref = torch.zeros(6, 3)
    logp = torch.cat([KL, torch.full((3, 3), 9.0)])  # a second group that does not train: ignored
    mask = torch.cat([MASK, torch.ones(3, 3)])
    rewards, train = (
        torch.cat([REWARDS, torch.tensor([[5.0, -5.0, 0.0]])]),
        torch.tensor([True, False]),
    )
    a = dict(advantage="reinforce_pp", kl_coef=0.1, kl_mode="reward", kl_estimator="k1")
    adv = step_advantages(algorithm(**a), rewards, train, logp, ref, mask, dist1.device).advantages
    assert adv.shape == (6, 3) and torch.equal(adv[3:], torch.zeros(3, 3))
    assert torch.allclose(adv[:3], reinforce_pp_tokens(REWARDS, KL, MASK, 0.1), atol=1e-6)
    seq = step_advantages(
        algorithm(**{**a, "kl_mode": "loss"}), rewards, train, logp, ref, mask, dist1.device
    ).advantages
    assert seq.shape == (6,) and seq[:3].tolist() == pytest.approx(
        [2**0.5, -(2**0.5) / 2, -(2**0.5) / 2], abs=1e-5
    )
    # the sequence-level form keeps the former estimator with the KL in the reward
    old = step_advantages(
        algorithm(**{**a, "advantage": "reinforce_pp_seq"}),
        rewards,
        train,
        logp,
        ref,
        mask,
        dist1.device,
    ).advantages
    assert old[:3].tolist() == pytest.approx([1.41411, -0.72276, -0.69134], abs=1e-4)


@pytest.fixture()
def rollout(tiny_dir):
    from skyexp.model.loading import load_model, load_tokenizer
    from skyexp.rollout.hf import HFEngine

    tok = load_tokenizer(str(tiny_dir), ModelConfig())
    policy = load_model(str(tiny_dir), ModelConfig())
    eng = HFEngine(
        load_model(str(tiny_dir), ModelConfig()), tok.eos_token_id, tok.pad_token_id, seed=0
    )
    torch.manual_seed(3)
    prompts = tok(["Compute 1+1.\n", "Compute 4*4.\n"], add_special_tokens=False)["input_ids"]
    return policy, eng.generate(prompts, 3, 6, 1.0)


def test_update_takes_per_token_advantages(rollout, dist1):
    """rl_update with advantages [N, R]: a broadcast per-sequence advantage gives exactly the
    per-sequence update; genuinely per-token advantages give the plain full-batch token-mean
    step (SGD, lr 1) with micro-batches of 4, one filtered row and an all-zero row skipped."""
    from conftest import loss_spec, update_settings

    from skyexp.model.forward import response_logits
    from skyexp.rl.update import UpdateBatch, rl_update

    policy, ro = rollout
    torch.manual_seed(0)
    weights = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    seq_adv = torch.tensor([0.5, -0.5, 0.3, 1.0, 0.0, -1.0])

    def step(adv):
        p = copy.deepcopy(policy)
        rl_update(
            p,
            torch.optim.SGD(p.parameters(), lr=1.0),
            UpdateBatch(ro, adv, weights),
            loss_spec(),
            update_settings(4, device=dist1.device),
        )
        return p

    def same(p, q, atol):
        return all(torch.allclose(x, y, atol=atol) for x, y in zip(p.parameters(), q.parameters()))

    assert same(step(seq_adv), step(seq_adv[:, None].expand_as(ro.response_mask).clone()), 0.0)
    tok_adv = torch.randn(ro.response_mask.shape) * ro.response_mask
    tok_adv[4] = 0.0
    expected = copy.deepcopy(policy)
    logits = response_logits(expected, ro.sequences, ro.attention_mask, ro.prompt_len)
    logp = token_logprobs(logits, ro.responses, ro.temperature)
    lm = ro.response_mask * weights[:, None]
    pg, _ = clipped_policy_loss(logp, ro.logprobs, tok_adv)
    token_mean(pg, lm, Normalisers(float(lm.sum()), float(weights.sum()), lm.shape[1])).backward()
    with torch.no_grad():
        for w in expected.parameters():
            w -= w.grad
    got = step(tok_adv)
    assert same(got, expected, 2e-5) and not same(got, policy, 0.0)


# ---- 4. the ratio's safety cap ----


def _loss_and_grad(log_ratio: float, adv: float, clip_low=0.2, clip_high=0.2, clip_c=0.0):
    lp = torch.tensor([[log_ratio]], requires_grad=True)
    loss, st = clipped_policy_loss(
        lp, torch.zeros(1, 1), torch.tensor([[adv]]), clip_low, clip_high, clip_c
    )
    loss.sum().backward()
    return loss.item(), lp.grad.item(), st


def test_small_ratio_keeps_its_gradient_for_positive_advantage():
    # A = 1, r = 0.05 (below the former clamp 1/ratio_max = 0.1): L = max(-0.05, -0.8) = -0.05,
    # dL/dlogp = -A r = -0.05, as TRL and verl (the clamp gave -0.10 with gradient 0)
    loss, grad, _ = _loss_and_grad(math.log(0.05), 1.0)
    assert loss == pytest.approx(-0.05) and grad == pytest.approx(-0.05)
    # A = 2: scaled by A
    loss, grad, _ = _loss_and_grad(math.log(0.05), 2.0)
    assert loss == pytest.approx(-0.1) and grad == pytest.approx(-0.1)


def test_large_ratio_negative_advantage_is_bounded_only_by_the_dual_clip():
    # A = -1, r = 20: PPO's L = max(20, 1.2) = 20 with gradient 20 (the former clamp at 10 gave 10,
    # 0)
    loss, grad, st = _loss_and_grad(math.log(20.0), -1.0)
    assert (
        loss == pytest.approx(20.0)
        and grad == pytest.approx(20.0)
        and st["dual_clipped"].item() == 0
    )
    # with the dual clip c = 10: held at -A c = 10, no gradient, counted as dual-clipped
    loss, grad, st = _loss_and_grad(math.log(20.0), -1.0, clip_c=10.0)
    assert loss == pytest.approx(10.0) and grad == 0.0 and st["dual_clipped"].item() == 1


def test_overflow_cap_keeps_everything_finite():
    # log-ratio 1000 would make r = inf: A = 0 -> 0 * inf = NaN without the cap; capped at e^20
    loss, grad, _ = _loss_and_grad(1000.0, 0.0)
    assert loss == 0.0 and grad == 0.0
    loss, grad, _ = _loss_and_grad(1000.0, -1.0)
    assert loss == pytest.approx(math.exp(LOG_RATIO_CAP), rel=1e-5) and grad == 0.0
    loss, grad, _ = _loss_and_grad(
        1000.0, 1.0
    )  # A > 0 far above 1 + clip_high: the PPO clip's flat value
    assert loss == pytest.approx(-1.2) and grad == 0.0
    loss, grad, _ = _loss_and_grad(-1000.0, 1.0)  # r underflows to 0: L = -A r = 0, gradient 0
    assert loss == 0.0 and grad == 0.0


@pytest.mark.parametrize(
    "clip",
    [(0.2, 0.2, 0.0), (0.2, 0.28, 0.0), (1.0, 1.0, 0.0), (0.2, 0.2, 3.0)],
    ids=["ppo", "clip_higher", "clip_cov_range", "dual_clip"],
)
def test_gradient_equals_the_unclamped_ppo_objective(clip):
    """Over log-ratios -12..12 and advantages of both signs, value and gradient equal the PPO
    objective written without any clamp (in float64)."""
    clip_low, clip_high, clip_c = clip
    x = torch.linspace(-12, 12, 241, dtype=torch.float64)
    for a in (-2.0, -0.5, 0.5, 2.0):
        adv = torch.full_like(x, a)
        lp = x.clone().float().requires_grad_(True)
        loss, _ = clipped_policy_loss(
            lp[None], torch.zeros(1, x.numel()), adv.float()[None], clip_low, clip_high, clip_c
        )
        loss.sum().backward()
        ref_x = x.clone().requires_grad_(True)
        r = torch.exp(ref_x)
        ref = torch.maximum(-adv * r, -adv * r.clamp(1 - clip_low, 1 + clip_high))
        if clip_c > 1:
            ref = torch.where(adv < 0, torch.minimum(ref, -adv * clip_c), ref)
        ref.sum().backward()
        assert torch.allclose(loss.double()[0], ref.detach(), rtol=1e-5, atol=1e-6), a
        assert torch.allclose(lp.grad.double(), ref_x.grad, rtol=1e-4, atol=1e-6), a
