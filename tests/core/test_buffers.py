"""Reusable buffers: large ones are anonymous mappings (huge pages where offered), small ones plain arrays;
both are writable bytes of the size asked for."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

from gaugeport.core import buffers
from gaugeport.core.buffers import HUGE_MIN_BYTES, reusable_buffer


@pytest.mark.parametrize("nbytes", [0, 1, HUGE_MIN_BYTES - 1, HUGE_MIN_BYTES, HUGE_MIN_BYTES + 12345])
def test_a_buffer_holds_exactly_the_bytes_asked_for_and_keeps_what_is_written(nbytes):
    buf = reusable_buffer(nbytes)
    assert buf.dtype == np.uint8 and buf.shape == (nbytes,) and buf.flags.writeable
    pattern = (np.arange(nbytes) % 251).astype(np.uint8)
    buf[:] = pattern
    assert np.array_equal(buf, pattern)


def test_a_large_buffer_is_a_mapping_advised_onto_huge_pages(monkeypatch):
    advised = []
    real = mmap.mmap

    class Recording(real):  # type: ignore[misc, valid-type]
        def madvise(self, option, *args):
            advised.append(option)
            return super().madvise(option, *args)

    made = []
    monkeypatch.setattr(buffers.mmap, "mmap", lambda *a, **k: made.append(Recording(*a, **k)) or made[-1])
    buf = reusable_buffer(HUGE_MIN_BYTES)
    assert len(made) == 1 and len(made[0]) == HUGE_MIN_BYTES
    assert advised == ([mmap.MADV_HUGEPAGE] if hasattr(mmap, "MADV_HUGEPAGE") else [])
    buf[-1] = 7
    assert made[0][HUGE_MIN_BYTES - 1] == 7  # the array is the mapping's memory, not a copy
    reusable_buffer(HUGE_MIN_BYTES - 1)
    assert len(made) == 1
