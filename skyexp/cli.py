"""The Hydra entry shared by every `python -m skyexp...` command: compose conf/train.yaml (so a
command takes the same overrides as training: model=..., data=..., rollout=...), validate it
against the typed schema, and run one job with the Hydra run directory. Config and data errors
end the process with exit code 2 and the message on stderr, before anything loads: skyexp's own
checks and Hydra's (an unknown option, a value of the wrong type, an unparsable override), which
Hydra itself would end with exit code 1 like any crash."""

from __future__ import annotations

import functools
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from skyexp.config.names import RANDOM_REWARD_MARK, random_reward
from skyexp.config.overrides import override_key, run_name_from_overrides

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def register_schema() -> None:
    """Make the dataclass schema the base of the composed config (train.yaml's first default), so
    every schema key can be overridden and a wrong type or unknown key fails at composition.
    eval.yaml starts from the same schema plus the keys of `python -m skyexp.eval`."""
    from hydra.core.config_store import ConfigStore

    from skyexp.config import Config, EvalRunConfig

    ConfigStore.instance().store(name="skyexp_schema", node=Config)
    ConfigStore.instance().store(name="skyexp_eval_schema", node=EvalRunConfig)


def quiet_libraries() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger("skyexp").setLevel(logging.WARNING)


def run_identity(
    overrides: list[str],
    run_name: str | None,
    group: str | None,
    recipe: str,
    random_reward: bool = False,
) -> tuple[str, str]:
    """(name, group) of a run in W&B. Name: logger.run_name, else what the command line changed
    (`algo.n=4,entropy=adaptive`, as a sweep names its runs), else the experiment (`dapo`), else
    `default`. Group: logger.group (a sweep sets its own name), else the experiment, else `recipe`
    (model-data-algo, e.g. `tiny-arith-rloo`), so single runs of one recipe sit together.
    A random-reward control (reward.terms.random != 0) gets the prefix `RANDOM-REWARD:` on any
    name, a given logger.run_name included, so it is never read as a real result."""
    experiment = next(
        (o.split("=", 1)[1] for o in overrides if override_key(o) == "experiment" and "=" in o),
        None,
    )
    name = run_name or run_name_from_overrides(overrides) or experiment or "default"
    if random_reward and not name.startswith(RANDOM_REWARD_MARK):
        name = f"{RANDOM_REWARD_MARK}:{name}"
    return name, group or experiment or recipe


def hydra_command(
    job: Callable[..., Any],
    config_name: str = "train",
    schema: type | None = None,
    prog: str = "skyexp",
    prepare: Callable[[Any], tuple] | None = None,
) -> Callable[[], Any]:
    """A main() running `job(typed_config, *prepare(typed_config), run_dir, plain_config)` under
    Hydra
    with conf/<config_name>.yaml checked against `schema` (default: the training Config).
    `prepare` runs in the Hydra context before anything loads: its ConfigError is an invalid config
    like the schema's own. Config, data and missing-extra errors print `<prog>: ...` and exit 2;
    so do Hydra's own errors before the job starts (see `config_errors_exit_2`)."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, OmegaConf

    register_schema()
    started = _Flag()

    # an absolute path: relative ones resolve against the calling module, which differs per command
    @hydra.main(
        version_base="1.3",
        config_path=str(Path(__file__).resolve().parent.parent / "conf"),
        config_name=config_name,
    )
    def entry(cfg: DictConfig):
        started.set()
        from skyexp.config import Config, ConfigError, to_typed
        from skyexp.data import DataError
        from skyexp.rollout import MissingExtraError

        # W&B name and group: what the command line changed (a sweep's runs: what the sweep changed)
        cfg.logger.run_name, cfg.logger.group = run_identity(
            list(HydraConfig.get().overrides.task), cfg.logger.run_name, cfg.logger.group,
            f"{cfg.model.name}-{cfg.data.name}-{cfg.algo.name}",
            random_reward(OmegaConf.select(cfg, "reward.terms", default=None) or {}))
        try:
            typed = to_typed(cfg, schema or Config)
            extra = prepare(typed) if prepare else ()
        except ConfigError as e:
            print(f"{prog}: invalid config: {e}", file=sys.stderr)
            sys.exit(2)
        quiet_libraries()
        try:
            return job(
                typed,
                *extra,
                Path(HydraConfig.get().runtime.output_dir),
                OmegaConf.to_container(cfg, resolve=True),
            )
        # MissingExtraError: e.g. rollout=vllm without vllm
        except (ConfigError, DataError, MissingExtraError) as e:
            print(f"{prog}: {e}", file=sys.stderr)
            sys.exit(2)

    return config_errors_exit_2(entry, started)


class _Flag:
    def __init__(self) -> None:
        self.is_set = False

    def set(self) -> None:
        self.is_set = True


def config_errors_exit_2(main: Callable[[], Any], started: _Flag) -> Callable[[], Any]:
    """`main` (a hydra.main entry) with Hydra's own errors before the job started (composition,
    override parsing, a value of the wrong type) exiting 2, as skyexp's config errors do. Hydra
    prints them and exits 1 (or raises, with HYDRA_FULL_ERROR=1: then the traceback is printed).
    Once the job has started, exit codes are the job's."""

    @functools.wraps(main)
    def wrapped() -> Any:
        try:
            return main()
        except SystemExit as e:
            if e.code == 1 and not started.is_set:
                sys.exit(2)
            raise
        except Exception:
            if started.is_set:
                raise
            traceback.print_exc()
            sys.exit(2)

    return wrapped
