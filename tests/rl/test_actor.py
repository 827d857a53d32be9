"""The policy update: learns a bandit, and its gradient does not depend on the micro-batch split."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import loss_spec, update_settings

from skyexp.algos.advantages import rloo
from skyexp.config import AlgoConfig, ModelConfig
from skyexp.model.layout import pack
from skyexp.model.loading import load_model, load_tokenizer
from skyexp.rl.update import UpdateBatch, UpdateSettings, rl_update, sft_step
from skyexp.rollout.hf import HFEngine


@pytest.fixture()
def setup(tiny_dir, dist1):
    tok = load_tokenizer(str(tiny_dir), ModelConfig())
    policy = load_model(str(tiny_dir), ModelConfig())
    eng = HFEngine(
        load_model(str(tiny_dir), ModelConfig()), tok.eos_token_id, tok.pad_token_id, seed=0
    )
    return tok, policy, eng, dist1


def test_rl_update_learns_a_bandit(setup):
    """Reward 1 when the first response token is '7': its rate must rise from ~0."""
    tok, policy, eng, d = setup
    target = tok("7", add_special_tokens=False)["input_ids"][0]
    prompts = [tok("Compute 3+4.\n", add_special_tokens=False)["input_ids"]] * 8
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    rates = []
    for _ in range(30):
        ro = eng.generate(prompts, 8, 3, 1.0)
        r = (ro.responses[:, 0] == target).float().view(8, 8)
        rates.append(r.mean().item())
        stats = rl_update(
            policy,
            opt,
            UpdateBatch(ro, rloo(r).flatten(), torch.ones(64)),
            loss_spec(),
            update_settings(64, 1.0, device=d.device),
        )
        eng.sync_weights(policy)
    assert sum(rates[:3]) / 3 < 0.1 and sum(rates[-3:]) / 3 > 0.5
    assert stats.entropy > 0 and stats.num_tokens == 64 * 3


def test_micro_batch_split_does_not_change_the_update(setup):
    tok, policy, eng, d = setup
    prompts = tok(["Compute 1+1.\n", "Compute (2*3)-1.\n"], add_special_tokens=False)["input_ids"]
    ro = eng.generate(prompts, 4, 10, 1.0)
    adv = torch.randn(8)
    weights = torch.tensor([1.0, 1, 1, 0, 1, 1, 1, 1])  # one filtered sequence
    results = []
    for mb in (8, 1, 3):
        p = copy.deepcopy(policy)
        opt = torch.optim.SGD(p.parameters(), lr=1.0)
        st = rl_update(
            p,
            opt,
            UpdateBatch(ro, adv, weights),
            loss_spec(coef=0.01),
            update_settings(mb, device=d.device),
        )
        results.append((p, st))
    base = dict(results[0][0].named_parameters())
    for p, st in results[1:]:
        for name, w in p.named_parameters():
            assert torch.allclose(w, base[name], atol=1e-6), name
        assert st.pg_loss == pytest.approx(results[0][1].pg_loss, abs=1e-6)
        assert st.entropy == pytest.approx(results[0][1].entropy, abs=1e-5)
    assert any(not torch.equal(w, dict(policy.named_parameters())[n]) for n, w in base.items())


def test_sft_step_lowers_the_loss_on_response_tokens_only(setup):
    tok, policy, _, d = setup
    prompts = tok(["Compute 1+1.\n"] * 4, add_special_tokens=False)["input_ids"]
    responses = [
        r + [tok.eos_token_id]
        for r in tok(["1+1=2. \\boxed{2}"] * 4, add_special_tokens=False)["input_ids"]
    ]
    seq, attn, rmask, plen = pack(prompts, responses, tok.pad_token_id)
    assert rmask.sum() == 4 * len(responses[0])
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    losses = [
        sft_step(
            policy, opt, (seq, attn, rmask, plen), UpdateSettings(ForwardSettings(2, d.device), 1.0)
        )[0]
        for _ in range(15)
    ]
    assert losses[-1] < 0.5 * losses[0]


def test_skipping_zero_signal_rows_changes_nothing(setup):
    """With engine entropies, rows with zero advantage (or filtered) skip the forward pass; the
    update and the logged entropy equal those of the full pass."""
    import dataclasses

    tok, policy, eng, d = setup
    prompts = tok(
        ["Compute 1+1.\n", "Compute (2*3)-1.\n", "Compute 4*4.\n"], add_special_tokens=False
    )["input_ids"]
    ro = eng.generate(prompts, 4, 10, 1.0)
    assert ro.entropy is not None
    adv = torch.tensor([0.5, -0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, -1.0, 0.3, -0.3])
    weights = torch.tensor([1.0] * 8 + [0.0] * 2 + [1.0] * 2)
    out = []
    for r in (ro, dataclasses.replace(ro, entropy=None)):
        p = copy.deepcopy(policy)
        opt = torch.optim.SGD(p.parameters(), lr=1.0)
        out.append(
            (
                p,
                rl_update(
                    p,
                    opt,
                    UpdateBatch(r, adv, weights),
                    loss_spec(),
                    update_settings(4, device=d.device),
                ),
            )
        )
    (fast, s1), (full, s2) = out
    for (n, a), (_, b) in zip(fast.named_parameters(), full.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), n
    assert s1.entropy == pytest.approx(s2.entropy, abs=1e-4) and s1.pg_loss == pytest.approx(
        s2.pg_loss, abs=1e-6
    )
    assert s1.entropy_hist.numel() == s2.entropy_hist.numel() == int(ro.response_mask.sum())


# ---- the update against a from-scratch reference: normalisers, skipped rows, terms, old policy
# ----

from skyexp.algos.entropy import token_entropy  # noqa: E402
from skyexp.algos.kl import KL_ESTIMATORS  # noqa: E402
from skyexp.algos.losses import AGGREGATIONS, Normalisers, token_logprobs  # noqa: E402
from skyexp.algos.seq_losses import POLICY_LOSSES  # noqa: E402
from skyexp.algos.token_rules import TOKEN_RULES  # noqa: E402
from skyexp.config.names import config_params  # noqa: E402
from skyexp.model.forward import response_logits, sampling_view  # noqa: E402
from skyexp.model.layout import ForwardSettings  # noqa: E402


def reference_update(
    policy,
    ro,
    adv,
    weights,
    algo,
    coef=0.0,
    old=None,
    ent=None,
    ref=None,
    kl_coef=0.0,
    rule="none",
    params=None,
    max_len=None,
    isw=None,
):
    """The update written out plainly: every row of the mini-batch through one forward pass,
    old log-probs the sampler's for every epoch and mini-batch, SGD with lr 1."""
    p = copy.deepcopy(policy)
    opt = torch.optim.SGD(p.parameters(), lr=1.0)
    old = ro.logprobs if old is None else old
    ent = ro.entropy if ent is None else ent
    tr, params = TOKEN_RULES[rule], params or {}
    agg = AGGREGATIONS[algo.loss_agg]
    lm_all = ro.response_mask * weights[:, None]
    trained = (weights.view(-1, ro.n) > 0).any(-1).nonzero().squeeze(1)
    for _ in range(algo.ppo_epochs):
        for g in [trained[m :: algo.mini_batches] for m in range(algo.mini_batches)]:
            rows = (g[:, None] * ro.n + torch.arange(ro.n)).flatten()
            lm = lm_all[rows]
            adv_tok = adv[rows, None].expand_as(lm)
            torch.manual_seed(123)
            sel = (
                tr.select(adv_tok, old[rows], ent[rows], lm, **_own(tr.select, params))
                if tr.select
                else torch.zeros_like(lm, dtype=torch.bool)
            )
            logits = response_logits(p, ro.sequences[rows], ro.attention_mask[rows], ro.prompt_len)
            logp = token_logprobs(logits, ro.responses[rows], ro.temperature)
            norm = Normalisers(float(lm.sum()), float(weights[rows].sum()), max_len or lm.shape[1])
            clip = dict(
                clip_low=algo.clip_low,
                clip_high=algo.clip_high,
                clip_c=algo.clip_c,
                ratio_max=algo.ratio_max,
                ce_beta1=algo.ce_beta1,
                ce_beta2=algo.ce_beta2,
            )
            if tr.loss is not None:  # the token rule's loss replaces PPO's surrogate
                pg, _ = tr.loss(logp, old[rows], adv_tok, sel, **_own(tr.loss, {**clip, **params}))
            else:  # algo.policy_loss's: the whole row's mask, untrimmed
                seq = POLICY_LOSSES[algo.policy_loss].fn
                pg, _ = seq(logp, old[rows], adv_tok, lm, **_own(seq, clip))
            pg = pg if isw is None else pg * isw[rows]
            loss = agg(pg, lm, norm) - coef * agg(token_entropy(logits, ro.temperature), lm, norm)
            if kl_coef:
                loss = loss + kl_coef * agg(
                    KL_ESTIMATORS[algo.kl_estimator](logp, ref[rows]), lm, norm
                )
            loss.backward()
            opt.step()
            opt.zero_grad()
    return p


def _own(fn, params):
    """The entries of params that fn takes (each rule function takes only its own parameters)."""
    return {k: v for k, v in params.items() if k in config_params(fn)}


def _same(a, b, atol=2e-5):
    for (n, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(x, y, atol=atol), n


@pytest.fixture()
def batch(setup):
    tok, policy, eng, d = setup
    prompts = tok(
        ["Compute 1+1.\n", "Compute (2*3)-1.\n", "Compute 4*4.\n"], add_special_tokens=False
    )["input_ids"]
    torch.manual_seed(5)
    ro = eng.generate(prompts, 4, 10, 1.0)
    adv = torch.tensor(
        [0.5, -0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, -1.0, 0.3, -0.3]
    )  # group 1 all zero
    weights = torch.tensor([1.0] * 10 + [0.0, 1.0])  # one filtered row
    return policy, ro, adv, weights, d


@pytest.mark.parametrize("share", [False, True], ids=["per_row", "shared_prompts"])
@pytest.mark.parametrize(
    "case",
    [
        "plain",
        "entropy_bonus",
        "kl_loss",
        "seq-mean-token-sum-norm",
        "epochs_minibatches",
        "kl_cov",
        "clip_cov",
        "high_entropy_tokens",
        "rollout_is",
        "decoupled",
        "gspo",
        "gspo_token",
        "cispo",
        "ce_gppo",
    ],
)
def test_update_equals_reference(batch, case, share):
    """Micro-batches of 3 rows, zero-gradient rows skipped, global normalisers: the same parameters
    as
    the plain full-batch computation, for each term and token rule. kl_cov with noisy old log-probs
    gives zero-advantage rows a gradient: they must not be skipped. With shared prompts each
    micro-batch
    runs the prompt of each group it holds rows of once (groups of 4 split over micro-batches of
    3)."""
    policy, ro, adv, weights, d = batch
    algo, kw = AlgoConfig(), {}
    torch.manual_seed(9)
    noisy_old = ro.logprobs + 0.3 * torch.randn_like(ro.logprobs) * ro.response_mask
    if case == "entropy_bonus":
        kw = dict(coef=0.05)
    elif case == "kl_loss":
        kw = dict(ref=ro.logprobs - 0.2 * ro.response_mask, kl_coef=0.5)
    elif case == "seq-mean-token-sum-norm":
        algo, kw = AlgoConfig(loss_agg=case), dict(max_len=16)
    elif case == "epochs_minibatches":
        algo = AlgoConfig(ppo_epochs=2, mini_batches=2)
    elif case == "kl_cov":
        kw = dict(rule=case, params=dict(kl_cov_ratio=0.3, kl_cov_coef=1.0), old=noisy_old)
    elif case == "clip_cov":
        kw = dict(rule=case, params=dict(clip_cov_ratio=0.2, cov_low=-5.0, cov_high=5.0))
    elif case == "high_entropy_tokens":
        kw = dict(rule=case, params=dict(top_ratio=0.3))
    elif (
        case == "rollout_is"
    ):  # trainer's old log-probs differ from the sampler's: truncated-IS weights
        from skyexp.algos.rollout_is import token_is_weights

        kw = dict(
            old=noisy_old,
            isw=token_is_weights(noisy_old, ro.logprobs, ro.response_mask, rollout_is_cap=1.2),
        )
    elif case == "decoupled":  # PPO against pi_prox, weighted by pi_prox / pi_sampler, capped
        from skyexp.algos.off_policy import decoupled_weights

        algo = AlgoConfig(off_policy=case, old_logprobs="recompute", off_policy_cap=1.3,
                          ppo_epochs=2, mini_batches=2)
        isw = decoupled_weights(noisy_old, ro.logprobs, ro.response_mask, off_policy_cap=1.3)
        assert ((isw == 0) & (ro.response_mask > 0)).any()  # the cap drops some tokens
        kw = dict(old=noisy_old, isw=isw)
    elif case in (
        "gspo",
        "gspo_token",
        "cispo",
    ):  # sequence / clipped-weight ratios off-policy: 2 epochs x 2 mini-batches
        algo = AlgoConfig(
            policy_loss=case,
            ppo_epochs=2,
            mini_batches=2,
            clip_low=0.1,
            clip_high=0.1,
            loss_agg="token-mean" if case == "cispo" else "seq-mean-token-mean",
        )
        kw = dict(old=noisy_old)
    elif case == "ce_gppo":  # clipped tokens keep a scaled gradient, with the entropy bonus
        algo = AlgoConfig(
            policy_loss=case, ppo_epochs=2, mini_batches=2, clip_low=0.1, clip_high=0.1,
            ce_beta1=0.5, ce_beta2=2.0, loss_agg="seq-mean-token-sum-norm",
        )
        kw = dict(old=noisy_old, coef=0.05, max_len=16)
    expected = reference_update(policy, ro, adv, weights, algo, **kw)
    p = copy.deepcopy(policy)
    opt = torch.optim.SGD(p.parameters(), lr=1.0)
    torch.manual_seed(123)
    batch = UpdateBatch(
        ro, adv, weights, kw.get("old"), None, kw.get("ref"), kw.get("isw"), kw.get("max_len") or 0
    )
    spec = loss_spec(
        algo,
        kw.get("coef", 0.0),
        kw.get("kl_coef", 0.0),
        kw.get("rule", "none"),
        **kw.get("params", {}),
    )
    st = rl_update(
        p, opt, batch, spec, update_settings(3, algo=algo, device=d.device, share_prompts=share)
    )
    _same(p, expected)
    assert any(not torch.equal(a, b) for a, b in zip(p.parameters(), policy.parameters()))
    # groups are dealt to mini-batches in turn: with 2 of them, group 1 (all-zero advantages) sits
    # alone in one and gives no gradient, so that mini-batch takes no optimizer step (unless an
    # entropy bonus gives it one: ce_gppo)
    steps_per_epoch = 1 if algo.mini_batches == 2 and not kw.get("coef") else algo.mini_batches
    assert st.optimizer_steps == algo.ppo_epochs * steps_per_epoch
    if case == "kl_loss":
        assert st.kl_ref is not None and st.kl_ref > 0
    if case in ("kl_cov", "clip_cov", "high_entropy_tokens"):
        assert 0 < st.rule_frac < 1


def test_old_policy_is_the_sampler_for_every_minibatch(batch):
    """With 2 mini-batches x 2 epochs the later steps see ratios != 1 against the sampler (ppo_kl >
    0);
    the reference above uses the sampler's log-probs throughout and matches (previous test)."""
    policy, ro, adv, weights, d = batch
    adv = adv.clone()
    adv[4:8] = torch.tensor(
        [0.2, -0.2, 0.1, -0.1]
    )  # every group has signal: both mini-batches step
    p = copy.deepcopy(policy)
    algo = AlgoConfig(ppo_epochs=2, mini_batches=2)
    st = rl_update(
        p,
        torch.optim.SGD(p.parameters(), lr=1.0),
        UpdateBatch(ro, adv, weights),
        loss_spec(algo),
        update_settings(4, algo=algo, device=d.device),
    )
    assert st.ppo_kl != 0.0 and st.optimizer_steps == 4
    p1 = copy.deepcopy(policy)
    st1 = rl_update(
        p1,
        torch.optim.SGD(p1.parameters(), lr=1.0),
        UpdateBatch(ro, adv, weights),
        loss_spec(),
        update_settings(4, device=d.device),
    )
    assert abs(st1.ppo_kl) < 1e-5  # one on-policy step: the ratio is 1 up to float noise


def test_shared_prompt_logits_equal_the_plain_forward(batch):
    """Each prompt once, its KV cache indexed out to its group: the logits and the gradient of the
    plain forward pass over every row."""
    from skyexp.model.layout import groups_of as _groups

    policy, ro, *_ = batch
    rows = torch.tensor(
        [0, 1, 3, 4, 8, 9, 10]
    )  # groups of 2, 2 and 3 rows (skipped rows leave uneven groups)
    seq, attn = ro.sequences[rows], ro.attention_mask[rows]
    grads = []
    for groups in (None, _groups(rows, ro.n, True)):
        p = copy.deepcopy(policy)
        logits = response_logits(p, seq, attn, ro.prompt_len, groups)
        (logits * torch.linspace(-1, 1, logits.shape[-1])).sum().backward()
        grads.append((logits.detach(), [q.grad for q in p.parameters()]))
    (a, ga), (b, gb) = grads
    assert a.shape == b.shape == (7, ro.response_mask.shape[1], a.shape[-1])
    assert torch.allclose(a, b, atol=1e-5)
    assert all(torch.allclose(x, y, atol=1e-4, rtol=1e-4) for x, y in zip(ga, gb))


@pytest.mark.parametrize("share", [False, True])
def test_recomputed_old_logprobs_match_the_engine(batch, share):
    policy, ro, adv, weights, d = batch
    old, ent = sampling_view(policy, ro, weights, True, ForwardSettings(5, d.device, share))
    trained = ro.response_mask * weights[:, None]
    assert torch.allclose(old * trained, ro.logprobs * trained, atol=1e-4)
    assert (old * (1 - weights[:, None])).abs().sum() == 0  # filtered rows are not recomputed
    assert ent is ro.entropy
    import dataclasses

    old2, ent2 = sampling_view(
        policy, dataclasses.replace(ro, entropy=None), weights, False, ForwardSettings(5, d.device)
    )
    assert old2 is ro.logprobs and torch.allclose(ent2, ro.entropy, atol=1e-4)
