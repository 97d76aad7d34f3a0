"""How the C allocator keeps or returns freed memory (glibc; a no-op elsewhere).

A verb that builds and drops many large arrays (``same``: per layer, the float32 copies of both
models' tensors, their sketches and the cosine matrices) pays for every fresh page it touches.
glibc serves each allocation above its mmap threshold (at most 32 MB by default) with a new
mapping and unmaps it on free, so the next array of that size faults its pages in again. On a
virtual machine that hands freed pages back to the host (free page reporting, as on the machines
this project is measured on) such a fault costs 1 to 2.5 s per GB, more than reading the checkpoint.
:func:`keep_freed_memory` makes freed blocks stay in the process for reuse;
:func:`release_freed_memory` gives them back at the points a verb chooses.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 1 << 30  # allocations up to this size come from the heap, and this much free heap is kept
GLIBC_DEFAULT_BYTES = 128 * 1024  # glibc's default (starting) mmap and trim thresholds


@functools.cache
def _libc() -> object | None:
    try:
        import ctypes

        lib = ctypes.CDLL(None)
        lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.mallopt.restype = ctypes.c_int
        lib.malloc_trim.argtypes = [ctypes.c_size_t]
        lib.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError, ImportError):  # not glibc (musl, macOS): nothing to tune
        return None
    return lib


def _fn(name: str) -> Callable[..., int] | None:
    lib = _libc()
    return None if lib is None else getattr(lib, name)


def keep_freed_memory(limit: int = KEEP_BYTES) -> bool:
    """Serve allocations up to ``limit`` bytes from the heap and keep up to ``limit`` bytes of freed heap
    in the process (``mallopt(M_MMAP_THRESHOLD)`` and ``mallopt(M_TRIM_THRESHOLD)``), so a dropped array's
    pages are reused by the next instead of being unmapped and faulted in again. Process-wide and
    idempotent; True when the allocator took both settings (glibc), False where there is nothing to set."""
    mallopt = _fn("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, int(limit))) & bool(mallopt(M_TRIM_THRESHOLD, int(limit)))


def restore_default_thresholds() -> None:
    """Put the thresholds back to what the process started with: ``MALLOC_MMAP_THRESHOLD_`` and
    ``MALLOC_TRIM_THRESHOLD_`` where the environment sets them, else glibc's defaults (128 KiB; glibc then no
    longer raises the mmap threshold by itself, as it does in a process that never set it)."""
    mallopt = _fn("mallopt")
    if mallopt is None:
        return
    for param, env in ((M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_"), (M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_")):
        try:
            value = int(os.environ.get(env, GLIBC_DEFAULT_BYTES))
        except ValueError:
            value = GLIBC_DEFAULT_BYTES
        mallopt(param, value)


@contextlib.contextmanager
def freed_memory_kept(limit: int = KEEP_BYTES) -> Iterator[None]:
    """:func:`keep_freed_memory` inside the block; on leaving it, the free heap is given back
    (:func:`release_freed_memory`) and the thresholds restored (:func:`restore_default_thresholds`)."""
    changed = keep_freed_memory(limit)
    try:
        yield
    finally:
        release_freed_memory()
        if changed:
            restore_default_thresholds()


def release_freed_memory() -> None:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim(0)``; elsewhere a no-op).

    Without it the peak of a layer-streamed verb grew with depth although every block was freed: the
    small tensors kept between blocks (hidden states, site activations) pin the heap's freed pages
    (measured at d=1024: 16 blocks took ``verify`` 0.4 GB above 2 blocks; flat with the trim,
    docs/scale.md)."""
    trim = _fn("malloc_trim")
    if trim is not None:
        trim(0)


def resident_bytes() -> int:
    """This process's resident memory now (``/proc/self/statm``; 0 where the system has no such file)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


STEP_SLACK_BYTES = 256 << 20  # resident growth over the first step's that StepTrim lets through before it trims


class StepTrim:
    """The trim policy of a layer-streamed loop (call :meth:`step_done` after each layer).

    A layer builds and drops the same large arrays as the one before: kept, their freed pages serve the
    next layer with no fresh pages to fault in (``same`` at 7B width: 10.0-10.3 s against 11.9-14.0 s
    for 4 blocks when every layer trims). Kept without limit, reuse is imperfect and the peak grew
    130-180 MB a layer. So the free heap is given back (:func:`release_freed_memory`) only when the
    resident size after a layer exceeds the size after the first one by more than ``slack``: the
    resident size between layers stays below that bound, whatever the depth."""

    def __init__(self, slack: int = STEP_SLACK_BYTES, rss: Callable[[], int] = resident_bytes) -> None:
        self.slack, self._rss = slack, rss
        self.limit: int | None = None
        self.trims = 0

    def step_done(self) -> bool:
        """After a layer: True when the free heap was given back."""
        rss = self._rss()
        if self.limit is None:
            self.limit = rss + self.slack
            return False
        if rss <= self.limit:
            return False
        release_freed_memory()
        self.trims += 1
        return True
