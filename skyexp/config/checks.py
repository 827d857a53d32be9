"""Every config check, in one pass: `to_typed` merges a composed config onto the schema (a misspelt
key or a wrong type fails naming the key), then `validate` runs the cross-field checks of every
group, the stage plan's included (skyexp.config.stages). `check_world` adds the checks that need
the number of ranks. Each failure raises ConfigError naming the offending key."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from skyexp.config.data import validate_data, validate_jobs, validate_sft
from skyexp.config.debug import shrink
from skyexp.config.eval import validate_eval
from skyexp.config.names import DATA_SOURCES, REWARD_TERMS, ROLLOUT_ENGINES, random_reward
from skyexp.config.parallel import check_parallel_world, validate_async, validate_parallel
from skyexp.config.ranges import validate_ranges
from skyexp.config.schema import (
    AlgoConfig,
    Config,
    ConfigError,
    RewardConfig,
    old_logprobs_recomputed,
)
from skyexp.config.stages import check_world_plan, validate_schedule

if TYPE_CHECKING:  # the registries import torch; validate() builds them at run time
    from skyexp.algos.off_policy import OffPolicyEntry
    from skyexp.algos.seq_losses import PolicyLossEntry


def to_typed(cfg: DictConfig | dict, schema: type = Config) -> Config:
    """Merge a composed config onto the schema and validate it; raise ConfigError naming the key."""
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    plain = {k: v for k, v in plain.items() if k not in ("hydra", "sweep", "experiment")}
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), plain)
        typed: Config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = str(e).split("\n")[0]
        raise ConfigError(f"config key '{key}': {msg}") from None
    typed = shrink(typed)
    validate(typed)
    return typed


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': {msg}")


def _check_name(value: str, key: str, names: Iterable[str]) -> None:
    names = sorted(names)
    _check(value in names, key, f"unknown value '{value}'; valid options: {', '.join(names)}")


def validate(c: Config) -> None:
    """Cross-field checks of every group. Each failure names the offending key. The algorithm is
    built first (skyexp.config.algorithm): every registered name and bound parameter is checked
    there, and each estimator's constraints against every stage's samples in the stage checks."""
    # imported here, not when skyexp.config is: it imports torch (the algos' registries)
    from skyexp.config.algorithm import build_algorithm, check_labels

    algorithm = build_algorithm(c)
    check_labels(c)
    validate_algo(c.algo, algorithm.loss_entry)
    validate_off_policy(c, algorithm.off_policy, algorithm.loss_entry)
    validate_old_logprobs(c, algorithm.loss_entry)
    validate_entropy(c, algorithm.loss_entry)
    validate_simko(c, algorithm.loss_entry)
    _check_name(c.rollout.name, "rollout.name", ROLLOUT_ENGINES)
    _check_name(c.data.source, "data.source", DATA_SOURCES)
    validate_reward(c.reward, REWARD_TERMS)
    _check(
        not random_reward(c.reward.terms)
        or c.algo.filter_groups not in ("mixed_accuracy", "accuracy_band"),
        "algo.filter_groups",
        f"{c.algo.filter_groups} keeps groups by their correctness, which would leak the answers "
        "into the random-reward control (reward.terms.random); use none or zero_variance",
    )
    validate_model_trainer(c)
    validate_rollout(c)
    validate_eval(c.eval, _check)
    validate_data(c.data, _check, functools.partial(_check_name, names=DATA_SOURCES))
    validate_sft(c.sft, _check)
    validate_jobs(c.filter, c.distill, _check)
    validate_logger(c)
    validate_ranges(c, _check)
    validate_schedule(c, _check, algorithm.estimator)
    validate_parallel(c, _check)


def validate_algo(a: AlgoConfig, loss: PolicyLossEntry) -> None:
    _check(
        0 <= a.filter_low <= a.filter_high <= 1,
        "algo.filter_low",
        "needs 0 <= filter_low <= filter_high <= 1",
    )
    _check(not a.dynamic_sampling or a.filter_groups != "none", "algo.dynamic_sampling",
           "needs a group filter (algo.filter_groups) to decide which groups count")
    _check(a.max_gen_batches >= 1, "algo.max_gen_batches", "must be >= 1")
    _check(a.gen_batch_size >= 0, "algo.gen_batch_size", "must be >= 0 (0: the prompt batch)")
    _check(a.batch_size >= 1, "algo.batch_size", "must be >= 1")
    _check(a.clip_low >= 0 and a.clip_high >= 0, "algo.clip_low", "clip ranges must be >= 0")
    _check(
        a.clip_c == 0 or a.clip_c > 1, "algo.clip_c", "dual clip needs clip_c > 1 (or 0 to disable)"
    )
    _check(a.ppo_epochs >= 1, "algo.ppo_epochs", "must be >= 1")
    _check(a.mini_batches >= 1, "algo.mini_batches", "must be >= 1")
    _check(a.kl_coef >= 0, "algo.kl_coef", "must be >= 0")
    _check(
        a.rollout_is_cap >= 1,
        "algo.rollout_is_cap",
        "must be >= 1 (weights above it are truncated to it)",
    )
    validate_loss_and_resets(a, loss)


def validate_loss_and_resets(a: AlgoConfig, loss: PolicyLossEntry) -> None:
    """The policy loss against what its registry entry declares, ProRL resets. (k against each
    stage's n: skyexp.config.stages.)"""
    _check(a.passk_k >= 1, "algo.passk_k", "must be >= 1")
    _check(
        not loss.sequence_ratio or a.loss_agg == "seq-mean-token-mean",
        "algo.loss_agg",
        f"algo.policy_loss={a.policy_loss} is a mean over sequences (arXiv 2507.18071); "
        f"'{a.loss_agg}' would weigh "
        "rows by their length: set algo.loss_agg=seq-mean-token-mean",
    )
    _check(
        loss.dual_clip or a.clip_c == 0,
        "algo.clip_c",
        f"the dual clip belongs to PPO's surrogate (and CE-GPPO's); algo.policy_loss="
        f"{a.policy_loss} has none (set algo.clip_c=0)",
    )
    _check(a.ce_beta1 >= 0, "algo.ce_beta1",
           "must be >= 0 (the scale of CE-GPPO's clipped-token gradient; 0: PPO's)")
    _check(a.ce_beta2 >= 0, "algo.ce_beta2",
           "must be >= 0 (the scale of CE-GPPO's clipped-token gradient; 0: PPO's)")
    _check(a.ref_reset_every >= 0, "algo.ref_reset_every", "must be >= 0 (0: never)")
    _check(a.ref_reset_every == 0 or a.kl_coef > 0, "algo.ref_reset_every",
           "resets the KL reference, which exists only with a KL term (set algo.kl_coef > 0)")


def validate_old_logprobs(c: Config, loss: PolicyLossEntry) -> None:
    """The old log-probs against what uses them: the IS correction compares the trainer's with the
    sampler's, so it needs the trainer's; GSPO's sequence ratio takes any sampler/trainer gap
    directly against clip ranges of ~3e-4, so it needs them whenever the sampler is not the
    trainer's own model (issue 25)."""
    a = c.algo
    _check(
        a.rollout_is == "none" or old_logprobs_recomputed(c),
        "algo.rollout_is",
        "the correction weighs the trainer's old log-probs against the sampler's: set "
        "algo.old_logprobs=recompute",
    )
    _check(
        not loss.sequence_ratio or c.rollout.name == "hf" or old_logprobs_recomputed(c),
        "algo.old_logprobs",
        f"algo.policy_loss={a.policy_loss} with rollout={c.rollout.name}: the sequence ratio "
        "would take the sampler/trainer numeric gap against clip ranges of ~3e-4 and clip nearly "
        "every row; "
        "set algo.old_logprobs=recompute (or auto, as conf/algo/gspo.yaml does)",
    )


def validate_off_policy(c: Config, mode: OffPolicyEntry, loss: PolicyLossEntry) -> None:
    """algo.off_policy against the keys it takes the place of (skyexp.algos.off_policy's table):
    which old log-probs the ratio is taken against, and which weight is on each token's loss."""
    a, name = c.algo, f"algo.off_policy={c.algo.off_policy}"
    _check(a.off_policy_cap > 1, "algo.off_policy_cap",
           "must be > 1 (tokens whose pi_prox / pi_sampler exceeds it are dropped from the loss)")
    recomputed = old_logprobs_recomputed(c)
    _check(mode.prox is not True or recomputed, "algo.old_logprobs",
           f"{name} takes the ratio against pi_prox, the trainer's own log-probs before the "
           f"update, which algo.old_logprobs={a.old_logprobs} does not compute here: set "
           "algo.old_logprobs=recompute")
    _check(mode.prox is not False or not recomputed, "algo.old_logprobs",
           f"{name} takes the ratio against the sampler's log-probs: set "
           "algo.old_logprobs=rollout (or algo.off_policy=auto to keep the recomputed ones)")
    _check(mode.rollout_is is not True or a.rollout_is != "none", "algo.rollout_is",
           f"{name} weighs each token by algo.rollout_is's truncated weights: set "
           "algo.rollout_is=token or sequence")
    _check(mode.rollout_is is not False or a.rollout_is == "none", "algo.rollout_is",
           f"{name} has {'its own weight' if mode.weights else 'no weight'}; "
           f"algo.rollout_is={a.rollout_is} would weigh the loss a second time: set "
           "algo.rollout_is=none (or algo.off_policy=tis)")
    _check(not (mode.per_token and loss.sequence_ratio), "algo.off_policy",
           f"{name} weighs each token, which algo.policy_loss={a.policy_loss}'s one ratio per "
           "sequence cannot take: use algo.off_policy=tis algo.rollout_is=sequence")


def validate_reward(r: RewardConfig, terms: Iterable[str]) -> None:
    for term in r.terms:
        _check_name(term, f"reward.terms.{term}", terms)
    _check(
        any(w != 0 for w in r.terms.values()),
        "reward.terms",
        "needs at least one term with a nonzero weight",
    )
    _check(
        0 < r.overlong_buffer <= 1,
        "reward.overlong_buffer",
        "must be in (0, 1] (a share of max_response_len)",
    )
    _check(len(r.cos_correct) == 2 and len(r.cos_wrong) == 2, "reward.cos_correct",
           "reward.cos_correct and reward.cos_wrong need two values (r_0, r_L)")
    _check(0.0 <= r.random_p <= 1.0, "reward.random_p",
           "must be in [0, 1] (the probability of a rewarded sample)")
    _check(r.timeout_s > 0, "reward.timeout_s", "must be > 0")
    _check(r.workers >= 1, "reward.workers", "must be >= 1")


def validate_model_trainer(c: Config) -> None:
    _check(
        c.model.dtype in ("float32", "bfloat16", "float16"),
        "model.dtype",
        f"'{c.model.dtype}' is not float32, bfloat16 or float16",
    )
    t = c.trainer
    _check(
        t.device in ("auto", "cpu", "cuda"),
        "trainer.device",
        f"'{t.device}' is not auto, cpu or cuda",
    )
    _check(t.lr > 0, "trainer.lr", "must be > 0")
    _check(t.micro_batch_size >= 1, "trainer.micro_batch_size", "must be >= 1")
    _check(t.logprob_chunk >= 0, "trainer.logprob_chunk", "must be >= 0 (0: full logits)")
    _check(
        t.max_tokens_per_micro_batch >= 0,
        "trainer.max_tokens_per_micro_batch",
        "must be >= 0 (0: rows only)",
    )
    _check(not t.padding_free or t.logprob_chunk > 0, "trainer.padding_free",
           "needs trainer.logprob_chunk > 0 (the plain full-logits path is padded)")
    _check(len(t.betas) == 2, "trainer.betas", "needs two values")
    _check(t.nproc_per_node >= 0, "trainer.nproc_per_node", "must be >= 0 (0: run in this process)")


def validate_rollout(c: Config) -> None:
    r = c.rollout
    _check(0 < r.top_p <= 1, "rollout.top_p", "must be in (0, 1]")
    _check(r.tensor_parallel_size >= 1, "rollout.tensor_parallel_size", "must be >= 1")
    _check(0 < r.gpu_memory_utilization <= 1, "rollout.gpu_memory_utilization", "must be in (0, 1]")
    _check(r.kv_cache_gb >= 0, "rollout.kv_cache_gb", "must be >= 0 (0: automatic)")
    validate_async(c, _check)


def validate_logger(c: Config) -> None:
    lg = c.logger
    for b in lg.backends:
        _check(
            b in ("wandb", "jsonl", "console"),
            "logger.backends",
            f"unknown backend '{b}'; valid: wandb, jsonl, console",
        )
    _check(
        lg.mode in ("offline", "online", "disabled"),
        "logger.mode",
        f"'{lg.mode}' is not offline, online or disabled",
    )


def check_world(c: Config, world_size: int) -> None:
    """Checks that need the number of ranks (known only after the process group starts; with
    trainer.rollout_ranks, the trainer ranks)."""
    check_parallel_world(c, world_size, _check)
    check_world_plan(c, world_size, _check)
    _check(c.algo.gen_batch_size % world_size == 0, "algo.gen_batch_size",
           f"generation batch {c.algo.gen_batch_size} is not divisible by {world_size} ranks")
    _check(
        c.trainer.fsdp or world_size == 1,
        "trainer.fsdp",
        "false trains an unsharded copy per rank and nothing would reduce gradients across "
        f"{world_size} ranks",
    )


def validate_entropy(c: Config, loss: PolicyLossEntry) -> None:
    """The entropy.* values (names, preset labels and bound parameters: build_algorithm)."""
    e = c.entropy
    _check(0 < e.top_ratio <= 1, "entropy.top_ratio", "must be in (0, 1]")
    _check(0 < e.clip_cov_ratio <= 1, "entropy.clip_cov_ratio", "must be in (0, 1]")
    _check(0 < e.kl_cov_ratio <= 1, "entropy.kl_cov_ratio", "must be in (0, 1]")
    _check(e.cov_low < e.cov_high, "entropy.cov_low", "must be < entropy.cov_high")
    _check(e.coef_min <= e.coef_max, "entropy.coef_min", "must be <= entropy.coef_max")
    _check(e.aer_rho > 0, "entropy.aer_rho", "must be > 0 (the target is aer_rho x H_0)")
    _check(0 <= e.aer_tau <= 1, "entropy.aer_tau", "must be in [0, 1] (a group accuracy)")
    _check(e.controller != "aer" or e.coef_max > 0, "entropy.coef_max",
           "entropy.controller=aer with coef_max 0 never applies a bonus")
    _check(e.adv_alpha >= 0, "entropy.adv_alpha", "must be >= 0 (0: no entropy-shaped advantage)")
    _check(
        e.adv_kappa > 1,
        "entropy.adv_kappa",
        "must be > 1 (the shaping term stays below |A| and keeps its sign)",
    )
    _check(
        loss.ppo_surrogate or e.token_rule == "none",
        "entropy.token_rule",
        f"'{e.token_rule}' replaces PPO's per-token loss, which "
        f"algo.policy_loss={c.algo.policy_loss} does not use: "
        "set entropy.token_rule=none or algo.policy_loss=ppo",
    )


def validate_simko(c: Config, loss: PolicyLossEntry) -> None:
    """SimKO's keys (algo.simko_*), and the top-K log-probs it needs, which the sequence-parallel
    forward does not gather."""
    a = c.algo
    _check(a.simko_k >= 1, "algo.simko_k", "must be >= 1 (the top-K candidates boosted)")
    _check(0 <= a.simko_alpha <= 1, "algo.simko_alpha", "must be in [0, 1] (a share of the step)")
    _check(a.simko_lambda > 0, "algo.simko_lambda", "must be > 0 (the top-1 penalty's scale)")
    _check(0 <= a.simko_tau <= 1, "algo.simko_tau", "must be in [0, 1] (an entropy quantile)")
    _check(not loss.topk or c.trainer.sp_size == 1, "trainer.sp_size",
           f"algo.policy_loss={a.policy_loss} needs each token's top-K log-probs, which the "
           "sequence-parallel forward does not gather: set trainer.sp_size=1")
