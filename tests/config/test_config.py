"""Every config option composes and validates; bad configs fail early and name the key."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from skyexp.__main__ import register_schema
from skyexp.config import ConfigError, to_typed

CONF = ROOT / "conf"
RECOMPUTE = ["algo.old_logprobs=recompute"]
GROUPS = [
    "model",
    "data",
    "sft",
    "algo",
    "entropy",
    "temperature",
    "context",
    "rollout",
    "reward",
    "eval",
    "logger",
    "trainer",
]


def compose_cfg(overrides: list[str]):
    register_schema()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_default_composes_and_validates():
    c = to_typed(compose_cfg([]))
    assert c.model.name == "tiny" and c.data.source == "arith" and c.algo.name == "rloo"
    assert c.sft.steps > 0 and c.context.stages[0].max_response_len > 0


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes(group, option):
    overrides = [f"{group}={option}"]
    if group == "data" and option in ("jsonl", "parquet"):
        overrides.append("data.path=/some/file")  # these need a user path; the check is composition
    c = to_typed(compose_cfg(overrides))
    assert getattr(c, group).name == option, f"{group}/{option}.yaml should set name: {option}"


def test_every_group_has_options():
    for g in GROUPS:
        assert _options(g), f"conf/{g}/ has no options"


@pytest.mark.parametrize(
    "path",
    sorted((ROOT / "experiments").glob("*.yaml")) + sorted((ROOT / "sweeps").glob("*.yaml")),
    ids=lambda p: p.name,
)
def test_every_experiment_and_sweep_composes(path: Path):
    group = "experiment" if path.parent.name == "experiments" else "sweep"
    to_typed(compose_cfg([f"+{group}={path.stem}"]))


def test_wrong_type_names_key():
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        compose_cfg(["trainer.lr=abc"])
    assert "trainer.lr" in str(e.value) or "trainer.lr" in str(e.value.__cause__)


def test_unknown_key_names_key():
    with pytest.raises((ConfigCompositionException, ConfigKeyError, ConfigError)) as e:
        to_typed(compose_cfg(["+trainer.lrr=1"]))
    assert "trainer.lrr" in str(e.value) or "trainer.lrr" in str(e.value.__cause__)


def test_unknown_group_option_lists_valid_ones():
    with pytest.raises(Exception) as e:
        compose_cfg(["algo=nonexistent"])
    msg = str(e.value)
    assert "algo/nonexistent" in msg and "rloo" in msg and "grpo" in msg


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["algo.n=1"], "algo.n"),  # rloo needs a leave-one-out baseline
        (["algo.advantage=nope"], "algo.advantage"),
        (["algo.name=grpo"], "algo.name"),  # an estimator's name on the rloo preset: ambiguous
        (["algo.kl_mode=both"], "algo.kl_mode"),
        (["algo.old_logprobs=engine"], "algo.old_logprobs"),
        (["algo.dynamic_sampling=true"], "algo.dynamic_sampling"),  # needs a group filter
        (["algo.filter_groups=wrong_name"], "algo.filter_groups"),
        (["algo.filter_low=0.9", "algo.filter_high=0.1"], "algo.filter_low"),
        (["+reward.terms.length=1"], "reward.terms.length"),
        (["reward.terms.accuracy=0"], "reward.terms"),
        (["entropy.top_ratio=0"], "entropy.top_ratio"),
        (["algo=ppo_offpolicy", "algo.advantage=rloo", "algo.n=1"], "algo.n"),
        (["algo.loss_agg=sum"], "algo.loss_agg"),
        (["entropy.controller=magic"], "entropy.controller"),
        (["entropy.token_rule=magic"], "entropy.token_rule"),
        (
            ["entropy=adaptive", "entropy.controller=fixed"],
            "entropy.name",
        ),  # the preset label contradicts the key
        (
            ["+entropy.targte=0.1"],
            "entropy.targte",
        ),  # a misspelt parameter forced in past Hydra's own check
        (
            ["context=sky_t1_mini", "context.stages.1.max_response_len=100"],
            "context.stages[1].max_response_len",
        ),
        (["algo.clip_c=0.5"], "algo.clip_c"),
        (["logger.backends=[tensorboard]"], "logger.backends"),
        (["data=jsonl", "data.path=/x", "data.max_bad_fraction=2"], "data.max_bad_fraction"),
        (["sft.source=jsonl"], "sft.path"),
        (["algo.mini_batches=3"], "algo.mini_batches"),
        (["algo.rollout_is=token"], "algo.rollout_is"),  # needs the trainer's own old log-probs
        (["algo.old_logprobs=recompute", "algo.rollout_is=tis"], "algo.rollout_is"),
        (
            ["algo.old_logprobs=recompute", "algo.rollout_is=token", "algo.rollout_is_cap=0.5"],
            "algo.rollout_is_cap",
        ),
        (["rollout=vllm", "rollout.gpu_memory_utilization=0"], "rollout.gpu_memory_utilization"),
        (["rollout=vllm", "rollout.tensor_parallel_size=0"], "rollout.tensor_parallel_size"),
        (["algo=passk", "algo.passk_k=17"], "algo.passk_k"),  # k > n
        (
            ["algo=passk", "algo.passk_k=16"],
            "algo.passk_k",
        ),  # passk_chen with k = n: one subset, no signal
        (["algo=passk", "context.stages.0.n=1"], "context.stages[0].n"),
        (["algo.policy_loss=gpso"], "algo.policy_loss"),
        (
            ["algo=gspo", "entropy=clip_cov"],
            "entropy.token_rule",
        ),  # the rule replaces PPO's loss, which gspo does not use
        (["algo=cispo", "algo.clip_c=3"], "algo.clip_c"),
        (
            ["algo=gspo", "algo.loss_agg=token-mean"],
            "algo.loss_agg",
        ),  # GSPO is a mean over sequences
        (["algo.policy_loss=gspo_token"], "algo.loss_agg"),
        (
            ["algo=gspo", "rollout=vllm", "algo.old_logprobs=rollout"],
            "algo.old_logprobs",
        ),  # the sampler's numerics
        (["algo.old_logprobs=sometimes"], "algo.old_logprobs"),
        (["algo.ref_reset_every=10"], "algo.ref_reset_every"),  # no KL term, no reference to reset
        (["entropy.adv_alpha=0.4", "entropy.adv_kappa=1"], "entropy.adv_kappa"),
        (["algo.off_policy=decopled"], "algo.off_policy"),
        # decoupled PPO's ratio is against pi_prox, which only the trainer's forward gives
        (["algo.off_policy=decoupled"], "algo.old_logprobs"),
        (["algo.off_policy=decoupled", "algo.old_logprobs=auto"], "algo.old_logprobs"),  # hf
        (RECOMPUTE + ["algo.off_policy=decoupled", "algo.rollout_is=token"], "algo.rollout_is"),
        (RECOMPUTE + ["algo.off_policy=decoupled", "algo.off_policy_cap=1"],
         "algo.off_policy_cap"),
        (RECOMPUTE + ["algo=gspo", "algo.off_policy=decoupled"], "algo.off_policy"),
        (RECOMPUTE + ["algo.off_policy=tis"], "algo.rollout_is"),  # tis is rollout_is's weights
        (["algo.off_policy=tis", "algo.rollout_is=sequence"], "algo.old_logprobs"),
        (RECOMPUTE + ["algo.off_policy=behaviour"], "algo.old_logprobs"),
        (["algo.off_policy=behaviour", "algo=gspo", "rollout=vllm"], "algo.old_logprobs"),
        (RECOMPUTE + ["algo.off_policy=behaviour", "algo.rollout_is=token"], "algo.old_logprobs"),
    ],
)
def test_cross_field_checks_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        to_typed(compose_cfg(overrides))
    assert f"config key '{key}'" in str(e.value)


def test_off_policy_modes_that_make_sense_validate():
    """Each mode with the keys it needs (skyexp.algos.off_policy's table), and the default auto,
    which leaves every preset's correction exactly what algo.old_logprobs / algo.rollout_is bind."""
    from skyexp.algos.off_policy import OFF_POLICY
    from skyexp.algos.rollout_is import ROLLOUT_IS
    from skyexp.config.algorithm import build_algorithm

    for ov in (
        RECOMPUTE + ["algo.off_policy=decoupled"],
        ["algo.off_policy=decoupled", "algo.old_logprobs=auto", "rollout=vllm"],
        RECOMPUTE + ["algo.off_policy=decoupled", "algo=cispo"],
        RECOMPUTE + ["algo.off_policy=decoupled", "entropy=clip_cov", "algo.ppo_epochs=2"],
        RECOMPUTE + ["algo.off_policy=tis", "algo.rollout_is=sequence", "algo=gspo"],
        ["algo.off_policy=behaviour", "algo=gspo"],  # auto on hf: the sampler's log-probs
    ):
        to_typed(compose_cfg(ov))
    for preset in sorted(p.stem for p in (ROOT / "conf" / "algo").glob("*.yaml")):
        c = to_typed(compose_cfg([f"algo={preset}"]))
        alg = build_algorithm(c)
        assert c.algo.off_policy == "auto" and alg.off_policy is OFF_POLICY["auto"], preset
        assert alg.is_weights.func is ROLLOUT_IS[c.algo.rollout_is], preset


def test_gspo_recomputes_old_logprobs_when_the_sampler_is_not_the_trainer():
    """conf/algo/gspo.yaml sets algo.old_logprobs=auto: the hf sampler is the trainer's own fp32
    model (its log-probs are the trainer's), vLLM is not, so there the trainer recomputes them."""
    from skyexp.config.schema import old_logprobs_recomputed

    hf, vllm = (
        to_typed(compose_cfg(["algo=gspo"])),
        to_typed(compose_cfg(["algo=gspo", "rollout=vllm"])),
    )
    assert hf.algo.old_logprobs == vllm.algo.old_logprobs == "auto"
    assert not old_logprobs_recomputed(hf) and old_logprobs_recomputed(vllm)
    assert old_logprobs_recomputed(to_typed(compose_cfg(["algo.old_logprobs=recompute"])))


def test_world_size_divisibility():
    from skyexp.config import check_world

    c = to_typed(compose_cfg(["algo.batch_size=3"]))
    with pytest.raises(ConfigError, match="algo.batch_size"):
        check_world(c, 2)
    check_world(c, 1)
    plain = to_typed(compose_cfg(["trainer.fsdp=false"]))
    check_world(plain, 1)  # one process may train the plain model
    with pytest.raises(ConfigError, match="trainer.fsdp"):
        check_world(plain, 2)  # nothing would all-reduce the gradients


def test_a_misspelt_parameter_of_a_registered_function_is_named(monkeypatch):
    """Registered functions take their config values as keyword-only parameters bound by name at
    validation: a parameter no config key provides (a typo in the function) fails there, naming
    it."""
    from skyexp.algos import entropy as ent
    from skyexp.algos import token_rules as tr

    def typo_controller(coef, entropy, *, targett):
        return coef, 0.0

    monkeypatch.setitem(ent.CONTROLLERS, "typo", typo_controller)
    with pytest.raises(ConfigError, match=r"entropy\.targett"):
        to_typed(compose_cfg(["entropy.controller=typo"]))

    def typo_select(adv, logp, entropy, mask, *, top_ratoi):
        return mask > 0

    monkeypatch.setitem(tr.TOKEN_RULES, "typo", tr.TokenRule(typo_select, tr.plain_loss))
    with pytest.raises(ConfigError, match=r"entropy\.top_ratoi or algo\.top_ratoi"):
        to_typed(compose_cfg(["entropy.token_rule=typo"]))


def test_the_policy_loss_is_bound_at_validation(monkeypatch):
    """algo.policy_loss's parameters are bound by build_algorithm inside validate(), so a typo
    fails before anything loads (it once failed at RL step 1), and the built record is what a
    run uses: its loss for ppo is PPO's own surrogate unless a token rule replaces it."""
    from skyexp.algos import seq_losses as sl
    from skyexp.config.algorithm import build_algorithm

    def typo_loss(logp, old_logp, adv, mask, *, clip_loww):
        return adv, {}

    monkeypatch.setitem(sl.POLICY_LOSSES, "typo", sl.PolicyLossEntry(typo_loss))
    with pytest.raises(ConfigError, match=r"algo\.clip_loww"):
        to_typed(compose_cfg(["algo.policy_loss=typo", "algo.loss_agg=token-mean"]))
    plain = build_algorithm(to_typed(compose_cfg([])))
    assert plain.select is None and plain.policy_loss.args[0].func is sl.ppo_loss
    assert (
        plain.is_weights(None, None, None) is None
    )  # rollout_is=none: no weights, no string check
    assert build_algorithm(to_typed(compose_cfg(["entropy=clip_cov"]))).select is not None


def test_only_errors_before_the_job_become_exit_2():
    """A crash inside the job keeps its own exit code; Hydra's errors before it exit 2."""
    from skyexp.cli import _Flag, config_errors_exit_2

    def hydra_error():
        sys.exit(1)  # what hydra.main does after printing a composition error

    def job_crash(flag):
        flag.set()
        sys.exit(1)

    for fn, started, code in ((hydra_error, _Flag(), 2), (None, _Flag(), 1)):
        main = fn or (lambda f=started: job_crash(f))
        with pytest.raises(SystemExit) as e:
            config_errors_exit_2(main, started)()
        assert e.value.code == code


# Every learning rate, length and count of every group: -1 (or the value shown) fails in the one
# validation pass, naming its key, before anything loads. Seeds are the only integers left out.
NEGATIVE = [
    "model.hidden_size",
    "model.num_layers",
    "model.num_heads",
    "model.intermediate_size",
    "model.max_positions",
    "data.train_size",
    "data.eval_size",
    "data.max_prompt_len",
    "sft.steps",
    "sft.lr",
    "sft.lr_min",
    "sft.warmup_steps",
    "sft.weight_decay",
    "sft.batch_size",
    "sft.max_len",
    "algo.n",
    "algo.batch_size",
    "algo.max_gen_batches",
    "algo.gen_batch_size",
    "algo.ppo_epochs",
    "algo.mini_batches",
    "temperature.steps",
    "context.stages.0.steps",
    "context.stages.0.max_response_len",
    "rollout.max_batch",
    "rollout.tensor_parallel_size",
    "rollout.max_model_len",
    "rollout.kv_cache_gb",
    "reward.workers",
    "reward.timeout_s",
    "reward.max_answer_chars",
    "reward.memory_mb",
    "eval.n",
    "eval.max_response_len",
    "eval.size",
    "eval.every",
    "eval.vote_max_pairs",
    "eval.log_samples",
    "logger.samples_every",
    "logger.samples_rows",
    "logger.line_every",
    "trainer.threads",
    "trainer.lr",
    "trainer.weight_decay",
    "trainer.warmup_steps",
    "trainer.grad_clip",
    "trainer.micro_batch_size",
    "trainer.save_every",
    "trainer.keep_last",
    "trainer.max_bad_steps",
    "trainer.max_idle_steps",
    "trainer.nproc_per_node",
    "filter.n",
    "filter.ngram",
    "filter.chunk",
    "filter.max_response_len",
    "filter.size",
    "distill.k",
    "distill.keep",
    "distill.chunk",
    "distill.max_response_len",
    "distill.size",
]
OTHER_BAD = [
    "+context.stages.0.batch_size=-1",
    "+context.stages.0.n=-1",
    "sft.lr_min=1.0",
    "model.num_heads=7",
    "algo.ratio_max=0.5",
    "algo.adv_eps=0",
    "trainer.betas=[0.9,1.5]",
]


@pytest.mark.parametrize("key", NEGATIVE)
def test_negative_rates_lengths_and_counts_fail_naming_the_key(key):
    with pytest.raises(ConfigError) as e:
        to_typed(compose_cfg([f"{key}=-1"]))
    assert f"config key '{key.replace('.0.', '[0].')}'" in str(e.value), str(e.value)


@pytest.mark.parametrize("override", OTHER_BAD)
def test_out_of_range_values_fail_naming_the_key(override):
    key = override.lstrip("+").split("=")[0].replace(".0.", "[0].")
    with pytest.raises(ConfigError) as e:
        to_typed(compose_cfg([override]))
    assert f"config key '{key}'" in str(e.value), str(e.value)


def test_reward_random_preset_and_its_validation():
    c = to_typed(compose_cfg(["reward=random"]))
    assert c.reward.terms == {"accuracy": 0.0, "random": 1.0} and c.reward.random_p == 0.5
    with pytest.raises(ConfigError, match=r"reward\.random_p"):
        to_typed(compose_cfg(["reward=random", "reward.random_p=1.5"]))
    # a group filter by correctness would leak the answers into the control
    with pytest.raises(ConfigError, match=r"algo\.filter_groups"):
        to_typed(compose_cfg(["reward=random", "algo=dapo"]))
    assert to_typed(compose_cfg(["reward=random", "algo=dapo", "algo.filter_groups=zero_variance"]))
