"""`python tests/kill_in_save.py STEP [overrides]`: run `python -m skyexp [overrides]`, but SIGKILL
the process while it saves the checkpoint of RL step STEP: after every rank has written its
shards, state.json and DONE into the temporary directory, before the rename that commits it."""

from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path


def main() -> None:
    sys.path.insert(
        0, str(Path(__file__).resolve().parents[1])
    )  # this checkout's skyexp, as `-m skyexp` gets
    from skyexp import checkpoint

    step = int(sys.argv[1])
    real = checkpoint.commit

    def commit(tmp, path):
        if checkpoint.step_of(path) == step:
            os.kill(os.getpid(), signal.SIGKILL)
        real(tmp, path)

    checkpoint.commit = commit
    sys.argv = ["skyexp", *sys.argv[2:]]
    runpy.run_module("skyexp", run_name="__main__", alter_sys=True)  # exactly `python -m skyexp`


if __name__ == "__main__":  # the reward pool spawns processes that import this file
    main()
