"""The configuration wing: typed schemas (schema, data, eval), the algorithm bound once
(algorithm: build_algorithm, imported on use, it brings torch), `bind` (names), the RL stage plan
(stages) and every check (validate). Import the public names from here."""

from skyexp.config.checks import check_world, to_typed, validate
from skyexp.config.data import (
    DataConfig,
    DistillConfig,
    FilterConfig,
    MixEntry,
    SampleJob,
    SFTConfig,
)
from skyexp.config.eval import QWEN_MATH_COT, EvalConfig
from skyexp.config.schema import (
    AlgoConfig,
    Config,
    ConfigError,
    ContextConfig,
    EntropyConfig,
    EvalRunConfig,
    LoggerConfig,
    ModelConfig,
    RewardConfig,
    RolloutConfig,
    StageConfig,
    TemperatureConfig,
    TrainerConfig,
    config_hash,
)

__all__ = [
    "QWEN_MATH_COT",
    "AlgoConfig",
    "Config",
    "ConfigError",
    "ContextConfig",
    "DataConfig",
    "DistillConfig",
    "EntropyConfig",
    "EvalConfig",
    "EvalRunConfig",
    "FilterConfig",
    "LoggerConfig",
    "MixEntry",
    "ModelConfig",
    "RewardConfig",
    "RolloutConfig",
    "SFTConfig",
    "SampleJob",
    "StageConfig",
    "TemperatureConfig",
    "TrainerConfig",
    "check_world",
    "config_hash",
    "to_typed",
    "validate",
]
