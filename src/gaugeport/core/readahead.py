"""Read a checkpoint's bytes into the page cache a little ahead of their use.

A streamed pass (``fingerprint``, ``canonicalize``) maps tensors in its own order and spends CPU
time on each before the next. On a checkpoint that is not in the page cache, each map then waits
for the disk while the CPUs idle, and the disk idles while the CPUs work. :class:`ReadAhead` keeps
the disk busy instead: a helper thread reads the pass's tensors in order, part by part, into one
small reused buffer (the bytes are dropped; the page cache keeps the pages), staying at most
``window`` bytes ahead of the last tensor the pass has reached, so that a checkpoint larger than
memory is not read ahead into pages evicted before their use.

Why plain reads and not ``posix_fadvise(POSIX_FADV_WILLNEED)``: Linux reads at most the device's
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
CHUNK_BYTES = 4 << 20  # one read: the reused buffer's size


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
        self.cond = threading.Condition()
        self.stopped = False
        self.thread: threading.Thread | None = None
        if self.ranges and hasattr(os, "preadv"):  # elsewhere: no reading ahead
            self.thread = threading.Thread(target=self._run, name="gaugeport-readahead", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        buf = memoryview(bytearray(CHUNK_BYTES))
        for i, (_, fd, offset, length) in enumerate(self.ranges):
            start = self.ends[i] - length  # where the range begins in the pass's byte count
            for part in range(0, length, CHUNK_BYTES):
                n = min(CHUNK_BYTES, length - part)
                with self.cond:  # wait while this part would end more than the window past the pass
                    while not self.stopped and start + part + n - self.used > self.window and start + part > self.used:
                        self.cond.wait()
                    if self.stopped:
                        return
                try:
                    if os.preadv(fd, [buf[:n]], offset + part) <= 0:
                        return  # the file ended early: the pass's own read says so
                except OSError:
                    return

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
