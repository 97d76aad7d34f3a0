"""A deterministic representative of a checkpoint's gauge orbit: ``canonicalize`` and ``fingerprint``.

Every key below is read from stored values that a gauge only moves or negates (never recomputes),
so every gauged copy of a checkpoint yields the same keys, the same canonical gauge and bitwise the
same canonical weights:

residual
    sign: each coordinate's token-embedding column is made to start (in vocabulary order) with a
    positive entry (LayerNorm models: one global sign, set by canonical coordinate 0); order: the
    coordinates sorted by their norm gains (every norm, in table order), then by the sign-fixed
    embedding column, then by the sign-fixed slices of every other residual tensor.
MLP units (per layer, in canonical residual coordinates)
    sign (gated blocks only): the unit's sign-sensitive rows (up, down) start positive; order: the
    unit's rows, sign-fixed, compared lexicographically (gate first, in tensor-name order).
heads (per layer)
    query heads inside a key/value group sorted by their blocks; groups sorted by their K/V blocks,
    then by their sorted query heads.

Ties: a gain tie is broken by the next key (and reported); units or heads whose every key ties are
identical, so their order does not change the weights (reported too). A checkpoint with folded
(uniform) gains has the whole orthogonal group as symmetry: its representative here is canonical
for the signed-permutation part only, and the report says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaugeport.core.apply import RowColPlan, plan_rows_cols
from gaugeport.core.archspec import ArchSpec, ParamRule
from gaugeport.core.buffers import reusable_buffer
from gaugeport.core.checkpoint import Checkpoint, check_finite
from gaugeport.core.directio import BLOCK
from gaugeport.core.errors import ArchitectureError, GaugeportError
from gaugeport.core.fileio import atomic_path
from gaugeport.core.fullgauge import FullGauge, FullTransform, LayerGauge, transform_hidden
from gaugeport.core.gather import column_block, gather_rows_cols, gather_threads
from gaugeport.core.gauge import _SAME_SIZE_INT, _SIGN_BIT, SignedPermutation
from gaugeport.core.hidden import HiddenDims, HiddenRule, get_hidden_spec
from gaugeport.core.readahead import ReadAhead

FINGERPRINT_VERSION = "2"
FINGERPRINT_PREFIX = "fp2-"  # version 1 fingerprints were 32 bare hex digits (SHA-256); see fingerprint_version


PART_BYTES = 8 << 20  # a canonical tensor reaches the hash and the writer in parts of about this size
PARTS_IN_FLIGHT = 4  # parts handed to the hash, at most, before the oldest must be done (_Sink)
# canonicalize: parts handed to the hash and the writer. Deeper: while the disk both reads the checkpoint and
# writes its canonical copy, writes go slower than the gather; a deeper queue lets the gather run ahead then
# (128 MB of parts) and the writes catch up once the reads are done, instead of the gather waiting for the
# writer during the reads and the writer for the gather after them
WRITE_PARTS_IN_FLIGHT = 16


@dataclass
class Canonical:
    gauge: FullGauge  # maps the checkpoint to its canonical representative
    ties: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fingerprint: str | None = None  # set by canonicalize, which hashes the canonical tensors as it writes them


# ----------------------------------------------------------------------------- ordering helpers
def _first_nonzero_sign(rows: np.ndarray) -> np.ndarray:
    """Per row: the sign of its first nonzero entry (0 for an all-zero row)."""
    nz = rows != 0
    first = np.argmax(nz, axis=1)
    vals = rows[np.arange(rows.shape[0]), first]
    return np.sign(vals) * nz.any(axis=1)


PREFIX_COLUMNS = 16  # sort keys read first; the rest only where these leave a tie


class _Rows:
    """Sort-key rows read lazily from a tensor, in float64 (exact for every stored float dtype up to
    float32; wider ones go through float32, as the sort always has).

    ``units`` is a unit-major view of a stored tensor (``[n_units, ...]``, any strides: no copy was
    made); row ``i`` of the key is the concatenation of the flattened units ``idx[i, 0], idx[i, 1], ...``
    (``idx`` None: row ``i`` is unit ``i``). :meth:`lead` converts only the first columns of each row,
    which decide the order unless they tie; :meth:`full` converts everything (ties only).

    ``whole`` given: ``units`` holds only each unit's first :data:`PREFIX_COLUMNS` entries (its first
    residual coordinates: all that :meth:`lead` reads), ``unit_width`` the width of a whole unit, and
    ``whole()`` the whole units, made only when :meth:`full` is called (a tie)."""

    def __init__(self, units: torch.Tensor | np.ndarray, idx: np.ndarray | None = None,
                 whole: Callable[[], torch.Tensor] | None = None, unit_width: int | None = None) -> None:
        self.units = units
        self.whole = whole
        self.idx = np.arange(units.shape[0])[:, None] if idx is None else idx
        self.unit_width = int(np.prod(units.shape[1:], dtype=np.int64)) if unit_width is None else unit_width
        self.n, self.width = self.idx.shape[0], self.idx.shape[1] * self.unit_width

    @classmethod
    def of(cls, key: np.ndarray | torch.Tensor) -> _Rows:
        return cls(key.reshape(key.shape[0], -1) if key.ndim < 2 else key)

    def with_idx(self, idx: np.ndarray) -> _Rows:
        return _Rows(self.units, idx, self.whole, self.unit_width)

    def select(self, rows: np.ndarray) -> _Rows:
        """Rows ``rows`` of this key (an index array or a boolean mask)."""
        return self.with_idx(self.idx[rows])

    def _units_lead(self, c: int) -> np.ndarray:
        """The first ``c`` entries of every flattened unit, ``[n_units, min(c, unit_width)]`` float64."""
        u = self.units
        while u.ndim > 2 and int(np.prod(u.shape[2:], dtype=np.int64)) >= c:
            u = u[:, 0]  # the first entry of axis 1 holds the first c entries already
        if u.ndim > 2:
            u = u[:, :-(-c // int(np.prod(u.shape[2:], dtype=np.int64)))]
        return _as64(u.reshape(u.shape[0], -1)[:, :c])

    def lead(self, c: int) -> np.ndarray:
        """The first ``c`` columns of every row (fewer when the rows are shorter), float64."""
        m = min(self.idx.shape[1], -(-c // self.unit_width)) if self.unit_width else 0
        if m == 0:
            return np.zeros((self.n, 0))
        if self.whole is not None and c > PREFIX_COLUMNS:
            raise ValueError("internal error: a partial key holds only the first PREFIX_COLUMNS entries")
        lead = self._units_lead(c)
        return lead[self.idx[:, :m]].reshape(self.n, -1)[:, :c]

    def full(self) -> np.ndarray:
        """Every column of every row, float64."""
        if self.unit_width == 0:
            return np.zeros((self.n, 0))
        units = self.whole() if self.whole is not None else self.units
        units = _as64(units.reshape(units.shape[0], -1))
        return units[self.idx].reshape(self.n, -1)


def _as64(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return (x.float().numpy() if isinstance(x, torch.Tensor) else x).astype(np.float64)


class _Moved:
    """A stored tensor moved to canonical residual coordinates, made on first call only (a tie)."""

    def __init__(self, make: Callable[[], torch.Tensor], shape: Sequence[int]) -> None:
        self.make, self.shape, self.tensor = make, tuple(shape), None

    def __call__(self) -> torch.Tensor:
        if self.tensor is None:
            self.tensor = self.make()
        return self.tensor


def _unit_rows(tensor: torch.Tensor, rule: HiddenRule, dims: HiddenDims,
               whole: _Moved | None = None) -> list[tuple[str, str, _Rows]]:
    """A tensor's hidden axis split into its segments: ``(kind, mode, rows)`` per segment, each row one
    unit (MLP unit, query or key/value head) flattened -- views of ``tensor``, nothing converted yet.

    ``whole`` given: ``tensor`` is the first :data:`PREFIX_COLUMNS` entries of the moved tensor along
    its residual axis (a 2-D tensor's other axis), ``whole()`` the moved tensor (made on a tie only)."""
    sizes = [s.size(dims) for s in rule.segments]
    counts = [dims.mlp if seg.kind == "mlp" else dims.n_heads if seg.kind == "q_heads" else dims.n_kv_heads
              for seg in rule.segments]

    def units(t: torch.Tensor, i: int) -> torch.Tensor:
        part = torch.split(t, sizes, dim=rule.axis)[i]
        return torch.movedim(part, rule.axis, 0).unflatten(0, (counts[i], -1))

    out = []
    for i, seg in enumerate(rule.segments):
        if whole is None:
            out.append((seg.kind, seg.mode, _Rows(units(tensor, i))))
            continue
        width = sizes[i] // counts[i] * int(np.prod([n for a, n in enumerate(whole.shape) if a != rule.axis]))
        out.append((seg.kind, seg.mode, _Rows(units(tensor, i), None, _segment_units(units, whole, i), width)))
    return out


def _segment_units(units: Callable[[torch.Tensor, int], torch.Tensor], whole: _Moved,
                   i: int) -> Callable[[], torch.Tensor]:
    return lambda: units(whole(), i)


def _lexsort_rows(keys: Sequence[np.ndarray],
                  scales: Sequence[np.ndarray | None] | None = None) -> tuple[np.ndarray, int]:
    """Indices sorting the rows of the concatenated ``keys`` lexicographically, and the number of
    tie groups left (rows equal in every key). Earlier keys take precedence.

    The first :data:`PREFIX_COLUMNS` columns are sorted first: when they already tell every row
    apart, that order is the full lexicographic one (no tie to break) and the rest is never copied."""
    flat = [k if isinstance(k, _Rows) else _Rows.of(k) for k in keys]
    sc = list(scales) if scales is not None else [None] * len(flat)

    def scaled(k: np.ndarray, scale: np.ndarray | None) -> np.ndarray:  # ``scale``: one factor per row (a sign)
        return k if scale is None else k * scale[:, None]

    n = flat[0].n if flat else 0
    prefix, width = [], 0
    for k, scale in zip(flat, sc, strict=True):
        if width >= PREFIX_COLUMNS:
            break
        prefix.append(scaled(k.lead(PREFIX_COLUMNS - width), scale))
        width += prefix[-1].shape[1]
    if width and width < sum(k.width for k in flat):
        mat = np.concatenate(prefix, axis=1)
        order = np.lexsort(mat.T[::-1])
        s = mat[order]
        if n < 2 or not np.any(np.all(s[1:] == s[:-1], axis=1)):
            return order, 0
    mat = np.concatenate([scaled(k.full(), scale) for k, scale in zip(flat, sc, strict=True)], axis=1) if flat \
        else np.zeros((0, 0))
    if mat.shape[1] == 0:
        return np.arange(n), int(n > 1)
    order = np.lexsort(mat.T[::-1])  # lexsort: last key is primary
    s = mat[order]
    same = np.all(s[1:] == s[:-1], axis=1) if n > 1 else np.zeros(0, dtype=bool)
    groups = int(np.sum(same & ~np.concatenate([[False], same[:-1]]))) if same.size else 0
    return order, groups


def _ranks(order: np.ndarray) -> np.ndarray:
    perm = np.empty_like(order)
    perm[order] = np.arange(order.size)
    return perm


# ----------------------------------------------------------------------------- canonical gauge
def canonical_gauge(ckpt: Checkpoint, get: Callable[[str], torch.Tensor] | None = None) -> Canonical:
    """The full gauge mapping ``ckpt`` to its canonical representative, with the ties it met.

    Streamed: the residual keys first (norm gains and the first rows of the token embedding), then one
    layer at a time (only that layer's hidden-axis tensors in memory)."""
    return _canonical_pass(ckpt, get)


def _canonical_pass(ckpt: Checkpoint, get: Callable[[str], torch.Tensor] | None = None,
                    consume: Callable[[str, tuple[torch.dtype, tuple[int, ...]] | None, memoryview], None]
                    | None = None, *, prefix_ok: bool = False, depth: int = PARTS_IN_FLIGHT) -> Canonical:
    """:func:`canonical_gauge`; with ``consume``, also every canonical tensor, in sorted name order,
    in the same pass: a layer's gauge is decided from that layer's tensors, which are read once (kept
    until their turn, then dropped), on a helper thread while the main one gathers the tensors before
    them (the first layer's once the first tensor outside the layers is in).

    A canonical tensor reaches ``consume(name, header, data)`` in parts, in order: ``header`` is
    ``(dtype, shape)`` on its first part (None on the others), ``data`` the next bytes. 1-D and 2-D
    tensors are gathered (rows and columns at once, residual and hidden gauge composed) part by part,
    several parts at once, into reused buffers (:class:`_Emitter`); a part's buffer is reused a few parts
    later, so ``consume`` must be done with it by then (:class:`_Sink` is). Others are transformed whole
    (one part). ``depth``: the parts ``consume`` may hold at once (its :class:`_Sink`'s ``depth``)."""
    if get is None:
        with _plain_reads(ckpt) as plain:
            return _canonical_pass(ckpt, plain, consume, prefix_ok=True, depth=depth)
    whole = get.mapped if isinstance(get, _Reads) else get  # the pass's reads of whole tensors
    spec = ckpt.spec
    hspec = get_hidden_spec(spec.model_type)
    dims = hspec.dims(ckpt.config, ckpt.d_model)
    rules = spec.classify_all(ckpt.names)
    names = sorted(ckpt.names)
    if isinstance(get, _Reads):  # tensors are mapped in name order (a layer's together, ahead of its turn)
        get.read_ahead(names)
    residual, ties, notes = _canonical_residual(ckpt, get, spec, rules, names, prefix_ok=prefix_ok)
    res_tf = FullTransform(spec, ckpt.names, FullGauge(residual), ckpt.d_model, ckpt.config)
    by_layer: dict[int, list[str]] = {}
    for name in names:
        hit = hspec.match(name)
        if hit is not None:
            by_layer.setdefault(hit[1], []).append(name)
    layers = list(FullGauge.identity(ckpt.d_model, dims).layers)  # filled in as each layer is decided
    counts = {"mlp": 0, "heads": 0}
    kept: dict[str, torch.Tensor] = {}

    ahead: dict[int, Any] = {}  # consume: layer -> its tensors read and its gauge decided on the helper thread
    order = list(by_layer)  # the order layers come up in (name order)

    def decide(layer: int, stored_of: dict[str, torch.Tensor]) -> tuple[LayerGauge, int, int]:
        """Layer ``layer``'s gauge from its own tensors (``stored_of``: name -> stored tensor)."""
        blocks: list[tuple[str, str, _Rows]] = []
        for name in by_layer.get(layer, []):
            hit = hspec.match(name)
            assert hit is not None
            stored = stored_of[name]
            key = _leading_moved(stored, rules[name], residual, hit[0].axis)
            if key is None:  # in canonical residual coordinates, whole
                blocks.extend(_unit_rows(res_tf(name, stored), hit[0], dims))
            else:  # only the first residual coordinates; the rest is moved only for a tie
                moved = _Moved(functools.partial(res_tf, name, stored), stored.shape)
                blocks.extend(_unit_rows(key, hit[0], dims, moved))
        return _canonical_layer(blocks, dims, hspec.mlp_signs)

    def layer_tensors(layer: int) -> dict[str, torch.Tensor]:
        return {name: whole(name) for name in by_layer.get(layer, [])}

    def read_and_decide(layer: int) -> tuple[dict[str, torch.Tensor], tuple[LayerGauge, int, int]]:
        """On the helper thread, while the main one gathers the layer before: the layer's tensors and gauge."""
        if isinstance(get, _Reads) and by_layer.get(layer):  # the disk reads in the pass's order, one reader
            get.read_ahead_through(by_layer[layer][-1])
        stored_of = layer_tensors(layer)
        return stored_of, decide(layer, stored_of)

    def settle(layer: int, decision: tuple[LayerGauge, int, int]) -> None:
        layers[layer], mt, ht = decision
        counts["mlp"] += mt
        counts["heads"] += ht
        decided.add(layer)

    decided: set[int] = set()
    if consume is not None:
        full = FullGauge(residual, layers)  # type: ignore[arg-type]
        full_tf = FullTransform(spec, ckpt.names, full, ckpt.d_model, ckpt.config)
        emit = _Emitter(consume, depth)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gaugeport-read") as pool:
            try:
                for name in names:
                    hit = hspec.match(name)
                    if hit is not None and hit[1] not in decided:
                        layer = hit[1]
                        kept.clear()
                        job = ahead.pop(layer) if layer in ahead else pool.submit(read_and_decide, layer)
                        stored_of, decision = job.result()
                        following = order.index(layer) + 1
                        if following < len(order) and order[following] not in ahead:
                            ahead[order[following]] = pool.submit(read_and_decide, order[following])
                        kept.update(stored_of)
                        settle(layer, decision)
                    if name in kept:
                        stored, unchecked = kept.pop(name), False
                    elif isinstance(get, _Reads):  # gathered as its pages come in, each part checked finite
                        stored, unchecked = get.mapped(name, checked=False), True
                    else:
                        stored, unchecked = whole(name), False
                    if order and not decided and order[0] not in ahead:
                        # the first layer is read and decided while the tensors before it are gathered (once
                        # the first of them is in: on a cold page cache both would wait for the disk)
                        ahead[order[0]] = pool.submit(read_and_decide, order[0])
                    hidden = None if hit is None else (hit[0], hit[1], full, full_tf.dims)
                    plan = _canonical_plan(name, stored, rules[name], residual, hidden)
                    if unchecked and (plan is None or plan.rows is not None):  # not gathered in row order
                        stored, unchecked = check_finite(name, stored, ckpt.path), False
                    emit(name, stored, plan, functools.partial(full_tf, name, stored),
                         check=functools.partial(check_finite, name, where=ckpt.path) if unchecked else None)
                    if not isinstance(get, _Reads):  # a reader's tensor may share a buffer with its next one
                        emit.flush()
                emit.flush()
            finally:  # no gather still running, and a read still running finishes, before the files close
                try:
                    emit.close()
                finally:
                    for f in ahead.values():
                        f.cancel()
                        with contextlib.suppress(BaseException):
                            f.result()
    for layer in range(dims.n_layers):
        if layer not in decided:
            settle(layer, decide(layer, layer_tensors(layer)))
    ties.update({"mlp_identical_unit_groups": counts["mlp"], "head_identical_groups": counts["heads"]})
    return Canonical(FullGauge(residual, tuple(layers)), ties, notes)


def _leading_moved(stored: torch.Tensor, rule: ParamRule, residual: SignedPermutation,
                   hidden_axis: int) -> torch.Tensor | None:
    """The moved tensor (residual gauge applied) restricted to its first :data:`PREFIX_COLUMNS`
    residual coordinates, picked from the stored tensor (``[units, 16]`` instead of ``[units, d]``):
    all the sort keys read unless they tie. None where that is not a 2-D tensor with one plain
    residual axis beside the hidden one (then the tensor is moved whole)."""
    if stored.ndim != 2 or len(rule.axes) != 1 or rule.blocks_on(0) != 1 or rule.axes[0] == hidden_axis \
            or rule.modes[0] not in ("signed", "abs") or residual.d <= PREFIX_COLUMNS \
            or stored.shape[rule.axes[0]] != residual.d:
        return None
    ax = rule.axes[0]
    src = residual.inverse().perm[:PREFIX_COLUMNS]  # canonical coordinate k is stored coordinate src[k]
    shape = [1, 1]
    shape[ax] = PREFIX_COLUMNS
    signed = rule.modes[0] == "signed"
    if stored.dtype in _SIGN_BIT and stored.dtype in _SAME_SIZE_INT:  # on the bits: x * -1 is a sign-bit flip
        bits = stored.view(_SAME_SIZE_INT[stored.dtype]).numpy()
        lead = np.take(bits, src, axis=ax)
        if signed:
            lead ^= np.where(residual.signs[src] < 0, _SIGN_BIT[stored.dtype], 0).astype(lead.dtype).reshape(shape)
        return torch.from_numpy(lead).view(stored.dtype)
    lead = stored.index_select(ax, torch.from_numpy(src.copy()))
    if signed:
        lead = lead * torch.from_numpy(residual.signs[src].astype(np.float32)).to(lead.dtype).reshape(shape)
    return lead


def _canonical_plan(name: str, stored: torch.Tensor, rule: ParamRule, residual: SignedPermutation,
                    hidden: tuple[HiddenRule, int, FullGauge, HiddenDims | None] | None) -> RowColPlan | None:
    """What the full canonical transform does to ``stored`` (residual gauge, then the layer's hidden
    gauge), as one row and one column gather with sign-bit flips; None where it is no such thing
    (the tensor then goes through the transform itself). The hidden gauge's gather is read off the
    transform itself, applied to the indices ``1..n`` along the hidden axis (signed, so a flip shows)."""
    plan = plan_rows_cols(tuple(stored.shape), stored.dtype, rule, residual)
    if plan is None or hidden is None:
        return plan
    hrule, layer, full, dims = hidden
    ax = hrule.axis
    if ax >= stored.ndim or dims is None:
        return None
    n = int(stored.shape[ax])
    probe_shape = [1] * stored.ndim
    probe_shape[ax] = n
    probe = torch.arange(1, n + 1, dtype=torch.float64).reshape(probe_shape)
    moved = transform_hidden(name, probe, hrule, layer, full, dims).reshape(-1)
    hidx = (moved.abs() - 1).to(torch.int64).numpy()
    neg = (moved < 0).numpy()
    if neg.any() and stored.dtype not in _SIGN_BIT:
        return None
    hflip = np.where(neg, _SIGN_BIT.get(stored.dtype, 0), 0).astype(plan.int_dtype)
    on_rows = ax + 2 - stored.ndim == 0
    taken = (plan.rows, plan.row_flip) if on_rows else (plan.cols, plan.col_flip)
    if any(x is not None for x in taken):
        return None  # a residual gauge on the hidden axis too: no table has it; transformed whole
    if on_rows:
        return dataclasses.replace(plan, rows=hidx, row_flip=hflip)
    return dataclasses.replace(plan, cols=hidx, col_flip=hflip)


class _Emitter:
    """Hands canonical tensors to ``consume`` part by part, in order. Parts are gathered on a pool of one
    thread per core (:func:`gaugeport.core.gather.gather_threads`), several parts at once, each whole on one
    thread (no thread waits for another half of its part), into reused buffers; ``consume`` gets them in
    order. A part's buffer is reused :attr:`n_bufs` parts later: by then ``consume`` must be done with it
    (:class:`_Sink` of the same ``depth`` is: at most ``depth - 1`` parts pending when a call returns). :meth:`flush`
    hands on what is still being gathered (at the end of the pass); :meth:`close` stops the threads."""

    def __init__(self, consume: Callable[[str, tuple[torch.dtype, tuple[int, ...]] | None, memoryview], None],
                 depth: int = PARTS_IN_FLIGHT) -> None:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        self.consume = consume
        self.ways = gather_threads()
        self.pool = ThreadPoolExecutor(max_workers=self.ways, thread_name_prefix="gaugeport-gather")
        self.n_bufs = self.ways + depth  # gathering (ways) + pending in consume (depth - 1) + 1
        self.bufs: list[np.ndarray] = [np.empty(0, dtype=np.uint8) for _ in range(self.n_bufs)]
        self.k = 0  # parts so far: part k is in bufs[k % n_bufs]
        self.gathering: deque[tuple[Any, str, Any, memoryview]] = deque()  # (future, name, header, bytes), oldest first

    def _hand_on_oldest(self) -> None:
        future, name, header, data = self.gathering.popleft()
        future.result()
        self.consume(name, header, data)

    def flush(self) -> None:
        """Every part gathered so far handed on, in order."""
        while self.gathering:
            self._hand_on_oldest()

    def close(self) -> None:
        """Stop: the parts still being gathered (after an error: :meth:`flush` hands them on otherwise) are
        waited for, not handed on, so no thread writes a buffer once this returns."""
        try:
            for future, *_ in self.gathering:
                future.cancel()
                with contextlib.suppress(BaseException):
                    future.result()
            self.gathering.clear()
        finally:
            self.pool.shutdown(wait=True)

    def __call__(self, name: str, stored: torch.Tensor, plan: RowColPlan | None,
                 whole: Callable[[], torch.Tensor], check: Callable[[torch.Tensor], object] | None = None) -> None:
        """``check`` given: ``stored`` was not checked finite, and ``check`` is called on each gathered part, as
        a tensor of ``stored``'s dtype, before it is handed on (values are only moved and negated, so a part is
        finite exactly when its source rows are)."""
        header = (stored.dtype, tuple(int(n) for n in stored.shape))
        if plan is None or stored.numel() == 0:
            self.flush()
            t = whole().contiguous()
            if t.numel() and t.untyped_storage().data_ptr() == stored.untyped_storage().data_ptr():
                t = t.clone()  # the stored tensor's buffer is reused for the next tensor read
            data = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else np.empty(0, dtype=np.uint8)
            self.consume(name, header, memoryview(data))
            return
        n_rows, n_cols = plan.shape
        src = stored.reshape(-1).view(torch.uint8).numpy().view(plan.int_dtype).reshape(n_rows, n_cols)
        rows = plan.rows if plan.rows is not None else np.arange(n_rows)
        cols = plan.cols if plan.cols is not None else np.arange(n_cols)
        row_flip = plan.row_flip if plan.row_flip is not None else np.zeros(n_rows, dtype=plan.int_dtype)
        col_flip = plan.col_flip if plan.col_flip is not None else np.zeros(n_cols, dtype=plan.int_dtype)
        per = max(1, PART_BYTES // plan.row_bytes)
        whole_blocks = BLOCK // math.gcd(plan.row_bytes, BLOCK)  # rows a part needs to end on a file block
        if per >= whole_blocks:  # parts of whole blocks: a writer sends them to the disk with no staging copy
            per -= per % whole_blocks
        block = column_block(cols) if plan.cols is not None else n_cols  # in order: every row is one block
        for r0 in range(0, n_rows, per):
            r1 = min(n_rows, r0 + per)
            nbytes = (r1 - r0) * plan.row_bytes
            while len(self.gathering) >= self.ways:  # one part per gathering thread
                self._hand_on_oldest()
            slot = self.k % self.n_bufs
            if self.bufs[slot].nbytes < nbytes:
                self.bufs[slot] = reusable_buffer(max(nbytes, PART_BYTES))
            buf = self.bufs[slot][:nbytes]
            out = buf.view(plan.int_dtype).reshape(r1 - r0, n_cols)
            future = self.pool.submit(_gather_part, src, rows[r0:r1], cols, row_flip[r0:r1], col_flip, out, block,
                                      check, stored.dtype)
            self.k += 1
            self.gathering.append((future, name, header if r0 == 0 else None, memoryview(buf)))


def _gather_part(src: np.ndarray, rows: np.ndarray, cols: np.ndarray, row_flip: np.ndarray, col_flip: np.ndarray,
                 out: np.ndarray, block: int, check: Callable[[torch.Tensor], object] | None,
                 dtype: torch.dtype) -> None:
    """One part, on a gathering thread: gathered (on this thread alone), then checked finite where asked."""
    gather_rows_cols(src, rows, cols, row_flip, col_flip, out, block)
    if check is not None:
        check(torch.from_numpy(out).view(dtype))


def _canonical_residual(ckpt: Checkpoint, get: Callable[[str], torch.Tensor], spec: ArchSpec,
                        rules: dict[str, Any], names: list[str], *,
                        prefix_ok: bool = False) -> tuple[SignedPermutation, dict[str, Any], list[str]]:
    d = ckpt.d_model
    notes: list[str] = []
    gains = [get(n).double().numpy().reshape(-1) for n in names if rules[n].role == "gain"]
    # sign-carrying residual tensors without a hidden axis (a hidden gauge would reorder their slices),
    # the token embedding first; read only while something is undecided
    hspec = get_hidden_spec(spec.model_type)
    sources = [(n, ax) for n in names if hspec.match(n) is None
               for ax, mode in zip(rules[n].axes, rules[n].modes, strict=True) if mode == "signed"]
    vocab = ckpt.config.get("text_config", ckpt.config).get("vocab_size")
    emb = [src for src in sources if rules[src[0]].role == "write" and rules[src[0]].axes == (1,)
           and _rows(ckpt, src[0]) == vocab]
    sources = emb[:1] + [src for src in sources if src not in emb[:1]]
    if not sources:
        raise ArchitectureError(f"no residual tensor outside the hidden axes in this {spec.model_type} checkpoint",
                                hint="canonicalization fixes residual signs from the token embedding")

    def slice_of(src: tuple[str, int]) -> np.ndarray:
        return torch.movedim(get(src[0]).double(), src[1], 0).reshape(d, -1).numpy()

    first = _leading_columns(ckpt, sources[0], d) if prefix_ok else None
    if first is not None and not _decides(first, [g[:, None] for g in gains], not spec.allows_coordinate_signs):
        first = None  # the first rows leave a sign or an order open: read the whole tensor
    first = first if first is not None else slice_of(sources[0])
    extra: list[np.ndarray] = []
    signs = _first_nonzero_sign(first)
    for src in sources[1:]:  # the first tensor in which a coordinate is nonzero fixes its sign
        if np.all(signs != 0):
            break
        m = slice_of(src)
        extra.append(m)
        undecided = signs == 0
        signs[undecided] = _first_nonzero_sign(m[undecided])
    zero_coords = int(np.sum(signs == 0))
    signs = np.where(signs == 0, 1.0, signs)
    layer_norm = not spec.allows_coordinate_signs

    def fixed(m: np.ndarray) -> np.ndarray:  # LayerNorm: signs are global, so compare magnitudes
        return np.abs(m) if layer_norm else m * signs[:, None]

    gain_keys = [g[:, None] for g in gains]
    _, gain_groups = _lexsort_rows(gain_keys)
    keys = gain_keys + [fixed(first)] + [fixed(m) for m in extra]
    order, groups = _lexsort_rows(keys)
    for src in sources[1 + len(extra):]:  # remaining ties: bring in further tensors
        if groups == 0:
            break
        keys.append(fixed(slice_of(src)))
        order, groups = _lexsort_rows(keys)
    if gains and all(np.all(g == g[0]) for g in gains):
        notes.append("uniform norm gains (folded): the group is O(d); this representative is canonical for "
                     "signed permutations only")
    if layer_norm:  # one global sign, fixed by canonical coordinate 0's embedding column
        g0 = first[order[0]]
        nz = np.flatnonzero(g0)
        signs = np.full(d, -1.0 if nz.size and g0[nz[0]] < 0 else 1.0)
    ties = {"residual_gain_tie_groups": gain_groups,
            "residual_broken_by": "token embedding and other residual tensors" if gain_groups else None,
            "residual_identical_groups": groups, "residual_all_zero_coordinates": zero_coords}
    return SignedPermutation(_ranks(order), signs.astype(np.int8)), ties, notes


class _Reads:
    """``name -> tensor`` by plain positioned reads (one open file per shard), checked finite; :meth:`mapped`,
    the pass's reads of whole tensors, maps the file's pages instead (:meth:`ShardReader.map`: nothing
    allocated, nothing copied), read ahead of their turn once :meth:`read_ahead` was called."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        self.readers: dict[str, Any] = {}
        self.ahead: ReadAhead | None = None

    def read_ahead(self, order: Sequence[str]) -> None:
        """From now on, a helper thread reads the tensors ``order`` names (the order the pass maps them in)
        into the page cache, a window ahead of the last one mapped (:class:`gaugeport.core.readahead.ReadAhead`)."""
        ranges = []
        for name in order:
            r = self._reader(name)
            _, _, begin, end = r.entries[name]
            ranges.append((name, r.fd, r.base + begin, end - begin))
        self.ahead = ReadAhead(ranges)

    def _reader(self, name: str) -> Any:
        from gaugeport.core.checkpoint import ShardReader

        shard = self.ckpt.shard_of[name]
        if shard not in self.readers:
            self.readers[shard] = ShardReader(self.ckpt, shard)
        return self.readers[shard]

    def __call__(self, name: str) -> torch.Tensor:
        return self._reader(name).read(name)

    def mapped(self, name: str, *, checked: bool = True) -> torch.Tensor:
        if self.ahead is not None:
            self.ahead.reached(name)
        return self._reader(name).map(name, checked=checked)

    def read_ahead_through(self, name: str) -> None:
        """Wait until the helper reading ahead has read tensor ``name`` (:meth:`ReadAhead.wait_read`)."""
        if self.ahead is not None:
            self.ahead.wait_read(name)

    def close(self) -> None:
        if self.ahead is not None:  # its thread stops before the files it reads ahead close
            self.ahead.close()
        for r in self.readers.values():
            r.close()


@contextlib.contextmanager
def _plain_reads(ckpt: Checkpoint) -> Iterator[_Reads]:
    reads = _Reads(ckpt)
    try:
        yield reads
    finally:
        reads.close()


def _leading_columns(ckpt: Checkpoint, src: tuple[str, int], d: int) -> np.ndarray | None:
    """``slice_of(src)`` restricted to its first :data:`PREFIX_COLUMNS` columns, read as a slice of the
    stored rows (a ``[vocab, d]`` embedding's first rows); None where that is no contiguous read."""
    from gaugeport.core.checkpoint import _open

    name, axis = src
    with _open(ckpt.path / ckpt.shard_of[name]) as f:
        sl = f.get_slice(name)
        shape = tuple(sl.get_shape())
        if axis != 1 or len(shape) != 2 or shape[1] != d:
            return None
        rows = sl[:PREFIX_COLUMNS]
    return rows.double().T.numpy()


def _decides(first: np.ndarray, gain_keys: list[np.ndarray], layer_norm: bool) -> bool:
    """Do these leading columns fix every coordinate's sign and leave no tie in the order? Then the
    whole tensor would give the same signs and the same order (lexicographic order is decided by the
    first columns that differ)."""
    signs = _first_nonzero_sign(first)
    if np.any(signs == 0):
        return False
    fixed = np.abs(first) if layer_norm else first * signs[:, None]
    return _lexsort_rows(gain_keys + [fixed])[1] == 0


def _rows(ckpt: Checkpoint, name: str) -> int:
    from gaugeport.core.checkpoint import shard_layout

    return int(shard_layout(ckpt, ckpt.shard_of[name])[name][1][0])


def _canonical_layer(blocks: list[tuple[str, str, _Rows]], dims: HiddenDims,
                     mlp_signs: bool) -> tuple[LayerGauge, int, int]:
    mlp_abs = [b for k, m, b in blocks if k == "mlp" and m == "abs"]
    mlp_sgn = [b for k, m, b in blocks if k == "mlp" and m == "signed"]  # float32: exact for stored values
    signs = np.ones(dims.mlp)
    if mlp_signs and mlp_sgn:
        s = np.zeros(dims.mlp)
        for b in mlp_sgn:
            undecided = s == 0
            lead = _first_nonzero_sign(b.lead(PREFIX_COLUMNS))  # decided by the first columns, mostly
            s[undecided & (lead != 0)] = lead[undecided & (lead != 0)]
            rest = undecided & (lead == 0)
            if rest.any():
                s[rest] = _first_nonzero_sign(b.select(rest).full())
        signs = np.where(s == 0, 1.0, s)
    order, mlp_ties = _lexsort_rows(mlp_abs + mlp_sgn, [None] * len(mlp_abs) + [signs] * len(mlp_sgn))
    mlp = SignedPermutation(_ranks(order), signs.astype(np.int8))
    q = [b for k, _, b in blocks if k == "q_heads"]
    kv = [b for k, _, b in blocks if k == "kv_heads"]
    gs, k = dims.group_size, dims.n_kv_heads
    head_ties = 0
    inner = []
    for g in range(k):
        members = [b.select(np.arange(g * gs, (g + 1) * gs)) for b in q]
        o, t = _lexsort_rows(members)
        head_ties += t
        inner.append(o)
    # a group's key: its K/V blocks, then each query block's heads in their sorted order
    sorted_q = [b.with_idx(np.stack([b.idx[g * gs + inner[g], 0] for g in range(k)])) for b in q]
    gorder, gt = _lexsort_rows(kv + sorted_q if kv or sorted_q else [np.zeros((k, 0))])
    head_ties += gt
    granks = _ranks(gorder)
    perm = np.empty(dims.n_heads, dtype=np.int64)
    for g in range(k):
        perm[g * gs + inner[g]] = granks[g] * gs + np.arange(gs)
    return LayerGauge(mlp, SignedPermutation(perm, np.ones(dims.n_heads, dtype=np.int8)), k), mlp_ties, head_ties


# ----------------------------------------------------------------------------- verbs
_FP_PLACEHOLDER = "?" * (len(FINGERPRINT_PREFIX) + 32)  # a fingerprint's length: patched in once known


def canonicalize(src: str | Path, out: str | Path, *, force: bool = False, progress: bool = True) -> Canonical:
    """Write the canonical representative of ``src`` to ``out`` (streamed; the input is never modified).

    One pass: each layer's gauge is decided from its own tensors, which are then hashed (the
    fingerprint) and written; the fingerprint stamped in every shard's metadata is patched in after."""
    from tqdm.auto import tqdm

    from gaugeport.core.apply import copy_side_files
    from gaugeport.core.checkpoint import SafetensorsStreamWriter, shard_layout

    ckpt = Checkpoint.open(src)
    stamp = {"gaugeport_canonical": "true", "gaugeport_fingerprint": _FP_PLACEHOLDER}
    hasher = _Hasher(ckpt.model_type)
    with atomic_path(Path(out), force, inputs=(Path(src),), kind="directory") as tmp:
        tmp.mkdir()
        with contextlib.ExitStack() as stack:  # every shard open at once: tensors come in global name order
            writers = {shard: stack.enter_context(SafetensorsStreamWriter(
                tmp / shard, shard_layout(ckpt, shard), {**ckpt.shard_metadata(shard), **stamp}))
                for shard in ckpt.shards}

            def write(name: str, header: object, data: memoryview) -> None:
                writers[ckpt.shard_of[name]].write_part(name, data)

            with tqdm(total=len(ckpt.names), desc="canonicalize", unit="tensor", disable=not progress) as bar, \
                    _Sink(hasher, write, depth=WRITE_PARTS_IN_FLIGHT) as sink:
                def consume(name: str, header: tuple[torch.dtype, tuple[int, ...]] | None, data: memoryview) -> None:
                    sink(name, header, data)
                    if header is not None:
                        bar.update()
                can = _canonical_pass(ckpt, consume=consume, depth=WRITE_PARTS_IN_FLIGHT)
        fp = hasher.hexdigest()
        for shard in ckpt.shards:
            _patch_header(tmp / shard, _FP_PLACEHOLDER, fp)
        copy_side_files(ckpt, tmp)
    can.fingerprint = fp
    return can


def fingerprint(src: str | Path, *, canonical: Canonical | None = None) -> dict[str, Any]:
    """A hash of the canonical representative's tensors (names, dtypes, shapes, bytes): equal for every
    gauged copy, different as soon as one stored value differs. One pass over the checkpoint (given
    ``canonical``, a pass under that gauge, each tensor transformed whole: the reference the streamed
    pass is tested against)."""
    ckpt = Checkpoint.open(src)
    if canonical is None:
        fp, can = canonical_fingerprint(ckpt)
    else:
        hasher = _Hasher(ckpt.model_type)
        with _Sink(hasher) as sink:
            can = canonical
            tf = FullTransform(ckpt.spec, ckpt.names, can.gauge, ckpt.d_model, ckpt.config)
            for name in sorted(ckpt.names):
                sink(*_whole(name, tf(name, ckpt.tensor(name))))
        fp = hasher.hexdigest()
    return {"fingerprint": fp, "model_type": ckpt.model_type, "version": FINGERPRINT_VERSION,
            "ties": can.ties, "notes": can.notes, "canonical_gauge": can.gauge.fingerprint()}


def canonical_fingerprint(ckpt: Checkpoint) -> tuple[str, Canonical]:
    """The fingerprint (:func:`fingerprint`) and the canonical gauge it was taken under, in one pass. Two
    checkpoints with equal fingerprints hold the same canonical weights bit for bit, so B is A under the
    gauge ``canonical_B.gauge.inverse() @ canonical_A.gauge`` (``same`` uses this for exact copies)."""
    hasher = _Hasher(ckpt.model_type)
    with _Sink(hasher) as sink:
        can = _canonical_pass(ckpt, consume=sink)
    return hasher.hexdigest(), can


def _whole(name: str, tensor: torch.Tensor) -> tuple[str, tuple[torch.dtype, tuple[int, ...]], memoryview]:
    """A whole tensor as one part: ``(name, (dtype, shape), bytes)``."""
    t = tensor.contiguous()
    data = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else np.empty(0, dtype=np.uint8)
    return name, (t.dtype, tuple(int(n) for n in t.shape)), memoryview(data)


class _Sink:
    """``sink(name, header, data)`` hands each part of a canonical tensor to every consumer (the hash, the
    writer), each on its own helper thread, which takes the parts in order, so that hashing and writing
    overlap gathering the next parts (hashing and file writes release the GIL). At most
    ``depth - 1`` parts are still pending when a call returns (it waits for the oldest), so the
    buffer of the part ``depth`` before the next one is free again: a slow write (the disk
    stalls) is absorbed by the parts queued behind it rather than stalling the gather at once.
    An error in a consumer is raised by a later call or at the end of the ``with`` block. ``depth``
    (keyword only, :data:`PARTS_IN_FLIGHT` by default) must be the :class:`_Emitter`'s."""

    def __init__(self, *consumers: Callable[..., None], depth: int = PARTS_IN_FLIGHT) -> None:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        self.consumers = consumers
        self.depth = depth
        self.pools = [ThreadPoolExecutor(max_workers=1, thread_name_prefix="gaugeport-sink") for _ in consumers]
        self.pending: deque[list[Any]] = deque()  # per part handed over, its consumers' futures, oldest first

    def _wait_oldest(self) -> None:
        futures = self.pending.popleft()
        for f in futures:  # all of them finish before an error is raised: no thread still uses the buffer
            f.exception()
        for f in futures:
            f.result()

    def __call__(self, *part: Any) -> None:
        self.pending.append([pool.submit(c, *part) for pool, c in zip(self.pools, self.consumers, strict=True)])
        while len(self.pending) > self.depth - 1:
            self._wait_oldest()

    def __enter__(self) -> _Sink:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        try:
            if exc_type is None:
                while self.pending:
                    self._wait_oldest()
            else:  # already failing: wait for the threads, keep the first error
                for futures in self.pending:
                    for f in futures:
                        f.exception()
        finally:
            for pool in self.pools:
                pool.shutdown(wait=True)


class _Hasher:
    """The fingerprint (version 2): BLAKE3 over every canonical tensor's name, dtype, shape and bytes, in name
    order; ``fp2-`` and the first 128 bits in hex. (Version 1 was the same framing under SHA-256, the
    first 128 bits bare: three times slower on the machines measured, see docs/scale.md.)"""

    def __init__(self, model_type: str) -> None:
        from blake3 import blake3

        self.h = blake3(f"gaugeport-fingerprint-v{FINGERPRINT_VERSION}:{model_type}".encode())

    def __call__(self, name: str, header: tuple[torch.dtype, tuple[int, ...]] | None, data: memoryview) -> None:
        """The next part of tensor ``name``: its framing first (``header``: dtype and shape, on its first
        part only), then its bytes."""
        if header is not None:
            self.h.update(f"{name}|{header[0]}|{header[1]}|".encode())
        if len(data):
            self.h.update(data)

    def update(self, name: str, tensor: torch.Tensor) -> None:
        """A whole tensor (the same bytes as its parts)."""
        self(*_whole(name, tensor))

    def hexdigest(self) -> str:
        return FINGERPRINT_PREFIX + self.h.hexdigest(length=16)


def fingerprint_version(fp: str) -> str:
    """The format version of a fingerprint string: ``"2"`` (``fp2-`` + 32 hex digits, BLAKE3, this version)
    or ``"1"`` (32 bare hex digits, SHA-256, gaugeport before the change); anything else is refused."""
    if re.fullmatch(re.escape(FINGERPRINT_PREFIX) + "[0-9a-f]{32}", fp):
        return FINGERPRINT_VERSION
    if re.fullmatch("[0-9a-f]{32}", fp):
        return "1"
    raise GaugeportError(f"{fp!r} is not a gaugeport fingerprint",
                         hint=f"a fingerprint is {FINGERPRINT_PREFIX} and 32 hex digits, as `gaugeport fingerprint` "
                         "prints it")


def same_fingerprint(a: str, b: str) -> bool:
    """Do two fingerprints name the same canonical weights? Fingerprints of different versions hash
    different things and are never compared: that is an error, not a False."""
    va, vb = fingerprint_version(a), fingerprint_version(b)
    if va != vb:
        raise GaugeportError(f"fingerprint {a} is version {va} and {b} is version {vb}: they cannot be compared",
                             hint="compute both with this gaugeport (`gaugeport fingerprint CKPT`); version 1 "
                             "fingerprints (32 bare hex digits) came from releases before the change to BLAKE3")
    return a == b


def _patch_header(file: Path, placeholder: str, value: str) -> None:
    """Replace ``placeholder`` by ``value`` (same length) in a safetensors file's JSON header, in place."""
    import struct

    if len(placeholder) != len(value):
        raise ValueError("internal error: a header patch must keep the header's length")
    with open(file, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = f.read(n)
        old = placeholder.encode()
        if header.count(old) != 1:
            raise ValueError(f"internal error: {file} header holds the placeholder {header.count(old)} times")
        f.seek(8)
        f.write(header.replace(old, value.encode()))
