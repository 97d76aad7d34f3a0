"""Apply a gauge to weights: a tensor, a state dict, an ``nn.Module`` or a checkpoint on disk.

Every tensor is transformed by the one rule of its architecture table that claims it; the
transform of a tensor is ``gauge.apply`` along each residual axis that rule names.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from gaugeport.core.archspec import ArchSpec, ParamRule
from gaugeport.core.checkpoint import INDEX_FILE, Checkpoint, SafetensorsStreamWriter, shard_layout
from gaugeport.core.errors import GaugeError, GaugeGroupError, GaugeportError
from gaugeport.core.facts import ModelFacts
from gaugeport.core.fileio import atomic_path, atomic_write_json
from gaugeport.core.gauge import SignedPermutation


def check_gauge_fits(spec: ArchSpec, gauge: SignedPermutation, d_model: int) -> None:
    """Refuse a gauge of the wrong width, or outside the architecture's gauge group."""
    if gauge.d != d_model:
        raise GaugeError(
            f"width mismatch: the gauge has d={gauge.d} but this {spec.model_type} model has d_model={d_model}",
            hint="estimate or generate a gauge for this model's hidden size",
        )
    if not spec.allows_coordinate_signs and not gauge.is_global_sign:
        n_neg = int((gauge.signs < 0).sum())
        raise GaugeGroupError(
            f"{spec.model_type} uses LayerNorm, whose gauge group is permutations plus one global sign; "
            f"this gauge flips {n_neg} of {gauge.d} coordinates individually",
            hint="LayerNorm subtracts the mean over coordinates, and flipping some coordinates changes that "
            "mean, so the function would change. Use --perm-only (or a gauge with all signs equal).",
        )


def transform_tensor(name: str, tensor: torch.Tensor, rule: ParamRule, gauge: SignedPermutation) -> torch.Tensor:
    """Apply ``gauge`` to one stored tensor along every residual axis its rule names (each with its mode).

    An axis holding ``k`` concatenated residual vectors (``rule.blocks``) is split into ``k`` blocks
    of size ``d`` and the gauge acts on each block.
    """
    out = tensor
    for i, (axis, mode) in enumerate(zip(rule.axes, rule.modes, strict=True)):
        k = rule.blocks_on(i)
        if axis >= tensor.ndim or tensor.shape[axis] != k * gauge.d:
            raise GaugeError(
                f"{name}: expected the residual axis {axis} to have size "
                f"{gauge.d if k == 1 else f'{k} x {gauge.d}'}, got shape {tuple(tensor.shape)}",
                hint="the checkpoint's hidden size does not match the gauge, or the table row is wrong",
            )
        if k == 1:
            out = gauge.apply(out, axis=axis, mode=mode)
        else:
            split = out.shape[:axis] + (k, gauge.d) + out.shape[axis + 1:]
            out = gauge.apply(out.reshape(split), axis=axis + 1, mode=mode).reshape(out.shape)
    return out


def apply_gauge_to_state_dict(
    state_dict: Mapping[str, torch.Tensor], gauge: SignedPermutation, spec: ArchSpec, d_model: int | None = None
) -> dict[str, torch.Tensor]:
    """A new state dict in the gauge's target coordinates (the input is not modified)."""
    check_gauge_fits(spec, gauge, gauge.d if d_model is None else d_model)
    rules = spec.classify_all(list(state_dict))
    return {n: transform_tensor(n, t, rules[n], gauge) for n, t in state_dict.items()}


@torch.no_grad()
def apply_gauge_to_model(model: torch.nn.Module, gauge: SignedPermutation) -> torch.nn.Module:
    """Rewrite a transformers model's weights in place; tied weights are transformed once."""
    config = getattr(model, "config", None)
    if config is None:
        raise GaugeError("apply_gauge_to_model needs a transformers model (with .config)",
                         hint="for a bare state dict use apply_gauge_to_state_dict(sd, gauge, get_spec(model_type))")
    facts = ModelFacts.from_config(config)
    spec = facts.spec
    check_gauge_fits(spec, gauge, facts.d_model)
    state = model.state_dict(keep_vars=True)
    rules = spec.classify_all(list(state))
    done: set[int] = set()
    for name, tensor in state.items():
        if id(tensor) in done:  # tied: one storage, one transform
            continue
        done.add(id(tensor))
        tensor.data.copy_(transform_tensor(name, tensor.data, rules[name], gauge))
    return model


def apply_gauge_to_checkpoint(
    src: str | Path,
    gauge: SignedPermutation,
    out: str | Path,
    *,
    force: bool = False,
    progress: bool = True,
    provenance: Mapping[str, str] | None = None,
    dequantize: str | None = None,
) -> Path:
    """Stream ``src`` tensor by tensor into a new checkpoint ``out`` in the gauge's coordinates.

    Peak memory is a few 16 MB buffers (:func:`stream_gauged_checkpoint`; tensors of 3 or more dims are
    read whole). Config, tokenizer and generation files are copied;
    the index of a sharded checkpoint is kept. ``out`` appears only when everything succeeded.
    A quantized checkpoint is refused unless ``dequantize="bf16"`` (or ``"fp32"``): then a plain
    checkpoint of that dtype is written, each weight dequantized and then transformed.
    """
    if dequantize is not None:
        return _apply_dequantized(Path(src), gauge, Path(out), dequantize, force=force, progress=progress,
                                  provenance=provenance)
    ckpt = Checkpoint.open(src)
    spec = ckpt.spec
    check_gauge_fits(spec, gauge, ckpt.d_model)
    ckpt.check_widths(spec)
    rules = spec.classify_all(ckpt.names)
    stamp = {"gaugeport_gauge": gauge.fingerprint(), **ckpt.hub, **(provenance or {})}
    with atomic_path(Path(out), force, inputs=(ckpt.path,), kind="directory") as tmp:
        stream_gauged_checkpoint(ckpt, tmp, rules, gauge, stamp, progress=progress)
    return Path(out)


DEQUANTIZE_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _apply_dequantized(src: Path, gauge: SignedPermutation, out: Path, dtype_name: str, *, force: bool,
                       progress: bool, provenance: Mapping[str, str] | None) -> Path:
    from gaugeport.core.quant import plan_dequantized, refuse_quantized, write_dequantized

    if dtype_name not in DEQUANTIZE_DTYPES:
        raise GaugeportError(f"--dequantize {dtype_name!r} is not an output dtype gaugeport writes",
                             hint=f"--dequantize takes {' or '.join(DEQUANTIZE_DTYPES)} (float16's narrow range "
                             "would overflow large dequantized weights)")
    ckpt = Checkpoint.open(src, allow_quantized=True)
    q = ckpt.quantization
    if q is None:
        raise GaugeError(f"{src} is not quantized: --dequantize has nothing to do",
                         hint="drop --dequantize; plain checkpoints keep their dtype")
    if not q.dequantizable:
        raise refuse_quantized(q, src)
    spec = ckpt.spec
    check_gauge_fits(spec, gauge, ckpt.d_model)
    rules = spec.classify_all([p.name for p in plan_dequantized(q, ckpt.names)])
    stamp = {"gaugeport_gauge": gauge.fingerprint(), "gaugeport_dequantized_from": q.scheme, **(provenance or {})}
    with atomic_path(out, force, inputs=(src,), kind="directory") as tmp:
        write_dequantized(ckpt, q, tmp, lambda name, t: transform_tensor(name, t, rules[name], gauge),
                          DEQUANTIZE_DTYPES[dtype_name], stamp, progress=progress)
    return out


def rewrite_checkpoint(ckpt: Checkpoint, dest: Path, rewrite: Callable[[str, torch.Tensor], torch.Tensor],
                       stamp: Mapping[str, str], *, desc: str, progress: bool = True) -> None:
    """Write ``rewrite(name, tensor)`` of every tensor of ``ckpt`` into a new directory ``dest``.

    Same shards, dtypes, shapes and index as the source; side files (config, tokenizer, generation
    config) copied; ``stamp`` added to every shard's metadata. Each tensor is read with plain file
    reads; reading the next tensor and writing the previous one overlap the rewrite of the current
    one (two helper threads), within a budget of :data:`PIPELINE_BUDGET` x the largest tensor of
    tensors alive at once, so the peak stays near a few of the largest tensor.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    from gaugeport.core.checkpoint import ShardReader

    dest.mkdir()
    readers = {shard: ShardReader(ckpt, shard) for shard in ckpt.shards}
    try:
        largest = max((r.nbytes(n) for r in readers.values() for n in r.entries), default=0)
        budget = max(PIPELINE_BUDGET * largest, 64 * 2**20)
        with tqdm(total=len(ckpt.names), desc=desc, unit="tensor", disable=not progress) as bar, \
                ThreadPoolExecutor(max_workers=2, thread_name_prefix="gaugeport-io") as pool:
            for shard, reader in readers.items():
                meta = {**ckpt.shard_metadata(shard), **stamp}
                with SafetensorsStreamWriter(dest / shard, shard_layout(ckpt, shard), meta) as writer:
                    names = list(writer.order)
                    pending: Future | None = None  # the previous tensor's write
                    pending_bytes = 0
                    nxt: Future = pool.submit(reader.read, names[0]) if names else Future()
                    for k, name in enumerate(names):
                        t = nxt.result()
                        size = reader.nbytes(name)
                        if pending is not None and pending_bytes + 2 * size > budget:
                            pending.result()
                            pending, pending_bytes = None, 0
                        following = names[k + 1] if k + 1 < len(names) else None
                        ahead = following is not None and \
                            pending_bytes + 2 * size + reader.nbytes(following) <= budget
                        if ahead:
                            nxt = pool.submit(reader.read, following)
                        out = rewrite(name, t)
                        del t
                        if pending is not None:
                            pending.result()
                        pending, pending_bytes = pool.submit(writer.write, name, out), reader.nbytes(name)
                        del out
                        if following is not None and not ahead:
                            nxt = pool.submit(reader.read, following)
                        bar.update()
                    if pending is not None:
                        pending.result()
    finally:
        for r in readers.values():
            r.close()
    copy_side_files(ckpt, dest)


PIPELINE_BUDGET = 2.5  # bytes alive at once in rewrite_checkpoint, in units of the largest tensor


def copy_side_files(ckpt: Checkpoint, dest: Path) -> None:
    """Config, tokenizer, generation config and the shard index of ``ckpt``, into a new checkpoint ``dest``."""
    for side in ckpt.side_files():
        shutil.copy2(side, dest / side.name)
    if ckpt.index is not None:
        atomic_write_json(dest / INDEX_FILE, ckpt.index)


# ---------------------------------------------------------------------- apply's chunked data path
CHUNK_BYTES = 16 << 20  # rows of one tensor read, gathered and written together
_SUB_BYTES = 1 << 20  # the gather, sign flip and finiteness check run on ~1 MB at a time, while it is in cache


@dataclass(frozen=True)
class RowColPlan:
    """A stored tensor seen as ``[rows, cols]`` (1-D: one row) of integers of its item size:
    ``out[i, j] = src[rows[i], cols[j]]`` with the sign bit flipped where ``row_neg[i] != col_neg[j]``
    (None: identity, no flips). ``finite`` holds the (mask, exponent) of a float dtype's bits."""

    shape: tuple[int, int]
    dtype: torch.dtype
    int_dtype: np.dtype
    rows: np.ndarray | None
    cols: np.ndarray | None
    row_flip: np.ndarray | None  # per row: the bits to XOR (the sign bit or 0)
    col_flip: np.ndarray | None
    finite: tuple[int, int] | None

    @property
    def row_bytes(self) -> int:
        return self.shape[1] * self.int_dtype.itemsize


def plan_rows_cols(shape: tuple[int, ...], dtype: torch.dtype, rule: ParamRule,
                   gauge: SignedPermutation) -> RowColPlan | None:
    """What ``transform_tensor`` does to a tensor of this shape and dtype, as a row and a column gather
    with sign-bit flips; None where that does not describe it (3-D and larger tensors, integer tensors
    under a signed mode, a dtype without a same-sized integer view, a width that does not fit: those
    go through ``transform_tensor`` itself, which also raises its errors)."""
    from gaugeport.core.checkpoint import _EXPONENT_BITS
    from gaugeport.core.gauge import _SAME_SIZE_INT, _SIGN_BIT

    if len(shape) not in (1, 2) or dtype not in _SAME_SIZE_INT or len(set(rule.axes)) != len(rule.axes):
        return None
    int_dtype = torch.empty(0, dtype=_SAME_SIZE_INT[dtype]).numpy().dtype
    index: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    inv = gauge.inverse().perm
    for i, (axis, mode) in enumerate(zip(rule.axes, rule.modes, strict=True)):
        k = rule.blocks_on(i)
        if axis >= len(shape) or shape[axis] != k * gauge.d:
            return None
        if mode == "none":
            continue
        if mode == "signed" and dtype not in _SIGN_BIT:
            return None
        idx = (np.arange(k)[:, None] * gauge.d + inv[None, :]).reshape(-1)
        flip = None
        if mode == "signed":
            flip = np.tile(np.where(gauge.signs[inv] < 0, _SIGN_BIT[dtype], 0), k).astype(int_dtype)
        index[axis + 2 - len(shape)] = (idx, flip)  # 1-D: its axis is the columns of one row
    rows, row_flip = index.get(0, (None, None))
    cols, col_flip = index.get(1, (None, None))
    r, c = (1, shape[0]) if len(shape) == 1 else shape
    bits = _EXPONENT_BITS.get(dtype)
    return RowColPlan((int(r), int(c)), dtype, int_dtype, rows, cols, row_flip, col_flip,
                      None if bits is None else (bits[1], bits[2]))


def gather_rows_cols(plan: RowColPlan, src: np.ndarray, out: np.ndarray, r0: int) -> np.ndarray:
    """Rows ``r0 .. r0 + len(src)`` of the planned output from ``src`` (those rows of the source, already
    in output row order: the row gather is done while reading). Returns the result: ``out`` after a
    column gather, else ``src`` itself, flipped in place. Every source value's bits are checked finite
    (else :class:`FloatingPointError` with the rows of ``src``, ``(start, end)``, that hold the bad value)."""
    n = src.shape[0]
    per = max(1, _SUB_BYTES // max(1, plan.row_bytes))
    dst = out if plan.cols is not None else src
    scratch = np.empty((min(per, n), src.shape[1]), dtype=src.dtype) if plan.finite is not None else None
    for i in range(0, n, per):
        s, d = src[i:i + per], dst[i:i + per]
        if scratch is not None:
            assert plan.finite is not None
            m = scratch[:s.shape[0]]
            np.bitwise_and(s, plan.finite[0], out=m)
            if m.size and m.max() >= plan.finite[1]:
                raise FloatingPointError(i, i + s.shape[0])
        if plan.cols is not None:
            np.take(s, plan.cols, axis=1, out=d, mode="clip")  # clip: no buffered copy
        if plan.col_flip is not None:
            np.bitwise_xor(d, plan.col_flip[None, :], out=d)
        if plan.row_flip is not None:
            np.bitwise_xor(d, plan.row_flip[r0 + i:r0 + i + d.shape[0], None], out=d)
    return dst


def _pread_exact(fd: int, view: memoryview, offset: int, what: str) -> None:
    from gaugeport.core.errors import CheckpointError

    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            raise CheckpointError(f"cannot read {what}: unexpected end of file",
                                  hint="the file is truncated or corrupt")
        done += got


def stream_gauged_checkpoint(ckpt: Checkpoint, dest: Path, rules: Mapping[str, ParamRule],
                             gauge: SignedPermutation, stamp: Mapping[str, str], *, progress: bool = True) -> None:
    """:func:`rewrite_checkpoint` with ``transform_tensor`` under ``gauge``, on a fixed set of buffers.

    Each 1-D or 2-D tensor goes by chunks of about :data:`CHUNK_BYTES` of output rows: the rows are
    read with plain positioned reads straight into output row order (a row gather costs nothing
    more than the read), the columns gathered with ``numpy.take`` and the signs flipped on the bits
    (an XOR of the sign bit: exactly ``x * -1`` for IEEE floats, ``-0.0`` and NaN payloads included),
    then written. Reading chunk ``i + 1`` and writing chunk ``i - 1`` overlap the gather of chunk ``i``
    (two helper threads); the two input and two output buffers are reused throughout, so memory does
    not grow with the checkpoint and no page is faulted in twice. Other tensors (3-D and larger, other
    dtypes) are read whole and go through ``transform_tensor`` in the same pipeline."""
    from concurrent.futures import Future, ThreadPoolExecutor

    from gaugeport.core.buffers import reusable_buffer
    from gaugeport.core.checkpoint import ShardReader, check_finite
    from gaugeport.core.errors import CheckpointError

    dest.mkdir()
    readers = {shard: ShardReader(ckpt, shard) for shard in ckpt.shards}
    writers: dict[str, SafetensorsStreamWriter] = {}
    try:
        jobs: list[tuple[str, str, RowColPlan | None, int, int]] = []  # shard, tensor, plan, first row, end row
        for shard, reader in readers.items():
            layout = shard_layout(ckpt, shard)
            for name in sorted(layout):
                dtype, shape = layout[name]
                plan = plan_rows_cols(shape, dtype, rules[name], gauge) if reader.nbytes(name) else None
                if plan is None:
                    jobs.append((shard, name, None, 0, 0))
                    continue
                per = max(1, CHUNK_BYTES // max(1, plan.row_bytes))
                jobs.extend((shard, name, plan, r, min(r + per, plan.shape[0])) for r in range(0, plan.shape[0], per))
        size = max([(j[4] - j[3]) * j[2].row_bytes for j in jobs if j[2] is not None], default=0)
        # chunk k is read into ins[k % 3] while k - 1 is gathered and k - 2 written (from its input
        # buffer itself when only its rows move); outs[k % 2] holds k's gathered columns until written
        ins = [reusable_buffer(size) for _ in range(3)]
        outs = [reusable_buffer(size) for _ in range(2)]
        last_of = {j[0]: k for k, j in enumerate(jobs)}  # the shard's writer closes after its last job

        def read(k: int) -> np.ndarray | torch.Tensor:
            shard, name, plan, r0, r1 = jobs[k]
            reader = readers[shard]
            if plan is None:
                return reader.read(name)
            buf = ins[k % 3][:(r1 - r0) * plan.row_bytes]
            view = memoryview(buf)
            where = f"tensor {name!r} from {reader.file}"
            start = reader.base + reader.entries[name][2]
            if plan.rows is None:
                _pread_exact(reader.fd, view, start + r0 * plan.row_bytes, where)
            else:
                rb = plan.row_bytes
                for i, src_row in enumerate(plan.rows[r0:r1].tolist()):
                    _pread_exact(reader.fd, view[i * rb:(i + 1) * rb], start + src_row * rb, where)
            return buf.view(plan.int_dtype).reshape(r1 - r0, plan.shape[1])

        def write(k: int, data: np.ndarray | torch.Tensor) -> None:
            shard, name, plan, _, _ = jobs[k]
            if shard not in writers:
                writers[shard] = SafetensorsStreamWriter(dest / shard, shard_layout(ckpt, shard),
                                                         {**ckpt.shard_metadata(shard), **stamp})
            if plan is None:
                assert isinstance(data, torch.Tensor)
                writers[shard].write(name, data)
            else:
                writers[shard].write_part(name, memoryview(data.reshape(-1).view(np.uint8)))
            if last_of[shard] == k:
                writers.pop(shard).close()

        with tqdm(total=len(ckpt.names), desc="apply", unit="tensor", disable=not progress) as bar, \
                ThreadPoolExecutor(max_workers=2, thread_name_prefix="gaugeport-io") as pool:
            pending: Future | None = None
            nxt: Future | None = pool.submit(read, 0) if jobs else None
            try:
                for k, (_, name, plan, r0, r1) in enumerate(jobs):
                    assert nxt is not None
                    got = nxt.result()
                    nxt = pool.submit(read, k + 1) if k + 1 < len(jobs) else None
                    if plan is None:
                        assert isinstance(got, torch.Tensor)
                        result: np.ndarray | torch.Tensor = transform_tensor(name, got, rules[name], gauge)
                    else:
                        assert isinstance(got, np.ndarray)
                        out = outs[k % 2][:got.nbytes].view(plan.int_dtype).reshape(got.shape)
                        try:
                            result = gather_rows_cols(plan, got, out, r0)
                        except FloatingPointError as bad:  # the exact check names the tensor and the kind
                            a, b = bad.args
                            check_finite(name, torch.from_numpy(got[a:b].copy()).view(plan.dtype), ckpt.path)
                            raise CheckpointError(f"internal error: rows {r0 + a}..{r0 + b} of {name!r} failed "
                                                  "the bit check but not check_finite") from None
                    if pending is not None:  # chunk k - 1 written: its buffers are free for chunks k + 1, k + 2
                        pending.result()
                    pending = pool.submit(write, k, result)
                    del got, result
                    if plan is None or r1 == plan.shape[0]:
                        bar.update()
                if pending is not None:
                    pending.result()
                for shard in ckpt.shards:  # a shard without tensors
                    if shard not in last_of:
                        SafetensorsStreamWriter(dest / shard, {}, {**ckpt.shard_metadata(shard), **stamp}).close()
            finally:  # let the helper threads finish before the buffers and files go
                for f in (nxt, pending):
                    if f is not None:
                        f.cancel()
                        with contextlib.suppress(BaseException):
                            f.result()
    finally:
        for w in writers.values():
            w.abort()
        for r in readers.values():
            r.close()
    copy_side_files(ckpt, dest)
