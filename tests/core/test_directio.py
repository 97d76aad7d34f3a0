"""Checkpoint files are written around the page cache where the file system allows: the bytes on disk are
exactly those written, however the writes are cut, and a refusal of direct I/O falls back to ordinary writes."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gaugeport.core import directio
from gaugeport.core.directio import BLOCK, AppendFile


def _pieces(sizes: list[int], seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from([0, 1, 7, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 5, 70000]), max_size=8),
       st.integers(0, 2**31))
def test_appended_pieces_land_in_order_byte_for_byte(tmp_path_factory, sizes, seed):
    path = tmp_path_factory.mktemp("direct") / "f.bin"
    pieces = _pieces(sizes, seed)
    f = AppendFile(path)
    for p in pieces:
        f.write(p)
    f.close()
    assert path.read_bytes() == b"".join(pieces)


def test_a_write_larger_than_the_staging_buffer_goes_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(directio, "STAGING_BYTES", 2 * BLOCK)
    monkeypatch.setattr(directio, "_staging", [])
    data = _pieces([5 * BLOCK + 123], 1)[0]
    f = AppendFile(tmp_path / "f.bin")
    f.write(b"head")
    f.write(data)
    f.close()
    monkeypatch.setattr(directio, "_staging", [])  # the next test gets a buffer of the real size
    assert (tmp_path / "f.bin").read_bytes() == b"head" + data


# Justified skips: macOS and Windows have no O_DIRECT, and tmpfs refuses it; there AppendFile writes through
# the page cache, which every other test here covers. On the ext4 of the CI machine this test runs.
@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT on this OS")
def test_direct_io_is_used_where_the_file_system_takes_it(tmp_path):
    f = AppendFile(tmp_path / "f.bin")
    direct = f.direct
    f.write(b"x" * (BLOCK + 3))
    f.close()
    if not direct:
        pytest.skip(f"the file system under {tmp_path} refuses O_DIRECT")
    assert (tmp_path / "f.bin").read_bytes() == b"x" * (BLOCK + 3)


def test_a_refused_direct_write_falls_back_and_keeps_every_byte(tmp_path, monkeypatch):
    real_write = os.write
    refused = []

    def write(fd, data):
        flags = __import__("fcntl").fcntl(fd, __import__("fcntl").F_GETFL)
        if hasattr(os, "O_DIRECT") and flags & os.O_DIRECT:
            refused.append(len(data))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(directio.os, "write", write)
    pieces = _pieces([10, 3 * BLOCK, 17, 2 * BLOCK + 9], 2)
    f = AppendFile(tmp_path / "f.bin")
    for p in pieces:
        f.write(p)
    f.close()
    assert (tmp_path / "f.bin").read_bytes() == b"".join(pieces)
    assert not f.direct
    assert refused or not hasattr(os, "O_DIRECT")


def test_direct_io_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("GAUGEPORT_DIRECT_IO", "0")
    f = AppendFile(tmp_path / "f.bin")
    assert not f.direct
    f.write(b"abc")
    f.close()
    assert (tmp_path / "f.bin").read_bytes() == b"abc"


def test_an_aborted_file_is_closed_without_its_tail(tmp_path):
    f = AppendFile(tmp_path / "f.bin")
    f.write(b"y" * (BLOCK + 10))
    f.abort()
    got = (tmp_path / "f.bin").read_bytes()
    assert got == (b"y" * BLOCK if f.direct else b"y" * (BLOCK + 10))


def _aligned(data: bytes, offset: int = 0) -> memoryview:
    """``data`` in page-aligned memory, starting ``offset`` bytes past a block boundary."""
    import mmap

    buf = np.frombuffer(mmap.mmap(-1, len(data) + offset + BLOCK), dtype=np.uint8)  # an anonymous map: page-aligned
    assert buf.ctypes.data % BLOCK == 0
    buf[offset:offset + len(data)] = np.frombuffer(data, dtype=np.uint8)
    return memoryview(buf)[offset:offset + len(data)]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 7, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK, 3 * BLOCK + 5]),
                          st.sampled_from([0, 0, 1, 8])), max_size=8), st.integers(0, 2**31))
def test_pieces_in_aligned_and_unaligned_memory_land_in_order_byte_for_byte(tmp_path_factory, cuts, seed):
    path = tmp_path_factory.mktemp("direct") / "f.bin"
    pieces = _pieces([n for n, _ in cuts], seed)
    f = AppendFile(path)
    direct = f.direct
    for p, (_, offset) in zip(pieces, cuts, strict=True):
        f.write(_aligned(p, offset))
    assert f.direct == direct  # unaligned memory is staged, never sent directly (the kernel would refuse it)
    f.close()
    assert path.read_bytes() == b"".join(pieces)


# Justified skip: as above, without O_DIRECT (macOS, Windows, tmpfs) nothing is staged or skipped.
@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT on this OS")
def test_whole_blocks_in_aligned_memory_at_a_block_boundary_skip_the_staging_copy(tmp_path, monkeypatch):
    staged: list[int] = []
    real = directio._staging_buffer
    monkeypatch.setattr(directio, "_staging_buffer", lambda: staged.append(1) or real())
    pieces = _pieces([3 * BLOCK, 2 * BLOCK, 2 * BLOCK + 100, 2 * BLOCK], 3)
    f = AppendFile(tmp_path / "f.bin")
    if not f.direct:
        f.abort()
        pytest.skip(f"the file system under {tmp_path} refuses O_DIRECT")
    f.write(_aligned(pieces[0]))
    f.write(_aligned(pieces[1]))
    assert staged == []  # whole blocks, from aligned memory, at block boundaries: no copy
    f.write(_aligned(pieces[2]))  # its last 100 bytes are staged, and so is everything after them
    f.write(_aligned(pieces[3]))
    f.close()
    assert staged and (tmp_path / "f.bin").read_bytes() == b"".join(pieces)


def test_a_refused_direct_write_of_aligned_memory_falls_back_and_keeps_every_byte(tmp_path, monkeypatch):
    real_write = os.write

    def write(fd, data):
        if hasattr(os, "O_DIRECT") and __import__("fcntl").fcntl(fd, __import__("fcntl").F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(directio.os, "write", write)
    pieces = _pieces([2 * BLOCK + 9, BLOCK, 5], 4)
    f = AppendFile(tmp_path / "f.bin")
    for p in pieces:
        f.write(_aligned(p))
    f.close()
    assert (tmp_path / "f.bin").read_bytes() == b"".join(pieces)
    assert not f.direct
