"""Every config option composes and validates; bad configs fail early and name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, run_skyexp
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from skyexp.__main__ import register_schema
from skyexp.config import ConfigError, to_typed

CONF = ROOT / "conf"
GROUPS = ["model", "data", "sft", "algo", "entropy", "temperature", "context", "rollout", "reward", "eval", "logger", "trainer"]


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


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.yaml")) + sorted((ROOT / "sweeps").glob("*.yaml")),
                         ids=lambda p: p.name)
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
        (["entropy=adaptive", "entropy.controller=fixed"], "entropy.name"),  # the preset label contradicts the key
        (["+entropy.targte=0.1"], "entropy.targte"),  # a misspelt parameter forced in past Hydra's own check
        (["context=sky_t1_mini", "context.stages.1.max_response_len=100"], "context.stages[1].max_response_len"),
        (["algo.clip_c=0.5"], "algo.clip_c"),
        (["logger.backends=[tensorboard]"], "logger.backends"),
        (["data=jsonl", "data.path=/x", "data.max_bad_fraction=2"], "data.max_bad_fraction"),
        (["sft.source=jsonl"], "sft.path"),
        (["algo.mini_batches=3"], "algo.mini_batches"),
        (["algo.rollout_is=token"], "algo.rollout_is"),  # needs the trainer's own old log-probs
        (["algo.old_logprobs=recompute", "algo.rollout_is=tis"], "algo.rollout_is"),
        (["algo.old_logprobs=recompute", "algo.rollout_is=token", "algo.rollout_is_cap=0.5"], "algo.rollout_is_cap"),
        (["rollout=vllm", "rollout.gpu_memory_utilization=0"], "rollout.gpu_memory_utilization"),
        (["rollout=vllm", "rollout.tensor_parallel_size=0"], "rollout.tensor_parallel_size"),
        (["algo=passk", "algo.passk_k=17"], "algo.passk_k"),  # k > n
        (["algo=passk", "algo.passk_k=16"], "algo.passk_k"),  # passk_chen with k = n: one subset, no signal
        (["algo=passk", "context.stages.0.n=1"], "context.stages[0].n"),
        (["algo.policy_loss=gpso"], "algo.policy_loss"),
        (["algo=gspo", "entropy=clip_cov"], "entropy.token_rule"),  # the rule replaces PPO's loss, which gspo does not use
        (["algo=cispo", "algo.clip_c=3"], "algo.clip_c"),
        (["algo.ref_reset_every=10"], "algo.ref_reset_every"),  # no KL term, no reference to reset
        (["entropy.adv_alpha=0.4", "entropy.adv_kappa=1"], "entropy.adv_kappa"),
    ],
)
def test_cross_field_checks_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        to_typed(compose_cfg(overrides))
    assert f"config key '{key}'" in str(e.value)


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


def test_cli_rejects_unknown_algo_fast(tmp_path):
    r = run_skyexp(["algo=nonexistent"], tmp_path, timeout=60)
    assert r.returncode != 0
    assert "algo/nonexistent" in r.stderr and "rloo" in r.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("metrics.jsonl"))


def test_cli_rejects_bad_type_fast(tmp_path):
    r = run_skyexp(["trainer.lr=abc"], tmp_path, timeout=60)
    assert r.returncode != 0
    assert "trainer.lr" in r.stderr


def test_cli_rejects_cross_field_error_before_loading(tmp_path):
    r = run_skyexp(["algo.n=1"], tmp_path, timeout=60)
    assert r.returncode == 2
    assert "algo.n" in r.stderr and "rloo" in r.stderr


def test_a_misspelt_parameter_of_a_registered_function_is_named(monkeypatch):
    """Registered functions take their config values as keyword-only parameters bound by name at
    validation: a parameter no config key provides (a typo in the function) fails there, naming it."""
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
