"""Shared fixtures. Tests run on CPU; W&B is offline; caches go to a per-session temp dir."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
TESTS = Path(__file__).resolve().parent

# tests/ mirrors skyexp's wings (tests/rl, tests/algos, ...; end-to-end runs in tests/e2e). Test
# modules share helpers by module name (`from test_config import compose_cfg`), so every wing is
# on the path whichever file runs first; module basenames stay unique across the wings.
sys.path[1:1] = [str(d) for d in sorted(TESTS.iterdir()) if d.is_dir() and any(d.glob("test_*.py"))]


def pytest_collection_modifyitems(items):
    """Everything under tests/e2e/ (subprocesses, torchrun, whole runs) is marked slow."""
    for item in items:
        if TESTS / "e2e" in item.path.resolve().parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def _env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("skyexp_cache")
    os.environ["SKYEXP_CACHE"] = str(cache)
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_SILENT"] = "true"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"../shared/data not found at {SHARED_DATA}: real benchmark files are read by path, "
            "never copied"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_dir(_env) -> Path:
    from skyexp.config import ModelConfig
    from skyexp.model.loading import tiny_path

    return tiny_path(ModelConfig())


@pytest.fixture(scope="session")
def dist1():
    from skyexp import distributed

    return distributed.setup("cpu", 2)


# The test overlay: the tiny run the end-to-end tests start from, instead of a list per file. RL
# only (no SFT, no evaluation), the local logger without progress bars, 4 prompts x 4 samples,
# 2 steps of at most 16 tokens. A test adds what it is about: tiny("algo=grpo", "algo.n=2").
TINY_RUN = (
    "sft=none",
    "eval.before=false",
    "eval.after=false",
    "logger=local",
    "logger.progress=false",
    "algo.batch_size=4",
    "algo.n=4",
    "context.stages.0.steps=2",
    "context.stages.0.max_response_len=16",
    "trainer.lr=1e-3",
)


def tiny(*overrides: str) -> list[str]:
    """TINY_RUN with `overrides` on top: an override of a key TINY_RUN sets replaces its value in
    place (`sft=arith_warmup` brings the SFT warm-up back, `logger=default` W&B), others follow."""

    def key(o: str) -> str:
        return o.split("=", 1)[0].lstrip("+~")

    given = {key(o): o for o in overrides}
    base = [given.pop(key(o), o) for o in TINY_RUN]
    return base + [o for o in overrides if key(o) in given]


def run_skyexp(
    args: list[str],
    tmp_path: Path,
    timeout: int = 600,
    torchrun: int = 0,
    env: dict | None = None,
    module: str = "skyexp",
):
    """Run `python -m skyexp` (or another entry point, e.g. skyexp.filter; or torchrun) as a user
    would; outputs land under tmp_path."""
    import subprocess

    full_env = {
        **os.environ,
        "SKYEXP_OUTPUTS": str(tmp_path / "out"),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    if torchrun:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={torchrun}",
            "-m",
            module,
        ]
    else:
        cmd = [sys.executable, "-m", module]
    return subprocess.run(
        cmd + args, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def only_run_dir(tmp_path: Path) -> Path:
    dirs = [p.parent for p in (tmp_path / "out").rglob(".hydra")]
    assert len(dirs) == 1, f"expected one run dir, found {dirs}"
    return dirs[0]


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory) -> Path:
    """`python -m skyexp -m +sweep=tiny_entropy_collapse` as a user runs it (W&B offline): the
    sweep directory with one run directory per job. Shared by the sweep and notebook tests."""
    tmp = tmp_path_factory.mktemp("tiny_sweep")
    r = run_skyexp(["-m", "+sweep=tiny_entropy_collapse"], tmp, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    (sweep,) = list((tmp / "out").glob("*/*"))
    return sweep


def loss_spec(algo=None, coef=0.0, kl_coef=0.0, rule="none", **rule_params):
    """The LossSpec one RL step builds for these algo.* values and token rule (its parameters as
    entropy.* keys), with the entropy bonus `coef` and a KL loss weight `kl_coef`."""
    import dataclasses

    from skyexp.config import AlgoConfig, Config, EntropyConfig
    from skyexp.config.algorithm import build_algorithm
    from skyexp.rl.objective import LossSpec

    alg = build_algorithm(
        Config(algo=algo or AlgoConfig(), entropy=EntropyConfig(token_rule=rule, **rule_params))
    )
    return dataclasses.replace(LossSpec.of(alg, coef), kl_coef=kl_coef)


def update_settings(micro_batch_size, grad_clip=0.0, algo=None, world_size=1, device=None, **fwd):
    """UpdateSettings with algo's epochs and mini-batches; `fwd`: ForwardSettings' other fields
    (share_prompts, logprob_chunk, max_tokens, padding_free)."""
    import torch

    from skyexp.config import AlgoConfig
    from skyexp.model.layout import ForwardSettings
    from skyexp.rl.update import UpdateSettings

    algo = algo or AlgoConfig()
    f = ForwardSettings(micro_batch_size, device or torch.device("cpu"), **fwd)
    return UpdateSettings(f, grad_clip, world_size, algo.ppo_epochs, algo.mini_batches)


def algorithm(**algo):
    """The run's bound Algorithm for these algo.* values (defaults elsewhere)."""
    from skyexp.config import AlgoConfig, Config
    from skyexp.config.algorithm import build_algorithm

    return build_algorithm(Config(algo=AlgoConfig(**algo)))


def estimator(name, **algo):
    """ADVANTAGES[name] with its algo.* parameters bound as a run binds them (defaults unless
    given)."""
    return algorithm(advantage=name, **algo).advantage
