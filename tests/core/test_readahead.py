"""ReadAhead: asks the kernel for each range in order, never more than the window past the pass."""

from __future__ import annotations

import os
import threading
import time

import pytest

from gaugeport.core import readahead
from gaugeport.core.readahead import ReadAhead

pytestmark = pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="posix_fadvise is POSIX-only (CI: Linux)")


@pytest.fixture
def advised(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    lock = threading.Lock()

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_WILLNEED
        with lock:
            calls.append((offset, length))

    monkeypatch.setattr(readahead.os, "posix_fadvise", record)
    return calls


def _settle(calls: list, n: int) -> None:
    deadline = time.monotonic() + 5
    while len(calls) < n and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)  # a call past the expected ones would land now


def _ranges(sizes: list[int]) -> list[tuple[str, int, int, int]]:
    out, offset = [], 0
    for i, n in enumerate(sizes):
        out.append((f"t{i}", 3, offset, n))
        offset += n
    return out


def test_asks_only_as_far_as_the_window_then_follows_the_pass(advised: list) -> None:
    with ReadAhead(_ranges([10] * 5), window=25) as ra:
        _settle(advised, 2)
        assert advised == [(0, 10), (10, 10)]  # a third range would end 30 bytes ahead
        ra.reached("t0")
        _settle(advised, 3)
        assert advised == [(0, 10), (10, 10), (20, 10)]
        ra.reached("t2")
        _settle(advised, 5)
        assert [o for o, _ in advised] == [0, 10, 20, 30, 40]


def test_a_range_larger_than_the_window_is_asked_for_once_the_pass_reaches_it(advised: list) -> None:
    with ReadAhead(_ranges([10, 100, 10]), window=25) as ra:
        _settle(advised, 1)
        assert advised == [(0, 10)]
        ra.reached("t0")
        _settle(advised, 2)
        assert advised == [(0, 10), (10, 100)]


def test_close_stops_a_waiting_thread(advised: list) -> None:
    ra = ReadAhead(_ranges([10] * 4), window=10)
    _settle(advised, 1)
    ra.close()
    assert ra.thread is not None and not ra.thread.is_alive()
    assert advised == [(0, 10)]
