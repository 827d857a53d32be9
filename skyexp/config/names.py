"""`bind`, which gives a registered function its parameters from the config (used by
skyexp.config.algorithm.build_algorithm; no torch at import).

A registered function (an advantage estimator, an entropy controller, a token rule, a group
filter) declares the config values it needs as keyword-only parameters without defaults, named
as the config keys are (`target` for entropy.target). `bind` looks each up in the given config
sections and returns the function with them bound; a parameter no section provides raises
ConfigError naming the key, so a misspelt parameter fails at config validation, not silently at
run time. Keyword-only parameters with defaults are run-time arguments (a random generator) and
are left alone.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from skyexp.config.schema import ConfigError


def config_params(fn: Callable[..., Any]) -> list[str]:
    """The keyword-only parameters of fn that come from the config (those without a default)."""
    return [p.name for p in inspect.signature(fn).parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.default is p.empty]


def bind(fn: Callable[..., Any], sections: dict[str, Any], what: str) -> Callable[..., Any]:
    """fn with each config parameter bound to the field of that name in the first of `sections`
    ({"entropy": cfg.entropy, "algo": cfg.algo}) that has one. `what` names the registry entry
    in the error ("entropy.token_rule 'clip_cov'")."""
    bound = {}
    for name in config_params(fn):
        owner = next((sec for sec, obj in sections.items() if hasattr(obj, name)), None)
        if owner is None:
            keys = " or ".join(f"{sec}.{name}" for sec in sections)
            raise ConfigError(
                f"config key '{keys}': {what} ({fn.__module__}.{fn.__qualname__}) takes the "
                "parameter "
                f"'{name}', which no config key provides (misspelt in the function or missing in "
                "the schema)"
            )
        bound[name] = getattr(sections[owner], name)
    return functools.partial(fn, **bound)


# The names the config accepts for the registries that live above the config layer (data sources,
# reward terms, rollout engines). The checks compare against these, so the config wing never
# imports those wings (imports run down only, tests/docs/test_import_graph.py); each registry
# calls `implements` when it is defined, so a name added to one side only fails at import.
DATA_SOURCES = (
    "arith",
    "still3",
    "eurus_numina",
    "deepscaler",
    "skywork_or1_math",
    "jsonl",
    "parquet",
    "hub",
    "mix",
)
REWARD_TERMS = ("accuracy", "format", "overlong", "cosine", "random")
ROLLOUT_ENGINES = ("hf", "vllm")

RANDOM_REWARD_MARK = "RANDOM-REWARD"  # the W&B run-name prefix of a random-reward control run


def random_reward(terms: Any) -> bool:
    """Whether reward.terms (a dict or a DictConfig) gives the random-reward control a nonzero
    weight: such a run is a control, marked in its W&B name and in summary.json."""
    return float(terms.get("random", 0.0) or 0.0) != 0.0


def implements(registry: dict[str, Any] | list[str], declared: tuple[str, ...], what: str) -> None:
    """Raise at import if a registry's names differ from the ones the config declares for it."""
    if set(registry) != set(declared):
        raise RuntimeError(
            f"{what}: the registry has {sorted(registry)}, skyexp.config.names declares "
            f"{sorted(declared)}: add the name to both"
        )
