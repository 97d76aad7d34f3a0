"""ReadAhead: reads each range in order, in parts, never more than the window past the pass."""

from __future__ import annotations

import os
import threading
import time

import pytest

from gaugeport.core import readahead
from gaugeport.core.readahead import ReadAhead

# Justified skip: os.preadv exists on Linux and the BSDs only; elsewhere ReadAhead starts no thread (a documented
# no-op) and there is nothing to observe. Every CI machine here is Linux, so these run there.
pytestmark = pytest.mark.skipif(not hasattr(os, "preadv"), reason="os.preadv is POSIX-only (CI: Linux)")


@pytest.fixture
def advised(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    lock = threading.Lock()

    def record(self: object, fd: int, offset: int, n: int) -> int:
        assert fd == 3
        with lock:
            calls.append((offset, n))
        return n

    monkeypatch.setattr(readahead._PartReader, "__call__", record)
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


def test_a_range_is_read_in_parts_of_the_buffer_size(advised: list, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readahead, "CHUNK_BYTES", 4)
    with ReadAhead(_ranges([10, 3]), window=100):
        _settle(advised, 4)
    assert advised == [(0, 4), (4, 4), (8, 2), (10, 3)]


def test_on_a_real_file_the_helper_waits_at_the_window_until_the_pass_reaches_the_range(tmp_path) -> None:
    f = tmp_path / "x.bin"
    data = os.urandom(3 * readahead.CHUNK_BYTES + 5)
    f.write_bytes(data)
    fd = os.open(f, os.O_RDONLY)
    try:
        with ReadAhead([("x", fd, 0, len(data))], window=readahead.CHUNK_BYTES) as ra:
            ra.thread.join(timeout=0.3)
            assert ra.thread.is_alive()  # one part read; the next would end past the window
            ra.reached("x")
            ra.thread.join(timeout=10)
            assert not ra.thread.is_alive()
    finally:
        os.close(fd)
    assert f.read_bytes() == data  # read only


def _file(tmp_path, n: int) -> tuple[bytes, int]:
    f = tmp_path / "x.bin"
    data = os.urandom(n)
    f.write_bytes(data)
    return data, os.open(f, os.O_RDONLY)


def test_a_part_is_read_through_the_page_cache_and_stops_at_the_end_of_the_file(tmp_path) -> None:
    data, fd = _file(tmp_path, 10_000)
    reader = readahead._PartReader()
    try:
        assert reader(fd, 0, 4096) == 4096
        assert reader(fd, 8192, 4096) == 10_000 - 8192  # the file ends first
        assert reader(fd, 10_000, 4096) == 0  # at the end: nothing more
        assert bytes(reader.buf[:10_000 - 8192]) == data[8192:]  # read, not skipped: these pages were touched
    finally:
        reader.close()
        os.close(fd)
    assert (tmp_path / "x.bin").read_bytes() == data


def test_a_part_longer_than_the_buffer_reads_at_most_the_buffer(tmp_path) -> None:
    _, fd = _file(tmp_path, readahead.CHUNK_BYTES + 100)
    reader = readahead._PartReader()
    try:
        assert reader(fd, 0, readahead.CHUNK_BYTES + 100) == readahead.CHUNK_BYTES
    finally:
        reader.close()
        os.close(fd)


def test_wait_read_returns_once_the_helper_has_read_through_the_range(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    calls: list[int] = []

    def gated(self: object, fd: int, offset: int, n: int) -> int:
        if offset >= 20:
            gate.wait(5)  # the third range waits until the test lets it go
        calls.append(offset)
        return n

    monkeypatch.setattr(readahead._PartReader, "__call__", gated)
    with ReadAhead(_ranges([10] * 4), window=100) as ra:
        ra.wait_read("t1")  # read by now, without the gate
        assert calls == [0, 10]
        waiter = threading.Thread(target=ra.wait_read, args=("t2",))
        waiter.start()
        waiter.join(0.2)
        assert waiter.is_alive()  # t2 is not read yet
        gate.set()
        waiter.join(5)
        assert not waiter.is_alive() and 20 in calls


def test_wait_read_past_the_window_returns_when_the_helper_waits_for_the_pass(advised: list) -> None:
    with ReadAhead(_ranges([10] * 5), window=25) as ra:
        done = threading.Event()
        threading.Thread(target=lambda: (ra.wait_read("t4"), done.set()), daemon=True).start()
        assert done.wait(5)  # no deadlock: the caller's own read brings t4 in
        assert advised == [(0, 10), (10, 10)]


def test_wait_read_returns_when_the_helper_stopped_on_a_failed_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readahead._PartReader, "__call__", lambda self, fd, offset, n: 0)  # the file ended early
    with ReadAhead(_ranges([10] * 3), window=100) as ra:
        done = threading.Event()
        threading.Thread(target=lambda: (ra.wait_read("t2"), done.set()), daemon=True).start()
        assert done.wait(5)


def test_wait_read_returns_at_once_where_nothing_is_read_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(readahead.os, "preadv")  # a system without positioned reads: no helper thread
    with ReadAhead(_ranges([10] * 3), window=100) as ra:
        assert ra.thread is None
        done = threading.Event()
        threading.Thread(target=lambda: (ra.wait_read("t2"), done.set()), daemon=True).start()
        assert done.wait(5)
