"""The names each registry accepts, looked up lazily for skyexp.config's checks (no torch at import)."""

from __future__ import annotations


def registry_names(kind: str) -> list[str]:
    """The valid names of one registry (`kind`), for config checks that list the options."""
    # Imported here so `config` stays importable without torch-heavy modules at import time.
    if kind == "algo":
        from skyexp.algos.advantages import ADVANTAGES

        return sorted(ADVANTAGES)
    if kind == "loss_agg":
        from skyexp.algos.losses import AGGREGATIONS

        return sorted(AGGREGATIONS)
    if kind == "entropy":
        from skyexp.algos.entropy import CONTROLLERS

        return sorted(CONTROLLERS)
    if kind == "filter":
        from skyexp.algos.filters import FILTERS

        return sorted(FILTERS)
    if kind == "kl":
        from skyexp.algos.kl import KL_ESTIMATORS

        return sorted(KL_ESTIMATORS)
    if kind == "rollout_is":
        from skyexp.algos.rollout_is import ROLLOUT_IS

        return sorted(ROLLOUT_IS)
    if kind == "rollout":
        from skyexp.rollout import ENGINE_NAMES

        return sorted(ENGINE_NAMES)
    if kind == "data":
        from skyexp.data import SOURCE_NAMES

        return sorted(SOURCE_NAMES)
    if kind == "reward_term":
        from skyexp.rewards.terms import REWARD_TERMS

        return sorted(REWARD_TERMS)
    raise KeyError(kind)
