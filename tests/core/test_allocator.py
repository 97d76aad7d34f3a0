"""Freed memory kept in the process while a verb runs, and given back after (glibc; a no-op elsewhere).

Each case runs in a fresh interpreter: the settings are process-wide, and resident memory is read
from the kernel (``VmRSS``)."""

import subprocess
import sys

import pytest

from gaugeport.core.allocator import _libc

# Justified skip: mallopt and malloc_trim are glibc's, and VmRSS comes from Linux's /proc; elsewhere the module
# is a documented no-op with nothing to measure. Every CI machine here is Linux with glibc, so these run there.
pytestmark = pytest.mark.skipif(_libc() is None or not sys.platform.startswith("linux"),
                                reason="glibc's mallopt and /proc/self/status are Linux-with-glibc only")

CHILD = """
import sys
import numpy as np
from gaugeport.core.allocator import freed_memory_kept

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

def freed_growth():  # resident MB left over after a 256 MB array is written and dropped
    base = rss_mb()
    a = np.ones(64 * 2**20, dtype=np.float32)
    del a
    return rss_mb() - base

mode = sys.argv[1]
if mode == "default":
    print(freed_growth())
elif mode == "kept":
    with freed_memory_kept():
        print(freed_growth())
else:  # "after": what is left once the block is left, then the default behaviour again
    with freed_memory_kept():
        base = rss_mb()
        a = np.ones(64 * 2**20, dtype=np.float32)
        del a
    print(rss_mb() - base, freed_growth())
"""


def _run(mode: str) -> list[float]:
    proc = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [float(x) for x in proc.stdout.split()]


def test_by_default_a_dropped_large_array_leaves_the_process() -> None:
    assert _run("default")[0] < 32


def test_inside_the_block_a_dropped_array_stays_for_reuse() -> None:
    assert _run("kept")[0] > 200


def test_leaving_the_block_gives_the_memory_back_and_restores_the_default() -> None:
    left, growth_after = _run("after")
    assert left < 32
    assert growth_after < 32


def test_step_trim_keeps_freed_memory_until_the_resident_size_passes_the_first_steps_plus_slack(monkeypatch):
    from gaugeport.core import allocator

    trims = []
    monkeypatch.setattr(allocator, "release_freed_memory", lambda: trims.append(1))
    sizes = iter([1000, 1100, 1150, 1151, 1120, 1400])
    policy = allocator.StepTrim(slack=150, rss=lambda: next(sizes))
    done = [policy.step_done() for _ in range(6)]
    assert done == [False, False, False, True, False, True]  # the bound: 1000 + 150, from the first step
    assert policy.trims == len(trims) == 2


def test_resident_bytes_reads_this_process():
    from gaugeport.core.allocator import resident_bytes

    assert 10 << 20 < resident_bytes() < 100 << 30
