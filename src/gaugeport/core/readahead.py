"""Ask the kernel to read a checkpoint's bytes a little ahead of their use.

A streamed pass (``fingerprint``, ``canonicalize``) reads tensors in its own order and spends CPU
time on each before the next. On a checkpoint that is not in the page cache, every read then waits
for the disk while the CPUs idle, and the CPUs idle while the disk waits for the next read.
:class:`ReadAhead` keeps the disk busy instead: a helper thread walks the pass's tensors in order
and calls ``posix_fadvise(POSIX_FADV_WILLNEED)`` on each (the kernel starts reading it into the
page cache and returns), staying at most ``window`` bytes ahead of the last tensor the pass has
reached, so a checkpoint larger than memory is not read ahead into pages evicted before their use.

Nothing is copied and nothing is allocated in the process: the pages belong to the page cache.
Where ``posix_fadvise`` is absent (not Linux or another POSIX system) it does nothing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

WINDOW_BYTES = 1 << 30  # read ahead at most this far past the tensor the pass has reached


class ReadAhead:
    """``ReadAhead(ranges, window)``: ``ranges`` are ``(key, fd, offset, length)`` in the order they will be
    used; :meth:`reached` says that the pass is at ``key`` (everything up to it is no longer ahead);
    :meth:`close` (or the ``with`` block) stops the helper thread. ``fd`` must stay open until then."""

    def __init__(self, ranges: Sequence[tuple[str, int, int, int]], window: int = WINDOW_BYTES) -> None:
        self.ranges = list(ranges)
        self.window = window
        self.position = {key: i for i, (key, *_) in enumerate(self.ranges)}
        self.ends = []  # bytes of the ranges up to and including each one
        total = 0
        for _, _, _, length in self.ranges:
            total += length
            self.ends.append(total)
        self.used = 0  # bytes up to the range the pass has reached
        self.advised = 0  # ranges already asked for
        self.cond = threading.Condition()
        self.stopped = False
        self.thread: threading.Thread | None = None
        if hasattr(os, "posix_fadvise") and self.ranges:
            self.thread = threading.Thread(target=self._run, name="gaugeport-readahead", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        for i, (_, fd, offset, length) in enumerate(self.ranges):
            with self.cond:
                while not self.stopped and self.ends[i] - self.used > self.window and self.ends[i] - length > self.used:
                    self.cond.wait()  # the range would start more than the window ahead of the pass
                if self.stopped:
                    return
            try:
                os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
            except OSError:  # a hint only: the read itself reports any real error
                return
            with self.cond:
                self.advised = i + 1

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
