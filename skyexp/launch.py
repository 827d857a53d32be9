"""A Hydra job that runs itself under torchrun: one torchrun per node, across the node's GPUs.

Cluster jobs come from `hydra/launcher=slurm` (submitit), which starts one task per node. With
`trainer.nproc_per_node=N` (the slurm preset exports it as $SKYEXP_NPROC_PER_NODE from
`hydra.launcher.gpus_per_node`) that task does not train itself: it starts

    torchrun --nproc_per_node=N [--standalone | --nnodes=M --rdzv_backend=c10d
--rdzv_endpoint=HEAD:PORT]
             -m skyexp <the job's overrides> hydra.run.dir=<the job's output dir>

and waits. Every rank composes the same config, writes to the job's directory, and rank 0
writes summary.json, which the job returns to Hydra. On M > 1 nodes each node's torchrun joins one
c10d rendezvous on the first host of the allocation, keyed by the job id. Nodes, hosts and the job
id come from submitit's Slurm job environment (its parser of Slurm's node lists), also in a job
submitted without submitit. Under torchrun (LOCAL_RANK set) nothing is relaunched.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("skyexp")

ENV_NPROC = "SKYEXP_NPROC_PER_NODE"
DEFAULT_PORT = 29500


def under_torchrun(env: Mapping[str, str] = os.environ) -> bool:
    return "LOCAL_RANK" in env or "TORCHELASTIC_RUN_ID" in env


def resolve_nproc(configured: int, env: Mapping[str, str] = os.environ) -> int:
    """trainer.nproc_per_node, or the launcher's $SKYEXP_NPROC_PER_NODE when that is 0."""
    return configured or int(env.get(ENV_NPROC) or 0)


def wants_torchrun(configured: int, env: Mapping[str, str] = os.environ) -> bool:
    return resolve_nproc(configured, env) > 0 and not under_torchrun(env)


def slurm_job(env: Mapping[str, str] = os.environ) -> Any | None:
    """submitit's environment of the Slurm job this process runs in (num_nodes, hostnames,
    job_id, ...: read from the SLURM_* variables), or None outside Slurm."""
    if "SLURM_JOB_ID" not in env:
        return None
    from submitit.slurm.slurm import SlurmJobEnvironment

    return SlurmJobEnvironment()


def torchrun_command(nproc: int, overrides: list[str], run_dir: Path, job: Any | None = None,
                     env: Mapping[str, str] = os.environ) -> list[str]:
    """The torchrun command line for this node. `job`: a submitit job environment (default: this
    process's Slurm job, if any); several nodes join a c10d rendezvous on its first host."""
    job = job if job is not None else slurm_job(env)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if job is not None and job.num_nodes > 1:
        port = env.get("MASTER_PORT") or DEFAULT_PORT
        cmd += [
            f"--nnodes={job.num_nodes}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={job.hostnames[0]}:{port}",
            f"--rdzv_id={job.job_id}",
        ]
    else:
        cmd += ["--standalone"]
    # the job's own overrides, unchanged, so every rank composes the same config and run name
    return cmd + ["-m", "skyexp", *overrides, f"hydra.run.dir={_quote(str(run_dir))}"]


def _quote(value: str) -> str:
    """A Hydra override value: quoted when it holds characters the override grammar treats
    specially."""
    if re.fullmatch(r"[\w/.\-+@:]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def job_overrides() -> list[str]:
    """The running Hydra job's command-line overrides (a sweep job's include its swept values)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task)


def run_torchrun(configured: int, overrides: list[str], run_dir: Path) -> dict[str, Any] | None:
    """Start torchrun for this node and wait; the run's summary (on the node that has it)."""
    cmd = torchrun_command(resolve_nproc(configured), overrides, run_dir)
    log.info("starting %s", " ".join(cmd))
    rc = subprocess.run(cmd).returncode
    # the ranks' exit code, as a run without the relaunch would end (e.g. stopped with a checkpoint)
    if rc != 0:
        print(f"skyexp: torchrun exited with code {rc}: {' '.join(cmd)}", file=sys.stderr)
        sys.exit(rc)
    summary = run_dir / "summary.json"
    return json.loads(summary.read_text()) if summary.exists() else None
