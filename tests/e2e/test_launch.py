"""Launchers: the Slurm preset (one task per node that starts torchrun across its GPUs), the
torchrun relaunch itself, and a tiny sweep through submitit_local."""

from __future__ import annotations

import json
import os
import sys

import pytest
from conftest import only_run_dir, run_skyexp, tiny
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_config import CONF

from skyexp import launch
from skyexp.__main__ import register_schema


def test_relaunch_only_outside_torchrun_and_only_when_asked():
    assert not launch.wants_torchrun(0, {})
    assert launch.wants_torchrun(2, {})
    assert launch.wants_torchrun(0, {launch.ENV_NPROC: "8"})  # the slurm preset's export
    assert (
        launch.resolve_nproc(0, {launch.ENV_NPROC: "8"}) == 8
        and launch.resolve_nproc(4, {launch.ENV_NPROC: "8"}) == 4
    )
    assert not launch.wants_torchrun(2, {"LOCAL_RANK": "0"})  # already a rank: never recurse


SLURM = {
    "SLURM_JOB_ID": "777",
    "SLURM_JOB_NUM_NODES": "4",
    "SLURM_JOB_NODELIST": "gpu[10-13]",
    "SLURM_NODEID": "2",
    "SLURM_NTASKS": "4",
    "SLURM_PROCID": "2",
}


def _clear_slurm(monkeypatch):
    for k in list(os.environ):
        if k.startswith("SLURM_") or k == "SUBMITIT_EXECUTOR":
            monkeypatch.delenv(k)


def test_torchrun_command_single_node_and_multi_node(tmp_path, monkeypatch):
    _clear_slurm(monkeypatch)
    over = ["+sweep=kl", "algo.kl_coef=0.01"]
    assert launch.slurm_job() is None
    one = launch.torchrun_command(8, over, tmp_path / "run dir")
    assert (
        one[:4] == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=8"]
        and "--standalone" in one
    )
    assert one[-4:] == [
        "skyexp",
        "+sweep=kl",
        "algo.kl_coef=0.01",
        f"hydra.run.dir='{tmp_path / 'run dir'}'",
    ]
    for k, v in SLURM.items():
        monkeypatch.setenv(k, v)
    job = launch.slurm_job()  # submitit's own reading of the Slurm variables
    assert (job.num_nodes, job.hostnames[0], job.job_id, job.node) == (4, "gpu10", "777", 2)
    multi = launch.torchrun_command(8, over, tmp_path)
    assert "--standalone" not in multi
    assert {
        "--nnodes=4",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=gpu10:29500",
        "--rdzv_id=777",
    } <= set(multi)
    monkeypatch.setenv(
        "SLURM_JOB_NODELIST", "r[1-2]n[3-4]-ib,z"
    )  # a node list the old hand-made parser needed care for
    monkeypatch.setenv("MASTER_PORT", "29611")
    assert "--rdzv_endpoint=r1n3-ib:29611" in launch.torchrun_command(
        8, over, tmp_path, env=os.environ
    )
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "1")
    assert "--standalone" in launch.torchrun_command(8, over, tmp_path)


def test_slurm_preset_makes_one_task_per_node_that_runs_torchrun(tmp_path, monkeypatch):
    from submitit.slurm.slurm import _make_sbatch_string

    monkeypatch.setenv("SKYEXP_OUTPUTS", str(tmp_path))
    register_schema()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="train",
            return_hydra_config=True,
            overrides=[
                "hydra/launcher=slurm",
                "hydra.launcher.partition=gpu",
                "hydra.launcher.nodes=2",
                "hydra.launcher.gpus_per_node=4",
                "+sweep=entropy_collapse",
            ],
        )
    lc = cfg.hydra.launcher
    assert lc._target_.endswith("SlurmLauncher") and lc.tasks_per_node == 1 and lc.timeout_min >= 60
    setup = list(lc.setup)  # interpolated from gpus_per_node
    assert setup == [f"export {launch.ENV_NPROC}=4"]
    text = _make_sbatch_string(
        command="python -m submitit.core._submit",
        folder=tmp_path,
        partition=lc.partition,
        nodes=lc.nodes,
        ntasks_per_node=lc.tasks_per_node,
        gpus_per_node=lc.gpus_per_node,
        cpus_per_task=lc.cpus_per_task,
        time=lc.timeout_min,
        setup=setup,
    )
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=4",
        f"export {launch.ENV_NPROC}=4",
    ):
        assert line in text, line
    assert OmegaConf.to_container(cfg.hydra.sweeper.params) == {
        "entropy": "none,fixed,adaptive,clip_cov,kl_cov",
        "temperature": "t0_6,t1_0",
    }


TINY = tiny(
    "context.stages.0.steps=1",
    "algo.n=2",
    "context.stages.0.max_response_len=8",
    "trainer.save_final=false",
)


@pytest.mark.slow
@pytest.mark.dist
def test_job_relaunches_itself_under_torchrun(tmp_path):
    """trainer.nproc_per_node=2: the job starts torchrun with its overrides; both ranks write to
    the job's one directory."""
    r = run_skyexp(TINY + ["trainer.nproc_per_node=2"], tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "torch.distributed.run --nproc_per_node=2 --standalone -m skyexp" in r.stdout + r.stderr
    run_dir = only_run_dir(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["rl_steps"] == 1


@pytest.mark.slow
def test_tiny_sweep_through_submitit_local(tmp_path):
    r = run_skyexp(
        [
            "-m",
            "+sweep=tiny_group_size",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=20",
            "eval.before=false",
            # the smoke form with no warm-up: this test is about the launcher, not about what
            # trains (tests/e2e/test_sweeps.py is). With sft=none every reward is 0, so the group
            # filter is off and a fixed entropy bonus gives each step a gradient.
            "sft=none",
            "algo.filter_groups=none",
            "entropy=fixed",
            "algo.batch_size=4",
            "context.stages.0.steps=2",
            "context.stages.0.max_response_len=16",
        ],
        tmp_path,
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (sweep,) = list((tmp_path / "out").glob("*/*"))
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1"]
    assert list(sweep.glob(".submitit/*/*_result.pkl")), "jobs did not run through submitit"
    for job, n in (("0", 4), ("1", 8)):  # the sweep's algo.n: 4,8
        rows = [json.loads(x) for x in (sweep / job / "metrics.jsonl").read_text().splitlines()]
        rl = [x for x in rows if "actor/pg_loss" in x]
        assert len(rl) == 2 and any("val/arith/pass@4" in x for x in rows)
        assert OmegaConf.load(sweep / job / ".hydra" / "config.yaml").algo.n == n
        assert list((sweep / job / "wandb").glob("offline-run-*"))
