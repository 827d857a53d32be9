"""Every config check, in one pass: `to_typed` merges a composed config onto the schema (a misspelt
key or a wrong type fails naming the key), then `validate` runs the cross-field checks of every
group, the stage plan's included (skyexp.config.stages). `check_world` adds the checks that need
the number of ranks. Each failure raises ConfigError naming the offending key."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from skyexp.config.data import validate_data, validate_jobs, validate_sft
from skyexp.config.eval import validate_eval
from skyexp.config.names import registry_names
from skyexp.config.ranges import validate_ranges
from skyexp.config.schema import Config, ConfigError
from skyexp.config.stages import validate_schedule


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
    validate(typed)
    return typed


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': {msg}")


def _check_name(value: str, key: str, kind: str) -> None:
    names = registry_names(kind)
    _check(value in names, key, f"unknown value '{value}'; valid options: {', '.join(names)}")


def validate(c: Config) -> None:
    """Cross-field checks. Each failure names the offending key."""
    _check_name(c.algo.advantage, "algo.advantage", "algo")
    advantages = registry_names("algo")
    _check(c.algo.name not in advantages or c.algo.name == c.algo.advantage, "algo.name",
           f"'{c.algo.name}' names an advantage estimator but algo.advantage is '{c.algo.advantage}': pick the preset "
           f"(algo={c.algo.name}) or set algo.advantage={c.algo.name}")
    _check_name(c.algo.loss_agg, "algo.loss_agg", "loss_agg")
    _check_name(c.algo.filter_groups, "algo.filter_groups", "filter")
    _check_name(c.algo.kl_estimator, "algo.kl_estimator", "kl")
    _check(c.algo.kl_mode in ("loss", "reward"), "algo.kl_mode", f"'{c.algo.kl_mode}' is not loss or reward")
    _check(c.algo.old_logprobs in ("rollout", "recompute"), "algo.old_logprobs",
           f"'{c.algo.old_logprobs}' is not rollout or recompute")
    _check(0 <= c.algo.filter_low <= c.algo.filter_high <= 1, "algo.filter_low", "needs 0 <= filter_low <= filter_high <= 1")
    _check(not c.algo.dynamic_sampling or c.algo.filter_groups != "none", "algo.dynamic_sampling",
           "needs a group filter (algo.filter_groups) to decide which groups count")
    _check(c.algo.max_gen_batches >= 1, "algo.max_gen_batches", "must be >= 1")
    _check(c.algo.gen_batch_size >= 0, "algo.gen_batch_size", "must be >= 0 (0: the prompt batch)")
    _check_name(c.entropy.name, "entropy.name", "entropy")
    _check(0 < c.entropy.top_ratio <= 1, "entropy.top_ratio", "must be in (0, 1]")
    _check(0 < c.entropy.clip_cov_ratio <= 1, "entropy.clip_cov_ratio", "must be in (0, 1]")
    _check(0 < c.entropy.kl_cov_ratio <= 1, "entropy.kl_cov_ratio", "must be in (0, 1]")
    _check(c.entropy.cov_low < c.entropy.cov_high, "entropy.cov_low", "must be < entropy.cov_high")
    _check_name(c.rollout.name, "rollout.name", "rollout")
    _check_name(c.data.source, "data.source", "data")
    for term in c.reward.terms:
        _check_name(term, f"reward.terms.{term}", "reward_term")
    _check(any(w != 0 for w in c.reward.terms.values()), "reward.terms", "needs at least one term with a nonzero weight")
    _check(0 < c.reward.overlong_buffer <= 1, "reward.overlong_buffer", "must be in (0, 1] (a share of max_response_len)")
    _check(len(c.reward.cos_correct) == 2 and len(c.reward.cos_wrong) == 2, "reward.cos_correct",
           "reward.cos_correct and reward.cos_wrong need two values (r_0, r_L)")
    _check(c.model.dtype in ("float32", "bfloat16", "float16"), "model.dtype", f"'{c.model.dtype}' is not float32, bfloat16 or float16")
    _check(c.trainer.device in ("auto", "cpu", "cuda"), "trainer.device", f"'{c.trainer.device}' is not auto, cpu or cuda")
    _check(c.trainer.lr > 0, "trainer.lr", "must be > 0")
    _check(c.trainer.micro_batch_size >= 1, "trainer.micro_batch_size", "must be >= 1")
    _check(len(c.trainer.betas) == 2, "trainer.betas", "needs two values")
    _check(c.algo.batch_size >= 1, "algo.batch_size", "must be >= 1")
    _check(c.algo.clip_low >= 0 and c.algo.clip_high >= 0, "algo.clip_low", "clip ranges must be >= 0")
    _check(c.algo.clip_c == 0 or c.algo.clip_c > 1, "algo.clip_c", "dual clip needs clip_c > 1 (or 0 to disable)")
    _check(c.algo.ppo_epochs >= 1, "algo.ppo_epochs", "must be >= 1")
    _check(c.algo.mini_batches >= 1, "algo.mini_batches", "must be >= 1")
    _check(c.algo.kl_coef >= 0, "algo.kl_coef", "must be >= 0")
    _check(c.entropy.coef_min <= c.entropy.coef_max, "entropy.coef_min", "must be <= entropy.coef_max")
    _check(0 < c.rollout.top_p <= 1, "rollout.top_p", "must be in (0, 1]")
    _check(c.rollout.tensor_parallel_size >= 1, "rollout.tensor_parallel_size", "must be >= 1")
    _check(0 < c.rollout.gpu_memory_utilization <= 1, "rollout.gpu_memory_utilization", "must be in (0, 1]")
    _check(c.rollout.kv_cache_gb >= 0, "rollout.kv_cache_gb", "must be >= 0 (0: automatic)")
    _check_name(c.algo.rollout_is, "algo.rollout_is", "rollout_is")
    _check(c.algo.rollout_is == "none" or c.algo.old_logprobs == "recompute", "algo.rollout_is",
           "the correction weighs the trainer's old log-probs against the sampler's: set algo.old_logprobs=recompute")
    _check(c.algo.rollout_is_cap >= 1, "algo.rollout_is_cap", "must be >= 1 (weights above it are truncated to it)")
    validate_eval(c.eval, _check)
    _check(c.reward.timeout_s > 0, "reward.timeout_s", "must be > 0")
    _check(c.reward.workers >= 1, "reward.workers", "must be >= 1")
    validate_data(c.data, _check, _check_name)
    validate_sft(c.sft, _check)
    validate_jobs(c.filter, c.distill, _check)
    for b in c.logger.backends:
        _check(b in ("wandb", "jsonl", "console"), "logger.backends", f"unknown backend '{b}'; valid: wandb, jsonl, console")
    _check(c.logger.mode in ("offline", "online", "disabled"), "logger.mode", f"'{c.logger.mode}' is not offline, online or disabled")
    validate_schedule(c, _check)
    validate_ranges(c, _check)  # learning rates, lengths and counts (skyexp.config.ranges), logger.samples_* included
    _check(c.trainer.nproc_per_node >= 0, "trainer.nproc_per_node", "must be >= 0 (0: run in this process)")


def check_world(c: Config, world_size: int) -> None:
    """Checks that need the number of ranks (known only after the process group starts)."""
    for i, s in enumerate(c.context.stages):
        bs = s.batch_size if s.batch_size is not None else c.algo.batch_size
        _check(bs % world_size == 0, f"context.stages[{i}].batch_size" if s.batch_size else "algo.batch_size",
               f"prompt batch {bs} is not divisible by {world_size} ranks")
        _check((bs // world_size) % c.algo.mini_batches == 0, "algo.mini_batches",
               f"must divide the per-rank prompt batch ({bs // world_size})")
    _check(c.algo.gen_batch_size % world_size == 0, "algo.gen_batch_size",
           f"generation batch {c.algo.gen_batch_size} is not divisible by {world_size} ranks")
    _check(c.trainer.fsdp or world_size == 1, "trainer.fsdp",
           f"false trains an unsharded copy per rank and nothing would reduce gradients across {world_size} ranks")
