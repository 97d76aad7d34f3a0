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

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaugeport.core.archspec import ArchSpec
from gaugeport.core.checkpoint import Checkpoint
from gaugeport.core.errors import ArchitectureError
from gaugeport.core.fileio import atomic_path
from gaugeport.core.fullgauge import FullGauge, FullTransform, LayerGauge
from gaugeport.core.gauge import SignedPermutation
from gaugeport.core.hidden import HiddenDims, get_hidden_spec
from gaugeport.estimate.hidden import unit_blocks

FINGERPRINT_VERSION = "1"


@dataclass
class Canonical:
    gauge: FullGauge  # maps the checkpoint to its canonical representative
    ties: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- ordering helpers
def _first_nonzero_sign(rows: np.ndarray) -> np.ndarray:
    """Per row: the sign of its first nonzero entry (0 for an all-zero row)."""
    nz = rows != 0
    first = np.argmax(nz, axis=1)
    vals = rows[np.arange(rows.shape[0]), first]
    return np.sign(vals) * nz.any(axis=1)


def _lexsort_rows(keys: Sequence[np.ndarray]) -> tuple[np.ndarray, int]:
    """Indices sorting the rows of the concatenated ``keys`` lexicographically, and the number of
    tie groups left (rows equal in every key). Earlier keys take precedence."""
    mat = np.concatenate([k.reshape(k.shape[0], -1).astype(np.float64) for k in keys], axis=1) if keys else \
        np.zeros((0, 0))
    n = mat.shape[0]
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
    """The full gauge mapping ``ckpt`` to its canonical representative, with the ties it met."""
    get = get or ckpt.tensor
    spec = ckpt.spec
    hspec = get_hidden_spec(spec.model_type)
    dims = hspec.dims(ckpt.config, ckpt.d_model)
    rules = spec.classify_all(ckpt.names)
    names = sorted(ckpt.names)
    residual, ties, notes = _canonical_residual(ckpt, get, spec, rules, names)
    tf = FullTransform(spec, ckpt.names, FullGauge(residual), ckpt.d_model, ckpt.config)
    per_layer: dict[int, list[tuple[str, str, np.ndarray]]] = {}
    for name in names:
        hit = hspec.match(name)
        if hit is not None:
            per_layer.setdefault(hit[1], []).extend(unit_blocks(tf(name, get(name)), hit[0], dims))
    layers, mlp_ties, head_ties = [], 0, 0
    for layer in range(dims.n_layers):
        lg, mt, ht = _canonical_layer(per_layer.get(layer, []), dims, hspec.mlp_signs)
        layers.append(lg)
        mlp_ties += mt
        head_ties += ht
    ties.update({"mlp_identical_unit_groups": mlp_ties, "head_identical_groups": head_ties})
    return Canonical(FullGauge(residual, tuple(layers)), ties, notes)


def _canonical_residual(ckpt: Checkpoint, get: Callable[[str], torch.Tensor], spec: ArchSpec,
                        rules: dict[str, Any], names: list[str]) -> tuple[SignedPermutation, dict[str, Any], list[str]]:
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

    signs = np.zeros(d)
    first = slice_of(sources[0])
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


def _rows(ckpt: Checkpoint, name: str) -> int:
    from gaugeport.core.checkpoint import shard_layout

    return int(shard_layout(ckpt, ckpt.shard_of[name])[name][1][0])


def _canonical_layer(blocks: list[tuple[str, str, np.ndarray]], dims: HiddenDims,
                     mlp_signs: bool) -> tuple[LayerGauge, int, int]:
    mlp_abs = [b for k, m, b in blocks if k == "mlp" and m == "abs"]
    mlp_sgn = [b.astype(np.float64) for k, m, b in blocks if k == "mlp" and m == "signed"]
    signs = np.ones(dims.mlp)
    if mlp_signs and mlp_sgn:
        s = np.zeros(dims.mlp)
        for b in mlp_sgn:
            undecided = s == 0
            s[undecided] = _first_nonzero_sign(b[undecided])
        signs = np.where(s == 0, 1.0, s)
    order, mlp_ties = _lexsort_rows(mlp_abs + [b * signs[:, None] for b in mlp_sgn])
    mlp = SignedPermutation(_ranks(order), signs.astype(np.int8))
    q = [b for k, _, b in blocks if k == "q_heads"]
    kv = [b for k, _, b in blocks if k == "kv_heads"]
    gs, k = dims.group_size, dims.n_kv_heads
    head_ties = 0
    inner, group_keys = [], []
    for g in range(k):
        members = [b[g * gs:(g + 1) * gs] for b in q]
        o, t = _lexsort_rows(members)
        head_ties += t
        inner.append(o)
        sorted_q = np.concatenate([m[o].reshape(1, -1) for m in members], axis=1) if members else np.zeros((1, 0))
        group_keys.append(np.concatenate([b[g:g + 1].reshape(1, -1) for b in kv] + [sorted_q], axis=1))
    gorder, gt = _lexsort_rows([np.concatenate(group_keys, axis=0)])
    head_ties += gt
    granks = _ranks(gorder)
    perm = np.empty(dims.n_heads, dtype=np.int64)
    for g in range(k):
        perm[g * gs + inner[g]] = granks[g] * gs + np.arange(gs)
    return LayerGauge(mlp, SignedPermutation(perm, np.ones(dims.n_heads, dtype=np.int8)), k), mlp_ties, head_ties


# ----------------------------------------------------------------------------- verbs
def canonicalize(src: str | Path, out: str | Path, *, force: bool = False, progress: bool = True) -> Canonical:
    """Write the canonical representative of ``src`` to ``out`` (streamed; the input is never modified)."""
    from gaugeport.core.apply import rewrite_checkpoint

    ckpt = Checkpoint.open(src)
    can = canonical_gauge(ckpt)
    tf = FullTransform(ckpt.spec, ckpt.names, can.gauge, ckpt.d_model, ckpt.config)
    fp = fingerprint(src, canonical=can)["fingerprint"]
    stamp = {"gaugeport_canonical": "true", "gaugeport_fingerprint": fp}
    with atomic_path(Path(out), force, inputs=(Path(src),), kind="directory") as tmp:
        rewrite_checkpoint(ckpt, tmp, tf, stamp, desc="canonicalize", progress=progress)
    return can


def fingerprint(src: str | Path, *, canonical: Canonical | None = None) -> dict[str, Any]:
    """A hash of the canonical representative's tensors (names, dtypes, shapes, bytes): equal for every
    gauged copy, different as soon as one stored value differs."""
    ckpt = Checkpoint.open(src)
    can = canonical or canonical_gauge(ckpt)
    tf = FullTransform(ckpt.spec, ckpt.names, can.gauge, ckpt.d_model, ckpt.config)
    h = hashlib.sha256(f"gaugeport-fingerprint-v{FINGERPRINT_VERSION}:{ckpt.model_type}".encode())
    for name in sorted(ckpt.names):
        t = tf(name, ckpt.tensor(name)).contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"fingerprint": h.hexdigest()[:32], "model_type": ckpt.model_type, "version": FINGERPRINT_VERSION,
            "ties": can.ties, "notes": can.notes, "canonical_gauge": can.gauge.fingerprint()}
