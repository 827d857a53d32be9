"""Command-line overrides as a run's identity: the key an override sets, the overrides a run is
about (not the sweep / experiment selection, not hydra.*), and the run name made of them. The
entry points name their W&B runs with these (skyexp.cli) and skyexp.analysis reads the names back.
"""

from __future__ import annotations


def override_key(override: str) -> str:
    """`+eval.n=4` -> `eval.n`; `~eval` -> `eval`."""
    return override.split("=", 1)[0].lstrip("+~")


def swept_overrides(
    overrides: list[str], skip: tuple[str, ...] = ("sweep", "experiment")
) -> list[str]:
    """The overrides that set something a run is about: without the sweep/experiment selection and
    hydra.* settings."""
    return [
        o
        for o in overrides
        if override_key(o) not in skip and not override_key(o).startswith("hydra.")
    ]


def run_name_from_overrides(
    overrides: list[str], skip: tuple[str, ...] = ("sweep", "experiment")
) -> str | None:
    """A run's name from its command-line overrides (as a sweep job gets them), the swept ones
    only: `algo.n=4,entropy=adaptive`. None if nothing is left."""
    return ",".join(sorted(swept_overrides(overrides, skip))) or None
