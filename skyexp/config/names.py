"""The names each registry accepts, looked up lazily for skyexp.config's checks (no torch at import)."""

from __future__ import annotations

import importlib

# kind -> (module, registry): imported on use so `config` stays importable without torch-heavy modules
REGISTRIES = {
    "algo": ("skyexp.algos.advantages", "ADVANTAGES"),
    "loss_agg": ("skyexp.algos.losses", "AGGREGATIONS"),
    "entropy": ("skyexp.algos.entropy", "CONTROLLERS"),
    "filter": ("skyexp.algos.filters", "FILTERS"),
    "kl": ("skyexp.algos.kl", "KL_ESTIMATORS"),
    "rollout_is": ("skyexp.algos.rollout_is", "ROLLOUT_IS"),
    "rollout": ("skyexp.rollout", "ENGINE_NAMES"),
    "data": ("skyexp.data", "SOURCE_NAMES"),
    "reward_term": ("skyexp.rewards.terms", "REWARD_TERMS"),
}


def registry_names(kind: str) -> list[str]:
    """The valid names of one registry (`kind`, a key of REGISTRIES), for checks that list the options."""
    module, attr = REGISTRIES[kind]
    return sorted(getattr(importlib.import_module(module), attr))
