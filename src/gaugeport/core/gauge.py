"""The gauge object: a signed permutation of the residual-stream coordinates.

Convention (used everywhere in gaugeport)
-----------------------------------------
A gauge ``G`` maps coordinates of checkpoint A to coordinates of checkpoint B::

    y[perm[i]] = signs[i] * x[i]        (x in A's coordinates, y = G x in B's)

i.e. "coordinate ``i`` of A is coordinate ``perm[i]`` of B, multiplied by ``signs[i]``".
As a dense matrix ``M[perm[i], i] = signs[i]`` and ``y = M @ x``.

Because a signed permutation is orthogonal (``M^-1 = M^T``), the same operation serves
matrices that *write* the stream (residual axis = output axis, ``W' = M W``) and matrices
that *read* it (residual axis = input axis, ``W' = W M^-1 = W M^T``): in both cases slice
``i`` of the stored residual axis moves to position ``perm[i]`` and is multiplied by
``signs[i]``. Norm gains move the same way but are never sign-flipped (``mode="abs"``).

Composition follows matrix multiplication: ``h @ g`` applies ``g`` first, then ``h``.
``compose(g1, g2, ..., gk)`` applies ``g1`` first (chain order, A -> C1 -> ... -> B).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaugeport.core.archspec import Mode
from gaugeport.core.errors import GaugeError
from gaugeport.core.gather import SPLIT_BYTES, gather_2d

FORMAT_NAME = "gaugeport.signed_permutation"
FORMAT_VERSION = "1"
CONVENTION = (
    "y[perm[i]] = signs[i] * x[i]: coordinate i of the source checkpoint (A) is coordinate "
    "perm[i] of the target checkpoint (B), multiplied by signs[i]; dense M[perm[i], i] = signs[i]"
)

ArrayLike = np.ndarray | torch.Tensor

# dtypes whose bits a same-sized integer view carries exactly (for the CPU gather in ``apply``)
_SAME_SIZE_INT = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32,
                  torch.float64: torch.int64, torch.int64: torch.int64, torch.int32: torch.int32,
                  torch.int16: torch.int16, torch.int8: torch.int8, torch.uint8: torch.uint8}

# IEEE formats: the sign is the top bit, so x * -1 == x with that bit flipped (bit for bit, -0.0 included)
_SIGN_BIT = {torch.bfloat16: -0x8000, torch.float16: -0x8000, torch.float32: -0x80000000,
             torch.float64: -0x8000000000000000}
_BLOCK_BYTES = 1 << 20  # gather and sign-flip one ~1 MB block at a time, while it is still in cache


def _gather_flip_bits(x: torch.Tensor, ax: int, inv: np.ndarray, negative: np.ndarray | None) -> torch.Tensor:
    """``out[..., j, ...] = x[..., inv[j], ...]``, its sign bit flipped where ``negative[j]`` (IEEE
    floats only; ``None``: a plain gather, any dtype of ``_SAME_SIZE_INT``). One pass over memory on
    the tensor's bits: numpy's ``take`` (torch's ``index_select`` along an inner axis is ~5x slower on
    CPU: bf16 (5632, 2048) 170 ms vs 34 ms, a plain copy 31 ms), then an XOR on the cache-hot block,
    not a gather and a multiply over the whole tensor. A matrix of at least ``SPLIT_BYTES`` whose last
    axis moves is gathered by :func:`gaugeport.core.gather.gather_2d`, rows split over the cores
    (bf16 11008 x 4096: 20 ms against 45 ms on one core)."""
    d = x.shape[ax]
    pre, post = int(np.prod(x.shape[:ax], dtype=np.int64)), int(np.prod(x.shape[ax + 1:], dtype=np.int64))
    src = x.contiguous().view(_SAME_SIZE_INT[x.dtype]).numpy().reshape(pre, d, post)
    out = np.empty_like(src)
    mask = None if negative is None else np.where(negative, _SIGN_BIT[x.dtype], 0).astype(src.dtype)
    per = max(1, _BLOCK_BYTES // max(1, src.itemsize * post * (d if pre > 1 else 1)))
    if post == 1 and pre > 1 and src.nbytes >= SPLIT_BYTES:  # a large matrix's columns: every core gathers rows
        gather_2d(src.reshape(pre, d), np.arange(pre), inv, np.zeros(pre, dtype=src.dtype),
                  np.zeros(d, dtype=src.dtype) if mask is None else mask, out.reshape(pre, d))
    elif pre > 1:  # blocks of the leading axes, the whole residual axis each
        for i in range(0, pre, per):
            blk = out[i:i + per]
            np.take(src[i:i + per], inv, axis=1, out=blk, mode="clip")  # clip: no buffered copy
            if mask is not None:
                np.bitwise_xor(blk, mask[None, :, None], out=blk)
    else:  # the residual axis leads: blocks of it
        for j in range(0, d, per):
            blk = out[:, j:j + per]
            np.take(src, inv[j:j + per], axis=1, out=blk, mode="clip")
            if mask is not None:
                np.bitwise_xor(blk, mask[None, j:j + per, None], out=blk)
    return torch.from_numpy(out.reshape(x.shape)).view(x.dtype)


@dataclass(frozen=True, eq=False)
class SignedPermutation:
    """A signed permutation of ``d`` coordinates (see the module docstring for the convention)."""

    perm: np.ndarray  # int64, shape (d,), a permutation of range(d)
    signs: np.ndarray  # int8, shape (d,), entries +1 / -1

    def __post_init__(self) -> None:
        perm = _as_numpy_1d(self.perm, "perm")
        signs = _as_numpy_1d(self.signs, "signs")
        if perm.shape != signs.shape:
            raise GaugeError(f"perm and signs must be 1-D of equal length, got {perm.shape} and {signs.shape}",
                             hint="a gauge has one target index and one sign per coordinate")
        if perm.dtype.kind not in "iu" and (
            perm.dtype.kind != "f" or not np.all(np.isfinite(perm)) or not np.all(perm == np.round(perm))
        ):
            raise GaugeError("perm contains NaN, infinite or non-integer entries",
                                 hint="perm must hold the integers 0..d-1, each once (stored as int64)")
        if signs.dtype.kind not in "iuf":
            raise GaugeError(f"signs have dtype {signs.dtype}, not a number", hint="signs must be +1 or -1")
        if signs.dtype.kind == "f" and not np.all(np.isfinite(signs)):
            raise GaugeError("signs contain NaN or infinite entries", hint="signs must be +1 or -1 (corrupt file?)")
        bad = (signs != 1) & (signs != -1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise GaugeError(
                f"signs must be +1 or -1 only: {int(bad.sum())} of {signs.size} entries are not "
                f"(e.g. signs[{i}] = {signs[i].item()!r})",
                hint="the gauge file is corrupt or was not written by gaugeport; a sign of 0 would erase a "
                "coordinate and 2 would rescale it, so it is refused rather than carried along")
        d = perm.shape[0]
        if d and (perm.min() < 0 or perm.max() >= d
                  or not np.all(np.bincount(perm.astype(np.int64), minlength=d) == 1)):
            raise GaugeError(f"perm is not a permutation of 0..{d - 1} (repeated or out-of-range entries)",
                             hint="each target coordinate must appear exactly once; the gauge file is corrupt")
        perm = perm.astype(np.int64)
        signs = signs.astype(np.int8)
        perm.setflags(write=False)
        signs.setflags(write=False)
        object.__setattr__(self, "perm", perm)
        object.__setattr__(self, "signs", signs)

    # ----------------------------------------------------------------- constructors
    @classmethod
    def identity(cls, d: int) -> SignedPermutation:
        return cls(np.arange(d), np.ones(d, dtype=np.int8))

    @classmethod
    def random(cls, d: int, seed: int = 0, positive_fraction: float = 0.5) -> SignedPermutation:
        """A uniformly random permutation with ``round(positive_fraction * d)`` positive signs."""
        if not 0.0 <= positive_fraction <= 1.0:
            raise GaugeError(f"positive_fraction must lie in [0, 1], got {positive_fraction}",
                             hint="0.5 (the default) flips half of the coordinates")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise GaugeError(f"the random seed must be a non-negative integer, got {seed!r}",
                             hint="use e.g. --random-seed 0")
        if isinstance(d, bool) or not isinstance(d, int | np.integer) or d < 1:
            raise GaugeError(f"a gauge needs a positive width, got d={d!r}", hint="d is the model's hidden size")
        rng = np.random.default_rng(seed)
        perm = rng.permutation(d)
        signs = -np.ones(d, dtype=np.int8)
        signs[rng.permutation(d)[: int(round(positive_fraction * d))]] = 1
        return cls(perm, signs)

    @classmethod
    def from_matrix(cls, matrix: ArrayLike) -> SignedPermutation:
        m = _to_numpy(matrix)
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise GaugeError(f"expected a square matrix, got shape {m.shape}", hint="a gauge matrix is d x d")
        nonzero = m != 0
        if not np.all(nonzero.sum(0) == 1) or not np.all(nonzero.sum(1) == 1) or not np.all(np.abs(m[nonzero]) == 1):
            raise GaugeError("matrix is not a signed permutation (one +-1 per row and column)",
                             hint="round an estimate to a signed permutation with match_coordinates first")
        perm = np.argmax(nonzero, axis=0)
        signs = m[perm, np.arange(m.shape[1])]
        return cls(perm, signs.astype(np.int8))

    # ----------------------------------------------------------------- properties
    @property
    def d(self) -> int:
        return int(self.perm.shape[0])

    @property
    def positive_fraction(self) -> float:
        return float(np.mean(self.signs > 0))

    @property
    def is_global_sign(self) -> bool:
        """True when all signs are equal (the only signs a LayerNorm model tolerates)."""
        return bool(np.all(self.signs == self.signs[0])) if self.d else True

    def to_matrix(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        m = torch.zeros(self.d, self.d, dtype=dtype)
        m[torch.from_numpy(self.perm.copy()), torch.arange(self.d)] = torch.from_numpy(self.signs.copy()).to(dtype)
        return m

    def fingerprint(self) -> str:
        """Short content hash, recorded as provenance in transported artifacts."""
        h = hashlib.sha256(self.perm.tobytes() + self.signs.tobytes())
        return h.hexdigest()[:16]

    # ----------------------------------------------------------------- algebra
    def inverse(self) -> SignedPermutation:
        return self._inverse

    @functools.cached_property
    def _inverse(self) -> SignedPermutation:  # computed once: the arrays are read-only, so it can be shared
        inv = np.empty_like(self.perm)
        inv[self.perm] = np.arange(self.d)
        out = SignedPermutation(inv, self.signs[inv])
        out.__dict__["_inverse"] = self  # its inverse is this one (no chain of new objects on repeated inversion)
        return out

    def __matmul__(self, other: SignedPermutation) -> SignedPermutation:
        """``self @ other``: apply ``other`` first, then ``self`` (matrix product order)."""
        if not isinstance(other, SignedPermutation):
            return NotImplemented
        _check_width(self.d, other.d, "compose")
        return SignedPermutation(self.perm[other.perm], other.signs * self.signs[other.perm])

    def then(self, other: SignedPermutation) -> SignedPermutation:
        """Apply ``self`` first, then ``other`` (``other @ self``)."""
        return other @ self

    def with_signs(self, signs: ArrayLike | None) -> SignedPermutation:
        """Same permutation, other signs (``None``: all +1, the S_d baseline)."""
        s = np.ones(self.d, dtype=np.int8) if signs is None else _to_numpy(signs)
        return SignedPermutation(self.perm, s)

    def perm_only(self) -> SignedPermutation:
        return self.with_signs(None)

    # ----------------------------------------------------------------- action
    def apply(self, x: ArrayLike, axis: int = -1, mode: Mode = "signed") -> ArrayLike:
        """Move slice ``i`` of ``axis`` to ``perm[i]`` and multiply by ``signs[i]`` (``mode="signed"``).

        ``mode="abs"`` only permutes (norm gains, second moments); ``mode="none"`` returns ``x``.
        Works on numpy arrays and torch tensors, any dtype, any axis; never modifies ``x``.
        """
        if mode == "none":
            return x
        if mode not in ("signed", "abs"):
            raise GaugeError(f"unknown mode {mode!r}; expected 'signed', 'abs' or 'none'")
        ndim = x.ndim
        ax = axis % ndim if ndim else 0
        if ndim == 0 or x.shape[ax] != self.d:
            shape = tuple(x.shape)
            raise GaugeError(
                f"width mismatch: the gauge has d={self.d} but axis {axis} of the tensor has size "
                f"{shape[ax] if ndim else 'n/a'} (shape {shape})",
                hint="use a gauge estimated for this model's hidden size",
            )
        inv = self.inverse().perm  # out[j] = signs[inv[j]] * x[inv[j]]
        bshape = [1] * ndim
        bshape[ax] = self.d
        if isinstance(x, torch.Tensor):
            flips_bits = x.dtype in _SIGN_BIT
            if x.device.type == "cpu" and not x.requires_grad and x.dtype in _SAME_SIZE_INT:
                out = _gather_flip_bits(x, ax, inv, self.signs[inv] < 0 if mode == "signed" and flips_bits else None)
                if mode != "signed" or flips_bits:
                    return out
            else:
                out = x.index_select(ax, torch.from_numpy(inv.copy()).to(x.device))
            if mode == "signed":  # integers, and tensors on an accelerator or carrying gradients
                s = torch.from_numpy(self.signs[inv].copy()).to(device=x.device, dtype=x.dtype)
                out.mul_(s.reshape(bshape))  # in place on the fresh copy: one tensor-sized buffer, not two
            return out
        arr = np.asarray(x)
        out = np.take(arr, inv, axis=ax)
        if mode == "signed":
            out = out * self.signs[inv].reshape(bshape).astype(arr.dtype if arr.dtype.kind in "fc" else np.int64)
        return out

    __call__ = apply

    # ----------------------------------------------------------------- comparison
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SignedPermutation):
            return NotImplemented
        return np.array_equal(self.perm, other.perm) and np.array_equal(self.signs, other.signs)

    def __hash__(self) -> int:
        return hash((self.perm.tobytes(), self.signs.tobytes()))

    def __repr__(self) -> str:
        return f"SignedPermutation(d={self.d}, positive_fraction={self.positive_fraction:.3f})"

    def accuracy(self, truth: SignedPermutation) -> dict[str, float]:
        """Agreement with a reference gauge, per coordinate of the source.

        ``full``: permutation and sign both right; ``perm``: permutation right (signs ignored);
        ``sign_given_perm``: among coordinates with the right permutation, the fraction with the
        right sign.
        """
        _check_width(self.d, truth.d, "accuracy")
        perm_ok = self.perm == truth.perm
        sign_ok = self.signs == truth.signs
        n_perm = int(perm_ok.sum())
        return {
            "full": float(np.mean(perm_ok & sign_ok)),
            "perm": float(np.mean(perm_ok)),
            "sign_given_perm": float(np.mean(sign_ok[perm_ok])) if n_perm else 0.0,
        }


@dataclass(frozen=True, eq=False)
class LayerGauge:
    """One layer's hidden gauge: MLP units (signed permutation) and query heads (permutation)."""

    mlp: SignedPermutation
    heads: SignedPermutation  # signs all +1
    n_kv_heads: int

    def __post_init__(self) -> None:
        if not np.all(self.heads.signs == 1):
            raise GaugeError("attention heads are permuted, never signed")
        h, k = self.heads.d, self.n_kv_heads
        if k <= 0 or h % k:
            raise GaugeError(f"{h} query heads do not split into {k} key/value groups")
        gs = h // k
        groups = self.heads.perm.reshape(k, gs) // gs
        if not np.all(groups == groups[:, :1]):
            raise GaugeError("the head permutation splits a key/value group: query heads of one group must move "
                             "to one group together (grouped-query attention)",
                             hint="permute key/value groups, and query heads only inside their group")

    @property
    def kv(self) -> SignedPermutation:
        gs = self.heads.d // self.n_kv_heads
        return SignedPermutation(self.heads.perm[::gs] // gs, np.ones(self.n_kv_heads, dtype=np.int8))

    def inverse(self) -> LayerGauge:
        return LayerGauge(self.mlp.inverse(), self.heads.inverse(), self.n_kv_heads)

    def __matmul__(self, other: LayerGauge) -> LayerGauge:
        return LayerGauge(self.mlp @ other.mlp, self.heads @ other.heads, self.n_kv_heads)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LayerGauge) and self.mlp == other.mlp and self.heads == other.heads

    def __hash__(self) -> int:
        return hash((self.mlp, self.heads))


def compose(*gauges: SignedPermutation) -> SignedPermutation:
    """Chain composition: ``compose(g1, g2, g3)`` applies ``g1`` first (``g3 @ g2 @ g1``)."""
    return chain_product(gauges)


def chain_product(gauges: Sequence[Any]) -> Any:
    """``g_n @ ... @ g_2 @ g_1`` for any gauge type with ``@`` (residual or full): chain order."""
    if not gauges:
        raise GaugeError("compose needs at least one gauge")
    out = gauges[0]
    for g in gauges[1:]:
        out = g @ out
    return out


# --------------------------------------------------------------------- file format
def save_gauge(
    gauge: SignedPermutation,
    path: str | Path,
    provenance: Mapping[str, Any] | None = None,
    extras: Mapping[str, ArrayLike] | None = None,
    *,
    force: bool = False,
) -> Path:
    """Write ``gauge`` as a ``.safetensors`` file (atomically). ``extras``: per-coordinate arrays
    such as ``confidence`` and ``margin`` (length ``d``), stored beside ``perm`` and ``signs``."""
    from gaugeport.core.fileio import atomic_save_safetensors

    tensors: dict[str, torch.Tensor] = {
        "perm": torch.from_numpy(gauge.perm.copy()),
        "signs": torch.from_numpy(gauge.signs.copy()),
    }
    for name, arr in (extras or {}).items():
        if name in tensors:
            raise GaugeError(f"extra tensor name {name!r} is reserved", hint="name it something else")
        t = torch.as_tensor(_to_numpy(arr)).contiguous()
        if t.ndim != 1 or t.shape[0] != gauge.d:
            raise GaugeError(f"extra {name!r} has shape {tuple(t.shape)}, expected ({gauge.d},)",
                             hint="per-coordinate extras (confidence, margin) hold one number per coordinate")
        tensors[name] = t
    metadata = gauge_file_metadata(gauge, FORMAT_VERSION, CONVENTION, provenance)
    return atomic_save_safetensors(tensors, Path(path), metadata, force=force)


def gauge_file_metadata(gauge: Any, version: str, convention: str, provenance: Mapping[str, Any] | None,
                        **extra: str) -> dict[str, str]:
    """The metadata every gauge file carries (format, version, d, convention, fingerprint, provenance);
    ``extra`` keys (e.g. a full gauge's per-layer sizes) go between ``d`` and ``convention``."""
    return {"format": FORMAT_NAME, "version": version, "d": str(gauge.d), **extra, "convention": convention,
            "fingerprint": gauge.fingerprint(),
            "provenance": json.dumps(dict(provenance or {}), sort_keys=True, default=str)}


SUPPORTED_VERSIONS = ("1", "2")  # 1: residual only; 2: residual, MLP units and heads (core.fullgauge)
_CORRUPT = "the gauge file is corrupt or was edited by hand; write gauges with `gaugeport align`, " \
    "`gaugeport apply --save-gauge` or save_gauge"


def read_gauge_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a gauge file, refusing any safetensors file that is not one, a file of an
    unknown or missing version, and a version-1 file that carries a version-2 file's per-layer tensors."""
    from gaugeport.core.fileio import read_safetensors

    tensors, metadata = read_safetensors(Path(path), what="gauge file")
    if metadata.get("format") != FORMAT_NAME:
        raise GaugeError(
            f"{path} is not a gaugeport gauge file (metadata format={metadata.get('format')!r})",
            hint="gauges are written by `gaugeport align`, `gaugeport apply --save-gauge` or `save_gauge`",
        )
    version = metadata.get("version")
    if version is None:
        raise GaugeError(f"{path}: gauge file has no version in its metadata, so its tensors cannot be read "
                         "safely", hint=_CORRUPT)
    if version not in SUPPORTED_VERSIONS:
        newer = version.isdigit() and int(version) > int(SUPPORTED_VERSIONS[-1])
        raise GaugeError(f"{path}: gauge file version {version!r} is "
                         + ("newer than this gaugeport understands" if newer else "not a gauge file version"),
                         hint=f"supported versions: {', '.join(SUPPORTED_VERSIONS)}"
                         + ("; upgrade gaugeport" if newer else f"; {_CORRUPT}"))
    layered = sorted(k for k in tensors if k.startswith("layers."))
    if version == "1" and layered:
        raise GaugeError(f"{path}: gauge file says version 1 (residual only) but holds per-layer tensors "
                         f"({layered[0]}, ...) of a version-2 (full) gauge", hint=_CORRUPT)
    return tensors, metadata


@dataclass(frozen=True)
class GaugeFile:
    gauge: SignedPermutation
    provenance: dict[str, Any]
    extras: dict[str, np.ndarray]


def read_residual_part(path: str | Path, tensors: dict[str, torch.Tensor], metadata: Mapping[str, str]) -> GaugeFile:
    """The residual gauge, provenance and per-coordinate extras of a gauge file's tensors (validated);
    ``tensors`` loses the entries it reads; per-layer tensors (``layers.*``) are left for the full reader."""
    if "perm" not in tensors or "signs" not in tensors:
        raise GaugeError(f"{path}: gauge file lacks the 'perm' or 'signs' tensor",
                         hint="the file is not a complete gauge; write gauges with save_gauge or `gaugeport align`")
    perm_t, signs_t = tensors.pop("perm"), tensors.pop("signs")
    if perm_t.is_floating_point() or perm_t.dtype == torch.bool or perm_t.is_complex():
        raise GaugeError(f"{path}: perm is stored as {perm_t.dtype}, not an integer type",
                         hint="floating point cannot hold every index exactly; store perm as int64")
    try:
        gauge = SignedPermutation(perm_t.numpy(), _float_safe_numpy(signs_t))
    except GaugeError as exc:
        raise GaugeError(f"{path}: {exc.message}", hint=exc.hint) from exc
    d_meta = metadata.get("d", str(gauge.d))
    if d_meta != str(gauge.d):
        raise GaugeError(f"{path}: metadata says d={d_meta} but perm has length {gauge.d}", hint=_CORRUPT)
    try:
        provenance = json.loads(metadata.get("provenance", "{}"))
    except json.JSONDecodeError as exc:
        raise GaugeError(f"{path}: provenance metadata is not valid JSON ({exc})", hint=_CORRUPT) from exc
    extras = {}
    for name in [k for k in tensors if not k.startswith("layers.")]:
        t = tensors.pop(name)
        if t.ndim != 1 or t.shape[0] != gauge.d:
            raise GaugeError(f"{path}: per-coordinate {name!r} has shape {tuple(t.shape)}, expected ({gauge.d},)",
                             hint=_CORRUPT)
        if t.is_complex() or t.dtype == torch.bool:
            raise GaugeError(f"{path}: per-coordinate {name!r} has dtype {t.dtype}, not a real number", hint=_CORRUPT)
        arr = t.float().numpy()
        if not np.all(np.isfinite(arr)):
            raise GaugeError(f"{path}: per-coordinate {name!r} contains NaN or infinite values",
                             hint="the gauge file is corrupt; re-estimate it")
        extras[name] = arr
    return GaugeFile(gauge, provenance if isinstance(provenance, dict) else {"provenance": provenance}, extras)


def read_gauge_file(path: str | Path) -> GaugeFile:
    """Load a gauge file with its provenance and per-coordinate extras (e.g. confidence).

    The same readers as :func:`gaugeport.core.fullgauge.read_full_gauge_file` (a version-2 file is
    validated whole, its per-layer part included); this returns the residual part.
    """
    tensors, metadata = read_gauge_tensors(path)
    part = read_residual_part(path, tensors, metadata)
    read_layer_part(path, tensors, metadata)
    return part


def read_layer_part(path: str | Path, tensors: dict[str, torch.Tensor],
                    metadata: Mapping[str, str]) -> tuple[LayerGauge, ...]:
    """The per-layer hidden gauges of a version-2 file's tensors (validated; ``()`` for version 1);
    ``tensors`` loses the entries it reads and keeps only per-layer extras (``*.confidence``)."""
    if metadata["version"] != "2":
        return ()
    n_layers = _meta_int(metadata, "n_layers", path)
    n_kv = _meta_int(metadata, "n_kv_heads", path)
    layers = []
    for i in range(n_layers):
        keys = [f"layers.{i}.mlp.perm", f"layers.{i}.mlp.signs", f"layers.{i}.heads.perm"]
        missing = [k for k in keys if k not in tensors]
        if missing:
            raise GaugeError(f"{path}: version-2 gauge file lacks {', '.join(missing)}",
                             hint="the file is truncated or was not written by gaugeport")
        mlp = _sp(tensors.pop(keys[0]), tensors.pop(keys[1]), path, f"layer {i} mlp")
        hp = tensors.pop(keys[2])
        heads = _sp(hp, torch.ones(hp.shape, dtype=torch.int8), path, f"layer {i} heads")
        layers.append(LayerGauge(mlp, heads, n_kv))
    stray = [k for k in tensors if not k.endswith(".confidence")]
    if stray:
        raise GaugeError(f"{path}: unexpected tensors {stray[:3]} (metadata says {n_layers} layers)",
                         hint="the file is truncated or was not written by gaugeport")
    return tuple(layers)


def _sp(perm: torch.Tensor, signs: torch.Tensor, path: str | Path, what: str) -> SignedPermutation:
    p, s = perm.numpy(), signs.numpy()
    if np.issubdtype(s.dtype, np.floating) and not np.all(np.isfinite(s)):
        raise GaugeError(f"{path}: {what} signs contain NaN or infinite values")
    try:
        return SignedPermutation(p, s)
    except GaugeError as exc:
        raise GaugeError(f"{path}: {what}: {exc.message}", hint=exc.hint) from exc


def _meta_int(metadata: Mapping[str, str], key: str, path: str | Path) -> int:
    raw = metadata.get(key)
    if raw is None or not raw.isdigit() or int(raw) <= 0 or int(raw) > 100_000:
        raise GaugeError(f"{path}: metadata {key}={raw!r} is not a valid positive integer")
    return int(raw)


def load_gauge(path: str | Path) -> SignedPermutation:
    """Load a gauge saved by :func:`save_gauge`."""
    return read_gauge_file(path).gauge


# --------------------------------------------------------------------- helpers
def _float_safe_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor as numpy; bf16 / f16 (which numpy lacks or rounds) go through float32 first."""
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.numpy()


def _as_numpy_1d(x: object, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = _float_safe_numpy(x.detach().cpu())
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise GaugeError(f"{what} is not an array ({exc})", hint=f"{what} must be a 1-D array of numbers") from exc
    if arr.ndim != 1:
        raise GaugeError(f"{what} must be 1-D, got shape {arr.shape}", hint=f"{what} holds one entry per coordinate")
    if arr.dtype.kind not in "iuf":
        raise GaugeError(f"{what} has dtype {arr.dtype}, not a number", hint=f"{what} must be a 1-D array of numbers")
    return arr


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _check_width(d1: int, d2: int, what: str) -> None:
    if d1 != d2:
        raise GaugeError(f"{what}: width mismatch between gauges (d={d1} vs d={d2})",
                         hint="gauges compose only along a chain of checkpoints of the same hidden size")
