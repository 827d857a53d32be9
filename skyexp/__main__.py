"""`python -m skyexp [overrides]`: compose the Hydra config, validate it, train."""

from __future__ import annotations

import sys

from skyexp.cli import hydra_command, register_schema

__all__ = ["main", "register_schema"]


def _train(cfg, run_dir, plain):
    from skyexp import launch
    from skyexp.rl.faults import Stopped

    # e.g. a Slurm job: torchrun across this node's GPUs
    if launch.wants_torchrun(cfg.trainer.nproc_per_node):
        return launch.run_torchrun(cfg.trainer.nproc_per_node, launch.job_overrides(), run_dir)
    from skyexp.train import train

    try:
        return train(cfg, run_dir, plain)
    except Stopped as e:  # SIGTERM or non-finite steps: a checkpoint was written
        print(f"skyexp: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


def main() -> None:
    hydra_command(_train)()


if __name__ == "__main__":
    main()
