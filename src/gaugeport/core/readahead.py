"""Read a checkpoint's bytes into the page cache a little ahead of their use.

A streamed pass (``fingerprint``, ``canonicalize``) maps tensors in its own order and spends CPU
time on each before the next. On a checkpoint that is not in the page cache, each map then waits
for the disk while the CPUs idle, and the disk idles while the CPUs work. :class:`ReadAhead` keeps
the disk busy instead: a helper thread reads the pass's tensors in order, part by part (the bytes are
dropped; the page cache keeps the pages), staying at most
``window`` bytes ahead of the last tensor the pass has reached, so that a checkpoint larger than
memory is not read ahead into pages evicted before their use.

How a part is read: ``os.preadv`` into one reused buffer (the bytes are dropped). The copy is the
first touch of each page by a CPU of this machine, made here, on the helper thread, once per page, as
a plain read makes it. ``os.sendfile`` to ``/dev/null`` (no copy into the process) was the way until
2026-12-03: it costs the helper less, but it leaves each page's first touch to the threads that
gather and check the tensor, and on the virtual machine measured that first touch, made by several
threads at once while the disk is still filling pages, cost several times what the copy does.
Measured on a cold 2.1 GB checkpoint, ``fingerprint`` five times each, interleaved (``docs/scale.md``):
2.40-3.94 s and 3.4-6.3 s of CPU with ``sendfile``, 2.17-2.38 s and 3.5-3.7 s with these reads.

Why not ``posix_fadvise(POSIX_FADV_WILLNEED)``: Linux reads at most the device's
readahead size per such call (``read_ahead_kb``, 8 MB on the machine measured), and a memory map
populated from the disk holds the process's memory-map lock while it waits, stalling every other
thread's page faults and allocations. Measured on a cold 1.9 GB checkpoint (``docs/scale.md``):
``fingerprint`` took 1.8-2.3 s with the hints, 1.2-1.3 s with these reads, against 1.1 s warm.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

WINDOW_BYTES = 1 << 30  # read ahead at most this far past the tensor the pass has reached
CHUNK_BYTES = 4 << 20  # one part: the bytes one read brings in (the reused buffer's size)


class _PartReader:
    """``reader(fd, offset, n)`` reads ``n`` bytes of ``fd`` at ``offset`` into one reused buffer (so that the
    page cache holds them) and returns how many it read (0 at the end of the file)."""

    def __init__(self) -> None:
        self.buf: memoryview | None = None

    def __call__(self, fd: int, offset: int, n: int) -> int:
        if self.buf is None:
            self.buf = memoryview(bytearray(CHUNK_BYTES))
        return os.preadv(fd, [self.buf[:min(n, CHUNK_BYTES)]], offset)

    def close(self) -> None:
        self.buf = None


class ReadAhead:
    """``ReadAhead(ranges, window)``: ``ranges`` are ``(key, fd, offset, length)`` in the order they will be
    used; :meth:`reached` says that the pass is at ``key`` (everything up to it is no longer ahead);
    :meth:`close` (or the ``with`` block) stops the helper thread. ``fd`` must stay open until then.
    A failed read stops the helper quietly: reading ahead is an optimisation, and the pass's own read
    of the same bytes reports the error."""

    def __init__(self, ranges: Sequence[tuple[str, int, int, int]], window: int = WINDOW_BYTES) -> None:
        self.ranges = list(ranges)
        self.window = window
        self.position = {key: i for i, (key, *_) in enumerate(self.ranges)}
        self.ends = []  # bytes of the ranges up to and including each one
        total = 0
        for _, _, _, length in self.ranges:
            total += length
            self.ends.append(total)
        self.used = 0  # bytes up to the end of the range the pass has reached
        self.read_to = 0  # bytes read so far (in the pass's order)
        self.held = False  # the helper waits for the pass (the window is full)
        self.finished = False  # the helper ended (all read, stopped, or a failed read)
        self.cond = threading.Condition()
        self.stopped = False
        self.thread: threading.Thread | None = None
        if self.ranges and hasattr(os, "preadv"):  # elsewhere: no reading ahead
            self.thread = threading.Thread(target=self._run, name="gaugeport-readahead", daemon=True)
            self.thread.start()
        else:
            self.finished = True  # nothing will be read ahead: wait_read() returns at once

    def _run(self) -> None:
        part_reader = _PartReader()
        try:
            self._read_all(part_reader)
        finally:
            part_reader.close()
            with self.cond:
                self.finished = True
                self.cond.notify_all()

    def _read_all(self, part_reader: _PartReader) -> None:
        for i, (_, fd, offset, length) in enumerate(self.ranges):
            start = self.ends[i] - length  # where the range begins in the pass's byte count
            for part in range(0, length, CHUNK_BYTES):
                n = min(CHUNK_BYTES, length - part)
                with self.cond:  # wait while this part would end more than the window past the pass
                    while not self.stopped and start + part + n - self.used > self.window and start + part > self.used:
                        if not self.held:
                            self.held = True
                            self.cond.notify_all()  # a wait_read() for bytes past the window returns
                        self.cond.wait()
                    self.held = False
                    if self.stopped:
                        return
                try:
                    if part_reader(fd, offset + part, n) <= 0:
                        return  # the file ended early: the pass's own read says so
                except OSError:
                    return
                with self.cond:
                    self.read_to = start + part + n
                    self.cond.notify_all()

    def wait_read(self, key: str) -> None:
        """Wait until the helper has read through range ``key``, so that mapping it waits for no disk and
        competes with no other read; at once when the helper has ended or waits for the pass (``key`` lies
        past the window: the caller's own read brings it in)."""
        i = self.position.get(key)
        if i is None:
            return
        with self.cond:
            while self.read_to < self.ends[i] and not (self.finished or self.stopped or self.held):
                self.cond.wait()

    def reached(self, key: str) -> None:
        """The pass is at ``key``: ranges up to it no longer count against the window."""
        i = self.position.get(key)
        if i is None:
            return
        with self.cond:
            if self.ends[i] > self.used:
                self.used = self.ends[i]
                self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()
        if self.thread is not None:
            self.thread.join()

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
