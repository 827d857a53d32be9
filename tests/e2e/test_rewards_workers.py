"""The scoring pool's workers end with the process that started them."""

from __future__ import annotations

import subprocess
import sys
import time

from conftest import ROOT
from test_rewards import _alive


def test_workers_do_not_outlive_the_trainer():
    code = (
        "import os, sys; sys.path.insert(0, sys.argv[1]); from skyexp.rewards.pool import "
        "ScoringPool\n"
        "if __name__ == '__main__':\n"
        "    p = ScoringPool(2, 2.0); p.verify([('1/2', '0.5')])\n"
        "    print(' '.join(str(w.proc.pid) for w in p._workers), flush=True); os._exit(0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, timeout=120
    )
    pids = [int(x) for x in out.stdout.split()]
    assert len(pids) == 2, out.stderr[-2000:]
    end = time.monotonic() + 20
    while any(_alive(p) for p in pids) and time.monotonic() < end:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)
