"""trainer.keep_freed_memory: freed CPU memory is reused by the next step, not faulted in again."""

import platform
import subprocess
import sys

import pytest

from skyexp.config import Config

PROBE = """
import resource, sys, torch
from skyexp.distributed import setup
setup("cpu", 1, keep_memory=sys.argv[1] == "keep")

def step():  # a "training step": three 48 MiB activations, every page written, then freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    acts = [torch.ones(12 << 20) for _ in range(3)]
    del acts
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

print(*[step() for _ in range(10)])
"""


def steady_state_faults(mode: str) -> int:
    """Page faults of the last three of ten steps (the heap settles within about five)."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return sum(int(x) for x in out.stdout.split()[-3:])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt tuning is glibc-only")
def test_freed_memory_is_reused_without_page_faults():
    pages = 3 * 3 * (48 << 20) // 4096  # written by the last three steps
    # default glibc: a 48 MiB block is mmap'ed and unmapped on free, so every step faults it in
    assert steady_state_faults("default") > pages // 2
    # kept: later steps reuse the pages of the earlier ones
    assert steady_state_faults("keep") < pages // 50


def test_on_by_default():
    assert Config().trainer.keep_freed_memory is True
