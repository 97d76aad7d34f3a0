"""Large reusable byte buffers backed by transparent huge pages where the kernel offers them.

The streamed verbs (``canonicalize``, ``fingerprint``, ``apply``) read and gather through a few
buffers of tens to hundreds of MB that live for the whole run. Their first touch costs a page fault
per page: with 4 KB pages that was 0.48 GB/s on the 2-core machine measured (``docs/scale.md``), so
a fresh process spent about a second faulting in its buffers before reading a byte; asking for
2 MB pages (``madvise(MADV_HUGEPAGE)``, honoured when the kernel's transparent-huge-page setting is
``always`` or ``madvise``) ran at 1.72 GB/s. Elsewhere (another OS, huge pages off) the buffer is
an ordinary anonymous mapping: the same bytes, only the faults differ.
"""

from __future__ import annotations

import contextlib
import mmap

import numpy as np

HUGE_MIN_BYTES = 4 << 20  # smaller buffers come from numpy's allocator as usual


def reusable_buffer(nbytes: int) -> np.ndarray:
    """A ``uint8`` array of ``nbytes`` (contents undefined until written), on huge pages where offered.

    The memory is returned to the OS when the array (and every view of it) is gone."""
    if nbytes < HUGE_MIN_BYTES:
        return np.empty(nbytes, dtype=np.uint8)
    area = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        with contextlib.suppress(OSError):  # huge pages not configured: ordinary pages
            area.madvise(advice)
    return np.frombuffer(area, dtype=np.uint8)
