"""The step's batch: DAPO dynamic sampling, concatenation of generation batches, advantages over
the groups that train, KL reward penalty, overlong filtering."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import algorithm

from skyexp.config import AlgoConfig, Config, ModelConfig
from skyexp.config.algorithm import build_algorithm
from skyexp.config.stages import StagePlan
from skyexp.data import PromptSampler
from skyexp.model.loading import load_tokenizer
from skyexp.records import Problem, Rollout
from skyexp.rewards import Scored
from skyexp.rl.advantage import group_advantages, step_advantages
from skyexp.rl.collect import collect_batch, concat_rollouts
from skyexp.rl.state import Counters, Live, Timer


class FakeEngine:
    """Each call answers every prompt with n responses of call-dependent length (so generation
    batches differ in prompt and response width)."""

    def __init__(self, tok):
        self.tok, self.calls = tok, 0

    def generate(self, prompt_ids, n, max_tokens, temperature, top_p=1.0):
        self.calls += 1
        rows = [p for p in prompt_ids for _ in range(n)]
        resp = [
            self.tok(f"{self.calls}" * (self.calls + i % 2), add_special_tokens=False)["input_ids"]
            for i in range(len(rows))
        ]
        plen, rlen = max(map(len, rows)) + self.calls, max(map(len, resp))
        seq = torch.full((len(rows), plen + rlen), self.tok.pad_token_id)
        attn = torch.zeros_like(seq)
        rmask = torch.zeros(len(rows), rlen)
        for i, (p, r) in enumerate(zip(rows, resp)):
            seq[i, plen - len(p) : plen] = torch.tensor(p)
            seq[i, plen : plen + len(r)] = torch.tensor(r)
            attn[i, plen - len(p) : plen + len(r)] = 1
            rmask[i, : len(r)] = 1
        lp = -torch.rand(len(rows), rlen) * rmask
        return Rollout(
            seq, attn, rmask, lp, rmask.sum(-1) >= 3, plen, n, temperature, entropy=lp.abs()
        )


class ScriptedReward:
    """Correctness per call: a list of per-group patterns."""

    def __init__(self, script):
        self.script, self.calls = script, 0

    def score(self, texts, golds):
        pattern = [x for group in self.script[self.calls] for x in group]
        self.calls += 1
        return Scored([float(x) for x in pattern], ["1"] * len(texts), ["ok"] * len(texts))


def _run(tiny_dir, dist1, script, **algo):
    tok = load_tokenizer(str(tiny_dir), ModelConfig())
    cfg = Config(algo=AlgoConfig(n=2, batch_size=2, **algo))
    problems = [Problem(id=str(i), problem=f"Compute {i}+1.", answer=str(i + 1)) for i in range(50)]
    sampler = PromptSampler(problems, 0)
    run = SimpleNamespace(
        cfg=cfg,
        d=dist1,
        tokenizer=tok,
        engine=FakeEngine(tok),
        reward=ScriptedReward(script),
        live=Live(sampler),
        counters=Counters(),
        algorithm=build_algorithm(cfg),
    )
    return (
        collect_batch(run, StagePlan(0, 1, 2, 2, 8, reward=cfg.reward), 1.0, Timer()),
        run,
        sampler,
    )


ALL1, ALL0, MIXED = (1, 1), (0, 0), (1, 0)


def test_dynamic_sampling_generates_until_enough_informative_groups(tiny_dir, dist1):
    script = [[ALL1, ALL0], [MIXED, ALL1], [MIXED, MIXED], [MIXED, MIXED]]
    b, run, sampler = _run(
        tiny_dir, dist1, script, filter_groups="mixed_accuracy", dynamic_sampling=True
    )
    assert b.gen_batches == 3 and run.engine.calls == 3 and sampler.pos == 6
    assert b.kept.tolist() == [False, False, True, False, True, True]
    assert b.train.tolist() == [False, False, True, False, True, False]  # the first 2 that passed
    assert b.correct.shape == (6, 2) and b.rollout.sequences.shape[0] == 12
    # the concatenated rollout keeps every row's tokens: responses of call k are the digit k
    texts = run.tokenizer.batch_decode(b.rollout.responses, skip_special_tokens=True)
    assert [t[0] for t in texts] == ["1"] * 4 + ["2"] * 4 + ["3"] * 4
    assert b.row_weights(False).tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0]


def test_dynamic_sampling_stops_at_the_cap_and_trains_on_what_passed(tiny_dir, dist1):
    script = [[ALL1, ALL0], [MIXED, ALL1], [MIXED, MIXED]]
    b, run, _ = _run(
        tiny_dir,
        dist1,
        script,
        filter_groups="mixed_accuracy",
        dynamic_sampling=True,
        max_gen_batches=2,
    )
    assert b.gen_batches == 2 and b.train.tolist() == [False, False, True, False]


def test_without_dynamic_sampling_one_batch_and_the_filter(tiny_dir, dist1):
    b, run, _ = _run(tiny_dir, dist1, [[MIXED, ALL1]], filter_groups="zero_variance")
    assert b.gen_batches == 1 and b.train.tolist() == [True, False]
    assert set(b.terms) == {"accuracy"} and torch.equal(b.rewards, b.correct)
    # overlong filtering: truncated rows of training groups get weight 0 (FakeEngine: length >= 3 is
    # "truncated")
    assert b.row_weights(True).tolist() == [1.0 - float(t) for t in b.rollout.truncated[:2]] + [
        0.0,
        0.0,
    ]


def test_concat_rollouts_realigns_prompts_and_responses():
    def ro(plen, prompt, resp):
        seq = torch.tensor([[0] * (plen - len(prompt)) + prompt + resp])
        attn = (torch.arange(seq.shape[1]) >= plen - len(prompt)).long()[None]
        return Rollout(
            seq,
            attn,
            torch.ones(1, len(resp)),
            torch.full((1, len(resp)), -0.5),
            torch.tensor([False]),
            plen,
            1,
            1.0,
            torch.ones(1, len(resp)),
        )

    out = concat_rollouts([ro(2, [7, 8], [5]), ro(3, [9, 9, 9], [4, 4])], pad_id=0)
    assert out.prompt_len == 3
    assert out.sequences.tolist() == [[0, 7, 8, 5, 0], [9, 9, 9, 4, 4]]
    assert out.attention_mask.tolist() == [[0, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert out.response_mask.tolist() == [[1, 0], [1, 1]] and out.logprobs[0, 1] == 0


def test_group_advantages_only_on_training_groups(dist1):
    rewards = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [3.0, -3.0]])
    train = torch.tensor([True, False, True, False])
    adv = group_advantages(
        algorithm(advantage="reinforce_pp", adv_eps=0.0), rewards, train, dist1.device
    )
    # batch statistics over the 2 training groups only: centred +-0.5, std 0.5 -> +-1
    assert adv.tolist() == [1.0, -1.0, 0.0, 0.0, -1.0, 1.0, 0.0, 0.0]
    rl = group_advantages(algorithm(), rewards, torch.ones(4, dtype=torch.bool), dist1.device)
    assert rl.view(4, 2)[3].tolist() == [6.0, -6.0]  # rloo: 3 - (-3) = 6


def test_kl_reward_penalty(dist1):
    """The KL is computed once and returned with the rewards it changed: r - beta * sum_t KL_t."""
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    rewards, train = torch.tensor([[1.0, 0.0]]), torch.tensor([True])
    # k1 summed over the response: (-1 + 1.5) + (-2 + 1) = -0.5 (padding ignored), and 0
    out = step_advantages(
        algorithm(kl_estimator="k1", kl_coef=0.1, kl_mode="reward"),
        rewards,
        train,
        logp,
        ref,
        mask,
        dist1.device,
    )
    assert out.seq_kl.tolist() == [[pytest.approx(-0.5), 0.0]]
    assert out.rewards.tolist() == [[pytest.approx(1.05), 0.0]]
    assert (
        step_advantages(algorithm(), rewards, train, logp, None, mask, dist1.device).seq_kl is None
    )
    loss, reward = algorithm(kl_coef=0.1), algorithm(kl_coef=0.1, kl_mode="reward")
    assert (loss.kl_loss_coef, loss.kl_reward_coef, reward.kl_loss_coef, reward.kl_reward_coef) == (
        0.1,
        0.0,
        0.0,
        0.1,
    )
