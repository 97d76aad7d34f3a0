"""The row-and-column gather with sign-bit flips that ``canonicalize`` and ``fingerprint`` spend their time in.

``gather_2d(src, rows, cols, row_flip, col_flip, out)`` sets::

    out[i, j] = src[rows[i], cols[j]] ^ row_flip[i] ^ col_flip[j]

on the bits of a tensor (integer arrays of the float's item size; a flip is 0 or the IEEE sign bit,
so the XOR is exactly ``x * -1``). Two implementations, the same result bit for bit
(``tests/provenance/test_canonical_gather.py``):

- the pure-numpy one, the default: blocks of a few rows gathered with ``numpy.take`` (rows, then
  columns) and flipped with ``numpy.bitwise_xor`` while they are in cache;
- a compiled loop (``numba``, the optional extra ``gaugeport[fast]``), used only when
  ``GAUGEPORT_GATHER=numba`` is set: one pass, each source row read from cache while its columns are
  picked. On the 2-core machine measured (``docs/scale.md``) it gathered at 2.2-2.5 GB/s a core against
  numpy's 1.5-2.8 when the machine was idle (the rates vary from run to run by more than their
  difference; 1.5x numpy's rate once on a loaded machine), and importing numba and loading its cached
  kernel costs about 0.85 s per process, so it is not the default.

:func:`gather_2d` cuts outputs of at least :data:`SPLIT_BYTES` into blocks of rows gathered on several
threads at once (``apply``); :func:`gather_rows_cols` gathers on the calling thread alone, for callers that
keep one part per thread going (``canonicalize``, ``fingerprint``). Where the columns move in whole aligned
blocks (:func:`column_block`: an attention head's columns), a block is taken as one item.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_SUB_BYTES = 1 << 20  # numpy: rows gathered together (~1 MB, in the second-level cache; 64 KB ran 10-50 % slower)


def column_block(cols: np.ndarray) -> int:
    """The largest ``b`` such that ``cols`` is made of whole aligned blocks of ``b`` consecutive indices
    (``cols[j*b:(j+1)*b] == c*b + arange(b)``): an attention head's columns moved together. 1 for a
    permutation of single columns."""
    n = int(cols.size)
    if n < 2:
        return 1
    cuts = np.flatnonzero(np.diff(cols) != 1) + 1
    bounds = np.concatenate(([0], cuts, [n]))
    return int(np.gcd.reduce(np.concatenate((np.diff(bounds), cols[bounds[:-1]], [n])).astype(np.int64)))


def _numpy_gather(src: np.ndarray, rows: np.ndarray, cols: np.ndarray, row_flip: np.ndarray, col_flip: np.ndarray,
                  out: np.ndarray, block: int = 1) -> None:
    """``block`` > 1 (:func:`column_block`): the columns move in blocks of that many, so each block is taken
    as one item (a copy of ``block`` values, not ``block`` single picks), the flips applied after."""
    n, c = out.shape
    per = max(1, _SUB_BYTES // max(1, src.shape[1] * src.itemsize))
    tmp = np.empty((min(per, n), src.shape[1]), dtype=src.dtype)
    flip_cols, flip_rows = bool(col_flip.any()), bool(row_flip.any())
    block = math.gcd(block, src.shape[1], c)  # a block view needs whole blocks in the source and the output rows
    if block > 1:
        wide = np.dtype((np.void, block * src.itemsize))
        tmp_wide, out_wide, cols_wide = tmp.view(wide), out.view(wide), cols[::block] // block
    for i in range(0, n, per):
        k = min(per, n - i)
        t, o = tmp[:k], out[i:i + k]
        np.take(src, rows[i:i + k], axis=0, out=t, mode="clip")  # clip: no buffered copy (indices are valid)
        if block > 1:
            np.take(tmp_wide[:k], cols_wide, axis=1, out=out_wide[i:i + k], mode="clip")
        else:
            np.take(t, cols, axis=1, out=o, mode="clip")
        if flip_cols:
            np.bitwise_xor(o, col_flip[None, :], out=o)
        if flip_rows:
            np.bitwise_xor(o, row_flip[i:i + k, None], out=o)


def _gather_loop(src, rows, cols, row_flip, col_flip, out):  # type: ignore[no-untyped-def]
    """The compiled kernel's source (plain Python: numba compiles it on first use). Four output rows at a
    time share each column index and flip (~30% faster than one row at a time on the machine measured)."""
    n, c = out.shape
    i = 0
    while i + 4 <= n:
        s0, s1, s2, s3 = src[rows[i]], src[rows[i + 1]], src[rows[i + 2]], src[rows[i + 3]]
        o0, o1, o2, o3 = out[i], out[i + 1], out[i + 2], out[i + 3]
        f0, f1, f2, f3 = row_flip[i], row_flip[i + 1], row_flip[i + 2], row_flip[i + 3]
        for j in range(c):
            k, m = cols[j], col_flip[j]
            o0[j] = s0[k] ^ (f0 ^ m)
            o1[j] = s1[k] ^ (f1 ^ m)
            o2[j] = s2[k] ^ (f2 ^ m)
            o3[j] = s3[k] ^ (f3 ^ m)
        i += 4
    while i < n:
        s, f, o = src[rows[i]], row_flip[i], out[i]
        for j in range(c):
            o[j] = s[cols[j]] ^ (f ^ col_flip[j])
        i += 1


@functools.cache
def _numba_gather() -> Callable[..., None] | None:
    """The compiled kernel when ``GAUGEPORT_GATHER=numba`` asks for it (an error, with the install hint, when
    numba is absent), else None."""
    from gaugeport.core.errors import GaugeportError

    choice = os.environ.get("GAUGEPORT_GATHER", "numpy").strip().lower()
    if choice not in ("numpy", "numba", ""):
        raise GaugeportError(f"GAUGEPORT_GATHER={choice!r} is not a gather backend",
                             hint="set GAUGEPORT_GATHER to numpy (the default) or numba, or unset it")
    if choice != "numba":
        return None
    try:
        import numba
    except ImportError:
        raise GaugeportError("GAUGEPORT_GATHER=numba asks for the compiled gather, but numba is not installed",
                             hint="pip install 'gaugeport[fast]', or unset GAUGEPORT_GATHER (numpy's gather, "
                             "the default, gives the same bytes)") from None
    return numba.njit(nogil=True, cache=True, boundscheck=False)(_gather_loop)  # type: ignore[no-any-return]


def numba_available() -> bool:
    """Is ``numba`` installed (whether or not ``GAUGEPORT_GATHER=numba`` asks for it)?"""
    import importlib.util

    return importlib.util.find_spec("numba") is not None


def backend() -> str:
    """``"numba"`` where the compiled loop was asked for and is installed, else ``"numpy"``."""
    return "numba" if _numba_gather() is not None else "numpy"


SPLIT_BYTES = 1 << 18  # outputs at least this large are gathered in row blocks on several threads


@functools.cache
def gather_threads() -> int:
    """How many threads gather at once: one per core, up to ``GAUGEPORT_GATHER_THREADS`` (default 4)."""
    raw = os.environ.get("GAUGEPORT_GATHER_THREADS", "4").strip() or "4"
    if not raw.isdigit() or int(raw) < 1:
        from gaugeport.core.errors import GaugeportError

        raise GaugeportError(f"GAUGEPORT_GATHER_THREADS={raw!r} is not a positive number of threads",
                             hint="set it to 1 (no helper thread) or more, or unset it (up to 4, one per core)")
    want = int(raw)
    return max(1, min(want, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


@functools.cache
def _pool() -> tuple[ThreadPoolExecutor | None, int]:
    """The helper threads that share one large gather with the caller, and how many ways it is split
    (:func:`gather_threads`); ``GAUGEPORT_GATHER_THREADS=1``: no helper."""
    ways = gather_threads()
    if ways == 1:
        return None, 1
    return ThreadPoolExecutor(max_workers=ways - 1, thread_name_prefix="gaugeport-gather"), ways


def gather_rows_cols(src: np.ndarray, rows: np.ndarray, cols: np.ndarray, row_flip: np.ndarray,
                     col_flip: np.ndarray, out: np.ndarray, block: int = 1) -> np.ndarray:
    """:func:`gather_2d` on the calling thread alone (for callers that keep several gathers going at once,
    one per thread, rather than splitting each); returns ``out``. ``block``: :func:`column_block` of ``cols``
    (given by a caller that gathers many parts with the same columns): > 1 takes whole blocks of columns,
    with numpy whichever backend is chosen (a block is a plain copy)."""
    if out.size == 0:
        return out
    if block > 1:
        _numpy_gather(src, rows, cols, row_flip, col_flip, out, block)
    else:
        (_numba_gather() or _numpy_gather)(src, rows, cols, row_flip, col_flip, out)
    return out


def gather_2d(src: np.ndarray, rows: np.ndarray, cols: np.ndarray, row_flip: np.ndarray, col_flip: np.ndarray,
              out: np.ndarray) -> np.ndarray:
    """``out[i, j] = src[rows[i], cols[j]] ^ row_flip[i] ^ col_flip[j]`` (see the module doc); returns ``out``.

    ``src``: ``[R, C]`` C-contiguous integers; ``rows``: ``len(out)`` indices into ``R``; ``cols``: ``C'``
    indices into ``C``; ``row_flip`` / ``col_flip``: ``src.dtype`` masks of those lengths. Indices must be
    in range (not checked: both implementations assume it). An output of at least :data:`SPLIT_BYTES` is
    cut into blocks of rows, one per core (:func:`_pool`), gathered at once (both kernels release the GIL);
    the bytes are the same however it is cut."""
    if out.size == 0:
        return out
    kernel = gather_rows_cols  # each block on its thread alone
    pool, ways = _pool()
    n = out.shape[0]
    if pool is None or out.nbytes < SPLIT_BYTES or n < 2 * ways:
        kernel(src, rows, cols, row_flip, col_flip, out)
        return out
    cuts = [n * k // ways for k in range(ways + 1)]
    jobs = [pool.submit(kernel, src, rows[a:b], cols, row_flip[a:b], col_flip, out[a:b])
            for a, b in zip(cuts[1:-1], cuts[2:], strict=True)]
    try:
        kernel(src, rows[:cuts[1]], cols, row_flip[:cuts[1]], col_flip, out[:cuts[1]])
    finally:
        for j in jobs:  # every block done (or failed) before ``out`` is handed on
            j.exception()
    for j in jobs:
        j.result()
    return out
