"""Sequential file output that bypasses the page cache (``O_DIRECT``) where the file system allows it.

gaugeport writes checkpoints of many GB once and does not read them back; through the page cache
every written byte first needs a freshly allocated cache page. On the machine measured (a virtual
machine, ``docs/scale.md``) writing 2.1 GB that way took 5.6 s of CPU, against 0.6 s (and 0.06 s of
CPU) with ``O_DIRECT`` from a reused buffer; on bare metal direct writes of this size also save the
copy into the cache. Direct I/O needs block-aligned memory, lengths and file offsets, so
:class:`AppendFile` copies what it is given into one aligned staging buffer (shared by every open
file of the process, one writer at a time), writes the whole blocks directly and keeps the few
bytes past the last block for the next call; :meth:`AppendFile.close` writes that tail through an
ordinary descriptor. Bytes that already start on a block boundary in memory, written at a block
boundary of the file, skip the copy: their whole blocks go to the disk from the caller's memory
(``canonicalize`` gathers into page-aligned buffers and its shards' data start on a block boundary,
:class:`gaugeport.core.fileio.SafetensorsStreamWriter`).

Where ``O_DIRECT`` does not exist (macOS, Windows) or is refused (tmpfs, some network file
systems: ``EINVAL`` on open or on the first write), the file is written as usual; the bytes are the
same either way (``tests/core/test_directio.py``). ``GAUGEPORT_DIRECT_IO=0`` turns direct I/O off.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

BLOCK = 4096  # alignment of memory, lengths and offsets (the largest logical block size in common use)
STAGING_BYTES = 16 << 20  # the staging buffer: writes larger than this go in pieces of this size

_lock = threading.Lock()
_staging: list[memoryview] = []  # the process's one staging buffer, made on first use


def direct_io_enabled() -> bool:
    """``O_DIRECT`` exists here and ``GAUGEPORT_DIRECT_IO`` does not turn it off."""
    return hasattr(os, "O_DIRECT") and os.environ.get("GAUGEPORT_DIRECT_IO", "1").strip() not in ("0", "no", "off")


def _staging_buffer() -> memoryview:
    if not _staging:
        from gaugeport.core.buffers import reusable_buffer

        _staging.append(memoryview(reusable_buffer(STAGING_BYTES + BLOCK)))  # mmap: page-aligned
    return _staging[0]


class AppendFile:
    """A new file (created or truncated) written front to back: :meth:`write` appends, :meth:`close` ends."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.direct = False
        self.tail = b""  # bytes past the last whole block, not yet written (direct mode only)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        if direct_io_enabled():
            try:
                self.fd = os.open(self.path, flags | os.O_DIRECT, 0o644)
                self.direct = True
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
        self.fd = os.open(self.path, flags, 0o644)

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        if not self.direct:
            _write_all(self.fd, view)
            return
        if not self.tail and len(view) >= BLOCK and _address(view) % BLOCK == 0:
            # the file is at a block boundary and the bytes start on one: their whole blocks go to the disk
            # straight from the caller's memory, with no copy (only what follows the last whole block is staged)
            whole = len(view) // BLOCK * BLOCK
            if not self._direct_write(view[:whole]):
                _write_all(self.fd, view[whole:])
                return
            view = view[whole:]
            if not len(view):
                return
        with _lock:
            staging = _staging_buffer()
            pos = 0
            while pos < len(view):
                head = len(self.tail)
                take = min(len(view) - pos, STAGING_BYTES + BLOCK - head)
                staging[:head] = self.tail
                staging[head:head + take] = view[pos:pos + take]
                pos += take
                total = head + take
                whole = total // BLOCK * BLOCK
                if whole and not self._direct_write(staging[:whole]):
                    _write_all(self.fd, staging[whole:total])  # an ordinary descriptor now: the rest as it comes
                    self.tail = b""
                    _write_all(self.fd, view[pos:])
                    return
                self.tail = bytes(staging[whole:total])

    def _direct_write(self, blocks: memoryview) -> bool:
        """Write whole blocks directly; False when the file system refused (then they were written through
        the page cache, and the descriptor is an ordinary one from here on)."""
        try:
            _write_all(self.fd, blocks)
            return True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
        self._leave_direct()
        _write_all(self.fd, blocks)
        return False

    def _leave_direct(self) -> None:
        import fcntl  # only reached where O_DIRECT exists (Linux); absent on Windows

        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        self.direct = False

    def close(self) -> None:
        """Write what is left and close (the file is complete)."""
        try:
            if self.direct and self.tail:
                self._leave_direct()  # the last partial block cannot go directly
                _write_all(self.fd, memoryview(self.tail))
                self.tail = b""
        finally:
            os.close(self.fd)

    def abort(self) -> None:
        """Close without writing what is left (the caller removes the incomplete file)."""
        os.close(self.fd)


def _address(view: memoryview) -> int:
    """Where ``view``'s first byte lies in memory."""
    import numpy as np

    return int(np.frombuffer(view, dtype=np.uint8).ctypes.data) if len(view) else 0


def _write_all(fd: int, view: memoryview) -> None:
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:])
