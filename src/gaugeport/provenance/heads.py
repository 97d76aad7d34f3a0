"""Attention heads up to the maps inside a head that keep the function.

Two families of maps act inside the heads without changing the model (grouped-query attention: one
map per key/value group, shared by the query heads that read it):

* **value/output**: ``V_g -> R V_g`` and, for every query head ``h`` of group ``g``, ``O_h -> O_h R^-1``
  (``R`` any invertible ``head_dim x head_dim`` matrix); ``O_h V_g`` is unchanged.
* **query/key**: inside each RoPE frequency pair (dims ``i`` and ``i + r / 2`` of the ``r`` rotary
  dims, the rotate-half layout) a scaled rotation ``S = s Rot``: keys ``S k``, queries ``S q / s^2``.
  ``S`` commutes with every RoPE rotation, so ``q . k`` is unchanged at every offset. On the dims RoPE
  leaves alone (partial rotary; all of them without RoPE) any invertible ``N``: keys ``N k``, queries
  ``N^-T q``.

The architecture table's ``hidden.attention`` section says where the heads live
(:class:`gaugeport.core.hidden.AttentionSpec`). This module gives

* :func:`attention_slots`: per layer, the stored slices holding each role's heads;
* :func:`invariant_head_features`: per query head, features that no such map changes (sketches of
  ``O_h V_g`` and of ``Q_h,pair^T K_g,pair`` per frequency pair), used by ``same`` to match heads;
* :func:`fit_layer_head_maps`: the maps that take A's heads to B's (both in one labelling), fitted by
  least squares per group, so ``same``'s tensor-by-tensor identity check compares like with like.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gaugeport.core.archspec import ArchSpec
from gaugeport.core.errors import ArchitectureError
from gaugeport.core.hidden import AttentionSpec, HiddenDims, HiddenRule, HiddenSpec

ROLES = ("q", "k", "v", "o")
SKETCH_COLS = 16  # residual directions the invariant features are probed on (fewer when d is smaller)


@dataclass(frozen=True)
class Slot:
    """The slice ``[start, stop)`` along ``axis`` of tensor ``name`` holding one role's heads: contiguous
    (``block`` 0: head after head, ``head_dim`` rows each), or, where q/k/v are interleaved per head
    (GPT-NeoX), one ``block`` of rows per head of which this role's ``head_dim`` start at ``offset``."""

    name: str
    axis: int
    start: int
    stop: int
    block: int = 0
    offset: int = 0

    def rows(self, n: int, head_dim: int) -> torch.Tensor:
        """The ``n * head_dim`` indices along ``axis`` of this role's rows, head by head."""
        if not self.block:
            return torch.arange(self.start, self.stop)
        if n * self.block != self.stop - self.start or self.offset + head_dim > self.block:
            raise ArchitectureError(f"{self.name}: {n} heads of {head_dim} dims do not fit {self.stop - self.start} "
                                    f"rows interleaved in blocks of {self.block}")
        return (self.start + torch.arange(n)[:, None] * self.block + self.offset + torch.arange(head_dim)).reshape(-1)


def attention_spec(spec: ArchSpec, hspec: HiddenSpec) -> AttentionSpec:
    """The table's attention section; a clear error where it has none."""
    if hspec.attention is None:
        raise ArchitectureError(
            f"the {spec.model_type!r} table does not say which tensors hold the heads' queries, keys, values "
            "and output", hint=f"add an \"attention\" entry to the hidden section of {spec.table or spec.model_type}"
            ".json (see gaugeport/core/hidden.py)")
    return hspec.attention


def attention_slots(names: Collection[str], spec: ArchSpec, hspec: HiddenSpec, dims: HiddenDims,
                    layer: int) -> dict[str, list[Slot]]:
    """Per role (q, k, v, o), the slices of ``layer``'s stored tensors that hold its heads (weights first;
    a bias the checkpoint lacks is left out)."""
    attn = attention_spec(spec, hspec)
    by_canonical = {c: n for n in names for c in spec.canonical_names(n)}
    out: dict[str, list[Slot]] = {}
    for role in ROLES:
        slots = []
        for entry in getattr(attn, role):
            template, _, seg = entry.partition("@")
            name = by_canonical.get(template.replace("{layer}", str(layer)))
            if name is None:
                continue
            hit = hspec.match(name)
            if hit is None:
                raise ArchitectureError(f"{name} is named in the attention section but in no hidden row")
            slots.append(_slot(name, hit[0], template, seg, attn.fused, dims))
        out[role] = slots
    if not out["q"] or not out["k"] or not out["v"] or not out["o"]:
        raise ArchitectureError(f"layer {layer}: the attention section's q/k/v/o tensors are not all in the checkpoint")
    return out


def _slot(name: str, rule: HiddenRule, template: str, seg: str, fused: str, dims: HiddenDims) -> Slot:
    """Where ``template@seg`` lives in ``name`` (claimed by ``rule``): ``@i`` is the row's ``i``-th segment
    (``fused: "segments"``), or, per head (``"per_head"``), the ``i``-th ``head_dim`` rows of every head's
    block of a ``q_heads*m`` segment (GPT-NeoX: ``[q_h; k_h; v_h]`` head after head)."""
    i = int(seg) if seg else 0
    if not seg and (len(rule.segments) != 1 or rule.segments[0].mult != 1):
        raise ArchitectureError(f"{template} is fused ({len(rule.segments)} segments of {rule.segments[0].mult} "
                                "blocks per head): name one part with @i")
    sizes = [s.size(dims) for s in rule.segments]
    if fused == "segments" or not seg:
        if i >= len(sizes):
            raise ArchitectureError(f"{template}@{i}: the row has {len(sizes)} segments")
        return Slot(name, rule.axis, sum(sizes[:i]), sum(sizes[:i + 1]))
    multi = [k for k, s in enumerate(rule.segments) if s.mult > 1 and not s.one_per_head]
    if len(multi) != 1 or i >= rule.segments[multi[0]].mult:
        raise ArchitectureError(f"{template}@{i}: per-head fused parts need one segment of m blocks per head "
                                "(q_heads*m) with i < m", hint="see fused in gaugeport/core/hidden.py")
    k = multi[0]
    return Slot(name, rule.axis, sum(sizes[:k]), sum(sizes[:k + 1]), block=rule.segments[k].mult * dims.head_dim,
                offset=i * dims.head_dim)


def read_block(t: torch.Tensor, slot: Slot, n: int, head_dim: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``[n, head_dim, f]`` (float64 unless ``dtype`` says): the slot's heads, each head's dims, the rest flattened."""
    moved = torch.movedim(t, slot.axis, 0)
    part = moved[slot.start:slot.stop] if not slot.block else moved[slot.rows(n, head_dim)]
    return part.to(dtype).reshape(n, head_dim, -1)


def write_block(t: torch.Tensor, slot: Slot, block: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` with the slot replaced by ``block`` (shaped as :func:`read_block` returns it)."""
    moved = torch.movedim(t.double(), slot.axis, 0).clone()
    rows = slot.rows(block.shape[0], block.shape[1])
    moved[rows] = block.reshape(moved[rows].shape).to(moved.dtype)
    return torch.movedim(moved, 0, slot.axis).to(t.dtype)


def pair_index(rotary: int, layout: str = "rotate_half") -> tuple[np.ndarray, np.ndarray]:
    """The RoPE frequency pairs of the first ``rotary`` dims of a head: dim ``i`` with dim ``i + rotary / 2``
    (``rotate_half``), or dim ``2i`` with dim ``2i + 1`` (``interleaved``: Ernie 4.5, GLM, Cohere)."""
    half = rotary // 2
    if layout == "interleaved":
        return np.arange(half) * 2, np.arange(half) * 2 + 1
    if layout not in ("rotate_half", "none"):
        raise ValueError(f"unknown RoPE layout {layout!r}")
    return np.arange(half), np.arange(half) + half


# ----------------------------------------------------------------------------- invariant features
def _probe(d: int) -> torch.Tensor:
    m = min(d, SKETCH_COLS)
    return torch.from_numpy(np.random.default_rng(d).standard_normal((d, m)) / np.sqrt(m))


def invariant_head_features(get: Callable[[str], torch.Tensor], slots: Mapping[str, list[Slot]],
                            dims: HiddenDims, rotary: int, layout: str = "rotate_half") -> dict[str, np.ndarray]:
    """Per query head, features no value/output or query/key map changes (see the module docstring):

    * ``ov``: ``P^T O_h V_g P`` (``P`` a seeded ``d x m`` Gaussian probe, the same for both models), a
      sketch of the head's ``d x d`` output-value circuit;
    * ``qk``: per rotary frequency pair ``P^T Q_h,pair^T K_g,pair P``, and ``P^T Q_h,rest^T K_g,rest P``
      over the dims RoPE leaves alone.

    ``get`` returns tensors already in the common residual coordinates; biases are not used. In float32
    (the features are float32): the probe is applied first, so no ``d x d`` product is formed."""
    hd, nq, nkv, gs = dims.head_dim, dims.n_heads, dims.n_kv_heads, dims.group_size
    w = {r: slots[r][0] for r in ROLES}
    f32 = torch.float32
    q = read_block(get(w["q"].name), w["q"], nq, hd, f32)
    k = read_block(get(w["k"].name), w["k"], nkv, hd, f32)
    v = read_block(get(w["v"].name), w["v"], nkv, hd, f32)
    o = read_block(get(w["o"].name), w["o"], nq, hd, f32)  # [h, hd, d]: O_h transposed
    p = _probe(int(q.shape[-1])).to(f32)
    qp, kp, vp, op = q @ p, k @ p, v @ p, o @ p  # [heads, hd, m]
    group = torch.arange(nq) // gs
    kp, vp = kp[group], vp[group]  # each query head's key/value group
    ov = torch.einsum("hdi,hdj->hij", op, vp).reshape(nq, -1)
    lo, hi = pair_index(rotary, layout)
    per_pair = torch.einsum("hpi,hpj->hpij", qp[:, lo], kp[:, lo]) + torch.einsum("hpi,hpj->hpij", qp[:, hi], kp[:, hi])
    rest = torch.einsum("hdi,hdj->hij", qp[:, rotary:], kp[:, rotary:])
    qk = torch.cat([per_pair.reshape(nq, -1), rest.reshape(nq, -1)], dim=1)
    return {"ov": ov.float().numpy(), "qk": qk.float().numpy()}


# ----------------------------------------------------------------------------- maps between two models
@dataclass
class LayerHeadMaps:
    """One layer's maps from A's heads to B's: ``r`` ``[groups, hd, hd]`` on values (outputs get
    ``R^-T`` on their head rows), ``key`` and ``query`` ``[groups, hd, hd]`` on keys and queries."""

    slots: dict[str, list[Slot]]
    r: torch.Tensor
    key: torch.Tensor
    query: torch.Tensor


def _lstsq_map(xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
    """``M`` minimising ``||M xa - xb||`` (rows: dims of one head, columns: everything they carry); batched
    over any leading axes (one least-squares problem each)."""
    return torch.linalg.lstsq(xa.transpose(-2, -1), xb.transpose(-2, -1)).solution.transpose(-2, -1)


def _stack(get: Callable[[str], torch.Tensor], slots: list[Slot], n: int, hd: int) -> torch.Tensor:
    """A role's heads from all its tensors (weight and bias), side by side: ``[n, hd, f_total]``."""
    return torch.cat([read_block(get(s.name), s, n, hd) for s in slots], dim=2)


def fit_layer_head_maps(get_a: Callable[[str], torch.Tensor], get_b: Callable[[str], torch.Tensor],
                        slots: dict[str, list[Slot]], dims: HiddenDims, rotary: int,
                        layout: str = "rotate_half") -> LayerHeadMaps:
    """The value/output and query/key maps taking A's heads (``get_a``: in one labelling of
    residual, units and heads) closest to B's, by least squares per key/value group: ``R`` from the
    values, the key map from the keys (per rotary pair projected onto scaled rotations ``a I + b J``,
    which alone commute with RoPE; a general map on the other dims). Queries and outputs follow.
    Every group's and every pair's problem is solved in one batched call."""
    hd, nkv = dims.head_dim, dims.n_kv_heads
    va, vb = _stack(get_a, slots["v"], nkv, hd), _stack(get_b, slots["v"], nkv, hd)
    ka, kb = _stack(get_a, slots["k"], nkv, hd), _stack(get_b, slots["k"], nkv, hd)
    eye = torch.eye(hd, dtype=torch.float64)
    key, query = eye.repeat(nkv, 1, 1), eye.repeat(nkv, 1, 1)
    r = _lstsq_map(va, vb)  # [groups, hd, hd]
    del va, vb
    lo, hi = (torch.from_numpy(x) for x in pair_index(rotary, layout))
    if lo.numel():
        pa = torch.stack([ka[:, lo], ka[:, hi]], dim=2)  # [groups, pairs, 2, f]
        pb = torch.stack([kb[:, lo], kb[:, hi]], dim=2)
        m = _lstsq_map(pa, pb)  # [groups, pairs, 2, 2]
        del pa, pb
        a, b = (m[..., 0, 0] + m[..., 1, 1]) / 2, (m[..., 1, 0] - m[..., 0, 1]) / 2
        s2 = a * a + b * b
        live = s2 > 1e-30  # a zero pair: nothing to map (identity)
        s2 = torch.where(live, s2, torch.ones_like(s2))
        g = torch.arange(nkv)[:, None].expand(-1, lo.numel())
        i, j = lo[None, :].expand(nkv, -1), hi[None, :].expand(nkv, -1)
        one, zero = torch.ones_like(a), torch.zeros_like(a)
        for mat, (aa, bb) in ((key, (a, b)), (query, (a / s2, b / s2))):
            mat[g, i, i] = torch.where(live, aa, one)
            mat[g, i, j] = torch.where(live, -bb, zero)
            mat[g, j, i] = torch.where(live, bb, zero)
            mat[g, j, j] = torch.where(live, aa, one)
    if rotary < hd:
        n = _lstsq_map(ka[:, rotary:], kb[:, rotary:])
        key[:, rotary:, rotary:] = n
        query[:, rotary:, rotary:] = torch.linalg.pinv(n).transpose(1, 2)
    return LayerHeadMaps(slots, r, key, query)


def apply_layer_head_maps(name: str, t: torch.Tensor, maps: LayerHeadMaps, dims: HiddenDims) -> torch.Tensor:
    """``t`` (one of A's tensors, in B's labelling) with the layer's maps applied to the head slices it holds."""
    hd, nq, nkv, gs = dims.head_dim, dims.n_heads, dims.n_kv_heads, dims.group_size
    group = torch.arange(nq) // gs
    per_role = {"q": (nq, maps.query[group]), "k": (nkv, maps.key), "v": (nkv, maps.r),
                "o": (nq, torch.linalg.inv(maps.r).transpose(1, 2)[group])}
    out = t
    for role, (n, mats) in per_role.items():
        for slot in maps.slots[role]:
            if slot.name == name:
                out = write_block(out, slot, mats @ read_block(out, slot, n, hd))
    return out


def head_map_rotary(attn: AttentionSpec, config: Mapping[str, Any], dims: HiddenDims) -> int:
    """The rotary dims of each head (0 without RoPE)."""
    return attn.rotary_dims(dict(config), dims.head_dim)


# ----------------------------------------------------------------------------- glue for ``same``
def use_invariant_head_features(fa: Any, fb: Any, names: Collection[str], get_a: Callable[[str], torch.Tensor],
                                get_b: Callable[[str], torch.Tensor], spec: ArchSpec, hspec: HiddenSpec,
                                dims: HiddenDims, rotary: int, layer: int) -> bool:
    """Replace the head feature blocks of one layer's :class:`~gaugeport.estimate.hidden.UnitFeatures`
    (flattened Q/K/V/O blocks, which a map inside a head changes) by :func:`invariant_head_features`:
    ``qk`` as the query heads' input side, ``ov`` as their output side; key/value groups are then
    matched through the query heads they carry. False (nothing changed) where the table has no attention
    section or the layer lacks its tensors."""
    from gaugeport.estimate.hidden import unit_rows

    if hspec.attention is None or not fa.blocks:
        return False
    try:
        slots = attention_slots(names, spec, hspec, dims, layer)
    except ArchitectureError:
        return False
    for f, get in ((fa, get_a), (fb, get_b)):
        feats = invariant_head_features(get, slots, dims, rotary, hspec.attention.rope)
        for key in [k for k in f.blocks if k[0] in ("q_heads", "kv_heads")]:
            del f.blocks[key]
        f.blocks[("q_heads", "abs", "in")] = [unit_rows(feats["qk"])]
        f.blocks[("q_heads", "abs", "out")] = [unit_rows(feats["ov"])]
        f.cache.clear()
    return True
