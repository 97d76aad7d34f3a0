"""Estimate the hidden part of the full-network gauge: MLP units and attention heads, per layer.

Data-free (:func:`estimate_hidden`): once B's residual axes are brought into A's coordinates (a
signed permutation from ``align --method weights``, or an orthogonal matrix when the gains were
folded and the stream rotated), every tensor a hidden row of the architecture table names gives
each unit a feature vector (a gate/up row, a down column, a head's Q/K/V/O block). Units are
matched by a linear assignment on the mean cosine over those features: sign-sensitive features
(a gated block's up rows and down columns) count by ``|cos|`` and vote the unit's sign, the others
(gates, ungated units, heads) count by ``cos``. Heads are matched in two stages that respect
grouped-query attention: key/value groups first (their K/V blocks plus the best assignment of the
query heads inside each pair of groups), then query heads inside each matched group.

From activations (:func:`mlp_unit_moments` + :func:`match_mlp_units_from_moments`): the inputs of
the down projection (the MLP's hidden units) of A and B on the same tokens, matched by their
correlation (sign-marginalised where the block allows signs).

Confidence per unit: the matched score and its margin over the best alternative in its row or
column (:func:`~gaugeport.estimate.matching.match_margin`).

Held-out statistic (for ``same``): units are also matched on their *input* features alone (rows
that read the stream), and the matched pairs' *output* features (columns that write the stream),
never used for that matching, are scored against the same sum under a uniformly random pairing;
its exact permutation mean and variance (Hoeffding's combinatorial central limit theorem) give a
z-score per layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gaugeport.core.apply import transform_tensor
from gaugeport.core.archspec import ArchSpec, ParamRule
from gaugeport.core.fullgauge import FullGauge, LayerGauge
from gaugeport.core.gauge import SignedPermutation
from gaugeport.core.hidden import HiddenDims, HiddenRule, HiddenSpec
from gaugeport.estimate.lap import linear_assignment
from gaugeport.estimate.matching import match_margin

SKETCH_DIM = 512  # features wider than this are compared through a seeded Gaussian sketch
FIT_PAIRS = 1_000_000  # pairs the held-out regression is fitted on (all of them for n <= 1000)
RUNNER_UP_K = 8  # held-out test: a match competes with its unit's best input-side candidates


# ----------------------------------------------------------------------------- residual maps
@dataclass(frozen=True)
class OrthogonalGauge:
    """A dense residual map ``x_B = Q x_A`` (folded gains, rotated stream); ``Q`` orthogonal."""

    matrix: np.ndarray  # float64 d x d

    @property
    def d(self) -> int:
        return int(self.matrix.shape[0])


ResidualMap = SignedPermutation | OrthogonalGauge


def to_a_coordinates(name: str, tensor: torch.Tensor, rule: ParamRule, residual: ResidualMap) -> torch.Tensor:
    """Bring one of B's tensors into A's residual coordinates (B's hidden axes untouched)."""
    if isinstance(residual, SignedPermutation):
        return transform_tensor(name, tensor, rule, residual.inverse())
    out = tensor.double()
    q = torch.from_numpy(residual.matrix)
    for ax in rule.axes:
        if rule.mode != "signed":
            continue  # gains: uniform after folding, nothing to rotate
        out = torch.movedim(torch.movedim(out, ax, -1) @ q, -1, ax)  # t'[..k..] = sum_j t[..j..] Q[j, k]
    return out


# ----------------------------------------------------------------------------- unit features
@dataclass
class UnitFeatures:
    """One layer's feature blocks per unit kind: lists of ``[n_units, f]`` float32 arrays."""

    blocks: dict[tuple[str, str, str], list[np.ndarray]] = field(default_factory=dict)
    cache: dict[int, dict[tuple[str, ...], np.ndarray | None]] = field(default_factory=dict, repr=False)
    degenerate: dict[str, np.ndarray] = field(default_factory=dict)  # per kind: units with a constant feature row
    raw: list[tuple[str, np.ndarray]] = field(default_factory=list, repr=False)  # MLP blocks' key columns, by mode
    keep_raw: bool = False

    def row_hashes(self) -> tuple[list[bytes], np.ndarray | None]:
        """Per MLP unit, the bytes of its key entries (``HASH_COLS`` evenly spaced entries of each raw row,
        of ``|row|`` in sign-flippable blocks), and the sign of its first sign-flippable block's first
        non-zero key entry (0 when they are all zero): an exact copy's units have equal keys."""
        parts = []
        sign = None
        for mode, src in self.raw:
            flip = mode == "signed"
            parts.append(np.abs(src) if flip else src)
            if flip and sign is None:
                first = src[np.arange(src.shape[0]), (src != 0).argmax(axis=1)]
                sign = np.sign(first).astype(np.int8)
        if not parts:
            return [], sign
        keys = np.ascontiguousarray(np.hstack(parts), dtype=np.float32)
        return [r.tobytes() for r in keys], sign

    def add(self, kind: str, mode: str, side: str, arr: np.ndarray, raw: np.ndarray | None = None) -> None:
        """Add one feature block (rows: units). ``raw`` (the unsketched rows, default ``arr``) marks the
        units whose row is constant (zeroed, pruned or padded units): they carry no evidence."""
        self.blocks.setdefault((kind, mode, side), []).append(arr)
        src = arr if raw is None else raw
        if kind == "mlp" and self.keep_raw:  # hashed only if asked (an exact copy's match), dropped with the layer
            self.raw.append((mode, np.ascontiguousarray(src[:, hash_columns(src.shape[1])], dtype=np.float32)))
        if src.shape[1] <= 1:
            return  # a bias or one value per unit: constant by construction, says nothing about the unit
        const = src.max(axis=1) == src.min(axis=1)
        prev = self.degenerate.get(kind)
        self.degenerate[kind] = const if prev is None else (prev | const)


HASH_COLS = 64  # entries of each raw MLP row kept for the exact match's keys


def hash_columns(f: int) -> np.ndarray:
    """The ``HASH_COLS`` evenly spaced columns (all of them for ``f <= HASH_COLS``) an exact match keys on."""
    return np.arange(f) if f <= HASH_COLS else np.linspace(0, f - 1, HASH_COLS).round().astype(np.int64)


def unit_blocks(tensor: torch.Tensor, rule: HiddenRule, dims: HiddenDims) -> list[tuple[str, str, np.ndarray]]:
    """Split a tensor's hidden axis into its segments: ``(kind, mode, [n_units, f])`` per segment."""
    sizes = [s.size(dims) for s in rule.segments]
    out = []
    for seg, part in zip(rule.segments, torch.split(tensor, sizes, dim=rule.axis), strict=True):
        n = dims.mlp if seg.kind == "mlp" else dims.n_heads if seg.kind == "q_heads" else dims.n_kv_heads
        moved = torch.movedim(part, rule.axis, 0)
        out.append((seg.kind, seg.mode, moved.reshape(n, -1).float().numpy()))
    return out


def layer_features(names: list[str], get: Callable[[str], torch.Tensor], spec: ArchSpec, hspec: HiddenSpec,
                   dims: HiddenDims, keep_raw: bool = False,
                   skip: frozenset[str] = frozenset()) -> dict[int, UnitFeatures]:
    """Features of every layer's units, from the tensors ``get(name)`` returns (already in A's coordinates).
    ``keep_raw``: also keep the MLP blocks' key entries, for :func:`exact_unit_match` (one layer at a time);
    ``skip``: unit kinds left out (heads whose features the caller builds otherwise)."""
    feats: dict[int, UnitFeatures] = {}
    for name in sorted(names):
        hit = hspec.match(name)
        if hit is None:
            continue
        rule, layer = hit
        if all(seg.kind in skip for seg in rule.segments):
            continue
        role = spec.classify(name).role
        side = "out" if role in ("write", "write_bias") else "in"  # reads the stream (or a head-side bias/norm)
        for kind, mode, arr in unit_blocks(get(name), rule, dims):
            if kind not in skip:
                feats.setdefault(layer, UnitFeatures(keep_raw=keep_raw)).add(kind, mode, side, unit_rows(arr), arr)
    return feats


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows sketched to at most ``SKETCH_DIM`` columns (a seeded CountSketch: linear, the same for A
    and B, inner products kept in expectation) and scaled to unit norm, in float32."""
    x = x.astype(np.float32, copy=False)
    f = x.shape[1]
    if f > SKETCH_DIM:
        signs, buckets = _count_sketch(f)
        # column j adds signs[j] * x[:, j] to bucket buckets[j]: summed per (bucket, sign), then the negative
        # half subtracted, so no signed copy of x is made
        slot = buckets + SKETCH_DIM * (signs < 0)
        # a unit-major view of a [f, n_units] tensor (a down projection's columns) is summed from its stored
        # rows into bucket rows (dim 0), with no transposed copy; anything else along its columns (dim 1)
        transposed = not x.flags.c_contiguous and x.T.flags.c_contiguous
        src, dim = (torch.from_numpy(x.T), 0) if transposed else (torch.from_numpy(np.ascontiguousarray(x)), 1)
        shape = list(src.shape)
        shape[dim] = 2 * SKETCH_DIM
        halves = torch.zeros(shape, dtype=torch.float32)
        halves.index_add_(dim, slot, src)
        positive, negative = halves.split(SKETCH_DIM, dim=dim)
        x = (positive - negative).numpy()
        x = np.ascontiguousarray(x.T) if transposed else x
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


_SKETCHES: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def _count_sketch(f: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The CountSketch of width ``f``: a sign and a bucket per input column (seeded by ``f``)."""
    if f not in _SKETCHES:
        rng = np.random.default_rng(f)
        signs = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), f)
        buckets = rng.integers(0, SKETCH_DIM, f)
        _SKETCHES[f] = (torch.from_numpy(signs), torch.from_numpy(buckets))
    return _SKETCHES[f]


def _cosines(fa: UnitFeatures, fb: UnitFeatures, kind: str, mode: str, side: str,
             rows: np.ndarray | None = None) -> np.ndarray | None:
    """Mean over blocks of the cosine matrix between A's units (``rows`` of them, default all) and
    B's units (rows: A, columns: B); cached (one cache per row selection).

    With ``rows`` (the sampled held-out statistic), the products are in bfloat16 (float32 sums, each
    cosine rounded to 8 significant bits, about 3 decimal digits): 3.5x float32's speed on a CPU with
    bfloat16 dot products, and what the sample's statistic needs (candidate sets and ranks; the
    rounding is the same function of both sides' features, so the null is unchanged). Without
    ``rows`` (matching, confidences) they are float32."""
    key = (kind, mode, side, "all" if rows is None else "rows")
    cache = fa.cache.setdefault(id(fb), {})
    if key in cache:
        return cache[key]
    ba, bb = fa.blocks.get((kind, mode, side), []), fb.blocks.get((kind, mode, side), [])
    total = None
    for xa, xb in zip(ba, bb, strict=True):
        if rows is None:
            c = xa @ xb.T
        else:
            c = (torch.from_numpy(xa[rows]).bfloat16() @ torch.from_numpy(xb).bfloat16().T).float().numpy()
        total = c if total is None else total + c
    out = None if total is None else total / np.float32(len(ba))
    cache[key] = out  # type: ignore[index]
    return out


# ----------------------------------------------------------------------------- matching
@dataclass
class UnitMatch:
    gauge: SignedPermutation
    confidence: np.ndarray
    margin: np.ndarray | None  # None: not measured (an exact match by hashes)


def _match(score: np.ndarray, sign_source: np.ndarray | None) -> UnitMatch:
    cols = linear_assignment(score).cols
    rows = np.arange(score.shape[0])
    signs = np.ones(score.shape[0], dtype=np.int8) if sign_source is None else \
        np.where(sign_source[rows, cols] < 0, -1, 1).astype(np.int8)
    return UnitMatch(SignedPermutation(cols, signs), score[rows, cols].astype(np.float64),
                     match_margin(score, cols))


def _mlp_scores(fa: UnitFeatures, fb: UnitFeatures, sides: tuple[str, ...],
                rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Score (maximised) and signed source for MLP units from the feature blocks on ``sides``."""
    absolute = [c for s in sides if (c := _cosines(fa, fb, "mlp", "abs", s, rows)) is not None]
    signed = [c for s in sides if (c := _cosines(fa, fb, "mlp", "signed", s, rows)) is not None]
    n = len(absolute) + len(signed)
    if not n:
        return np.asarray(0.0), None
    # in place, in the order of the plain sums (abs blocks, then |signed|): no n x n temporary per term,
    # and the cached cosine matrices are never written to
    sgn = signed[0] if signed else None
    if len(signed) > 1:
        sgn = signed[0].copy()
        for c in signed[1:]:
            sgn += c
    score = absolute[0].copy() if absolute else np.abs(sgn)
    for c in absolute[1:]:
        score += c
    if absolute and sgn is not None:
        score += np.abs(sgn)
    score /= np.float32(n) if score.dtype == np.float32 else n
    return score, sgn


def _mlp_pair_scores(fa: UnitFeatures, fb: UnitFeatures, sides: tuple[str, ...], i: np.ndarray,
                     j: np.ndarray) -> np.ndarray:
    """:func:`_mlp_scores` at the pairs ``(i[t], j[t])`` only (A's unit, B's unit), in float32: the same
    mean of the blocks' cosines, sign-carrying blocks by ``|sum|``."""
    plain, signed, n = np.zeros(i.size, np.float32), np.zeros(i.size, np.float32), 0
    for (kind, mode, side), ba in fa.blocks.items():
        if kind != "mlp" or side not in sides or not fb.blocks.get((kind, mode, side)):
            continue
        total = plain if mode == "abs" else signed
        for xa, xb in zip(ba, fb.blocks[kind, mode, side], strict=True):
            total += np.einsum("tf,tf->t", xa[i], xb[j]) / np.float32(len(ba))
        n += 1
    return (plain + np.abs(signed)) / max(n, 1)


def match_heads(fa: UnitFeatures, fb: UnitFeatures, dims: HiddenDims) -> tuple[SignedPermutation, np.ndarray]:
    """Query-head permutation respecting key/value groups, and each head's matched score."""
    def mean_cos(kind: str) -> np.ndarray | None:
        cs = [c for s in ("in", "out") if (c := _cosines(fa, fb, kind, "abs", s)) is not None]
        return sum(cs) / len(cs) if cs else None

    sq = mean_cos("q_heads")
    skv = mean_cos("kv_heads")
    h, k, gs = dims.n_heads, dims.n_kv_heads, dims.group_size
    if sq is None:
        sq = np.zeros((h, h))
    group_score = np.zeros((k, k)) if skv is None else skv.copy()
    inner: dict[tuple[int, int], np.ndarray] = {}
    for g in range(k):
        for t in range(k):
            block = sq[g * gs:(g + 1) * gs, t * gs:(t + 1) * gs]
            cols = linear_assignment(block).cols
            inner[g, t] = cols
            group_score[g, t] += block[np.arange(gs), cols].sum() / gs
    groups = linear_assignment(group_score).cols
    perm = np.concatenate([groups[g] * gs + inner[g, groups[g]] for g in range(k)])
    return SignedPermutation(perm, np.ones(h, dtype=np.int8)), sq[np.arange(h), perm]


@dataclass
class HiddenEstimate:
    """Estimated hidden gauges with per-unit confidence and per-layer held-out statistics."""

    layers: list[LayerGauge]
    mlp_confidence: list[np.ndarray]
    mlp_margin: list[np.ndarray]
    head_confidence: list[np.ndarray]
    held_out: list[dict[str, Any]]

    def full_gauge(self, residual: SignedPermutation) -> FullGauge:
        return FullGauge(residual, tuple(self.layers))


def estimate_hidden(fa: dict[int, UnitFeatures], fb: dict[int, UnitFeatures], dims: HiddenDims,
                    mlp_signs: bool) -> HiddenEstimate:
    """Match every layer's MLP units and heads (features of B already in A's residual coordinates)."""
    layers, conf, margin, hconf, held = [], [], [], [], []
    for layer in range(dims.n_layers):
        a, b = fa.get(layer, UnitFeatures()), fb.get(layer, UnitFeatures())
        lg, c, m, hc = match_layer(a, b, dims, mlp_signs)
        layers.append(lg)
        conf.append(c)
        margin.append(m)
        hconf.append(hc)
        held.append(held_out_statistic(a, b, mlp_signs))
        a.cache.clear()  # n x n cosine matrices: free them before the next layer
    return HiddenEstimate(layers, conf, margin, hconf, held)


def match_layer(a: UnitFeatures, b: UnitFeatures, dims: HiddenDims, mlp_signs: bool,
                exhaustive: bool = True) -> tuple[LayerGauge, np.ndarray, np.ndarray | None, np.ndarray]:
    """One layer's MLP units and heads: the gauge, the MLP units' matched scores and margins, and the
    heads' matched scores.

    ``exhaustive``: the MLP units by a linear assignment on the full ``n x n`` score. Otherwise (wide
    MLPs of a related pair, see ``same``): an exact copy's units by the hashes of their raw rows
    (:func:`exact_unit_match`; margins then None), else among each unit's ``CANDIDATES`` nearest
    candidates (:func:`candidate_unit_match`)."""
    if exhaustive:
        score, sgn = _mlp_scores(a, b, ("in", "out"))
        m = _match(score, sgn if mlp_signs else None)
        del score, sgn
    else:
        m = exact_unit_match(a, b, mlp_signs) or candidate_unit_match(a, b, mlp_signs)
    heads, hc = match_heads(a, b, dims)
    return LayerGauge(m.gauge, heads, dims.n_kv_heads), m.confidence, m.margin, hc


def exact_unit_match(a: UnitFeatures, b: UnitFeatures, mlp_signs: bool) -> UnitMatch | None:
    """Match MLP units whose raw rows are equal (up to the unit's sign where the block allows one) on
    ``HASH_COLS`` evenly spaced entries of each row, by hashing: an exact copy under a gauge, at
    ``O(n)`` per block. None unless every unit of A has exactly one unit of B with its keys, one to one
    (duplicated units, zeroed ones, any edit: not exact), or a unit's sign is undecided (its keys all
    zero). What the keys claim, the identical check in ``same`` then verifies entry by entry."""
    if not a.raw or [m for m, _ in a.raw] != [m for m, _ in b.raw] or \
            [x.shape for _, x in a.raw] != [x.shape for _, x in b.raw]:
        return None
    (keys_a, sign_a), (keys_b, sign_b) = a.row_hashes(), b.row_hashes()
    if mlp_signs and sign_a is not None and sign_b is not None and not (sign_a.all() and sign_b.all()):
        return None
    where = {k: j for j, k in enumerate(keys_b)}
    if len(where) != len(keys_b) or len(set(keys_a)) != len(keys_a):
        return None
    cols = np.array([where.get(k, -1) for k in keys_a], dtype=np.int64)
    if (cols < 0).any():
        return None
    signs = np.ones(cols.size, dtype=np.int8)
    if mlp_signs and sign_a is not None and sign_b is not None:
        signs = (sign_a * sign_b[cols]).astype(np.int8)
    return UnitMatch(SignedPermutation(cols, signs), np.ones(cols.size), None)


CANDIDATES = 8  # a unit's nearest candidates (by a projected score) among which the fast match chooses
PROJECTION_DIM = 128  # width of the seeded Gaussian projection the candidates are found with


def candidate_unit_match(a: UnitFeatures, b: UnitFeatures, mlp_signs: bool, k: int = CANDIDATES,
                         chunk: int = 1024) -> UnitMatch:
    """MLP units matched among each unit's ``k`` nearest candidates, without an ``n x n`` score of full width.

    The score is the one :func:`match_layer` assigns on (mean cosine per feature block; sign-flippable
    blocks by ``|sum|``). Candidates: per block mode, the units' feature blocks concatenated and
    projected to ``PROJECTION_DIM`` columns (seeded Gaussian, inner products kept in expectation);
    each unit's ``k`` best columns of the projected score (row chunks, nothing ``n x n`` kept). Each
    candidate is then scored exactly, and the units are assigned on those ``n k`` scores: each unit's
    best candidate when they are all different, else a sparse minimum-weight matching over the
    candidates, else (no perfect matching among them) the exhaustive assignment. Margin: the matched
    score minus the unit's best other candidate."""
    keys = [key for key in a.blocks if key[0] == "mlp" and b.blocks.get(key)]
    n_keys = len(keys)
    na, nb = a.blocks[keys[0]][0].shape[0], b.blocks[keys[0]][0].shape[0]
    k = min(k, nb)
    proj: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for mode in ("abs", "signed"):
        parts = [(a.blocks[key][i] / len(a.blocks[key]), b.blocks[key][i]) for key in keys if key[1] == mode
                 for i in range(len(a.blocks[key]))]
        if not parts:
            continue
        width = sum(pa.shape[1] for pa, _ in parts)
        g = np.random.default_rng(width).standard_normal((width, PROJECTION_DIM)).astype(np.float32)
        g /= np.float32(np.sqrt(PROJECTION_DIM))
        pa = np.hstack([x for x, _ in parts]) @ g
        pb = np.hstack([y for _, y in parts]) @ g
        proj[mode] = (pa, pb)
    cand = np.empty((na, k), dtype=np.int64)
    tp = {mode: (torch.from_numpy(pa), torch.from_numpy(pb)) for mode, (pa, pb) in proj.items()}
    for s in range(0, na, chunk):
        approx = torch.zeros((min(chunk, na - s), nb), dtype=torch.float32)
        if "abs" in tp:
            approx += tp["abs"][0][s:s + chunk] @ tp["abs"][1].T
        if "signed" in tp:
            approx += (tp["signed"][0][s:s + chunk] @ tp["signed"][1].T).abs_()
        cand[s:s + chunk] = torch.topk(approx, k, dim=1, sorted=False).indices.numpy()
    del proj, tp
    # exact scores of the candidates
    sums = {"abs": np.zeros((na, k)), "signed": np.zeros((na, k))}
    for key in keys:
        for xa, xb in zip(a.blocks[key], b.blocks[key], strict=True):
            dots = np.einsum("if,ikf->ik", xa, xb[cand], optimize=True) / len(a.blocks[key])
            sums[key[1]] += dots
    score = (sums["abs"] + np.abs(sums["signed"])) / max(n_keys, 1)
    sgn = sums["signed"]
    order = np.argsort(-score, axis=1, kind="stable")
    best = np.take_along_axis(cand, order[:, :1], axis=1)[:, 0]
    if np.unique(best).size == na:
        pick = order[:, 0]
    else:
        pick = _sparse_assignment(score, cand, nb)
        if pick is None:
            full, full_sgn = _mlp_scores(a, b, ("in", "out"))
            return _match(full, full_sgn if mlp_signs else None)
    rows = np.arange(na)
    cols = cand[rows, pick]
    matched = score[rows, pick]
    others = np.where(np.arange(k)[None, :] == pick[:, None], -np.inf, score)
    margin = matched - others.max(axis=1) if k > 1 else matched
    signs = np.ones(na, dtype=np.int8) if not mlp_signs else np.where(sgn[rows, pick] < 0, -1, 1).astype(np.int8)
    return UnitMatch(SignedPermutation(cols, signs), matched.astype(np.float64), margin.astype(np.float64))


def _sparse_assignment(score: np.ndarray, cand: np.ndarray, nb: int) -> np.ndarray | None:
    """Per row, which of its candidates a maximum-score perfect matching over the candidate edges picks;
    None when the candidates admit no perfect matching."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    na, k = cand.shape
    weight = (score.max() + 1.0) - score  # positive: explicit zeros would be taken for missing edges
    graph = sp.csr_matrix((weight.reshape(-1), cand.reshape(-1), np.arange(0, na * k + 1, k)), shape=(na, nb))
    try:
        _, cols = min_weight_full_bipartite_matching(graph)
    except ValueError:
        return None
    return np.argmax(cand == cols[:, None], axis=1)


def held_out_statistic(a: UnitFeatures, b: UnitFeatures, mlp_signs: bool, condition: bool = True,
                       sample: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Match MLP units on input features only; test the matches on output features.

    ``M[i, j]``: the output-side cosine of A's unit ``i`` and B's unit ``j`` (times the sign the input
    side chose for that pair). With ``condition``, ``M`` is first residualised on the input-side
    cosines (least squares over the unmatched pairs), removing the rise that shared, data-induced
    structure gives both in unrelated models. Each unit's match then competes with the unit's
    ``k`` best input-side candidates (the match is always one of them: :func:`input_candidates`).
    Its rank by ``M`` among them is uniform on ``1..k`` under the null; ties get the mid-rank
    (an equal score counts one half), so ``z = sum((k + 1) / 2 - rank) / sqrt(n (k^2 - 1) / 12)``.
    With ties the variance used is the no-ties one, an upper bound, so ``z`` errs towards zero.

    Units whose feature rows are constant (zeroed, pruned, padded) carry no evidence: A's such units
    leave ``n``, together with those matched to such a unit of B, and B's never enter a candidate set.

    ``sample``: when A has more live units than this, a seeded sample of that many of A's units is
    tested, each matched to its nearest neighbour in B on the input side (no assignment over the
    full width: ``sample x n`` cosines instead of ``n x n``). A nearest-neighbour match is always its
    unit's first input-side candidate, and what the regression leaves of the rise of ``M`` with input
    rank lifts it among the next ``k - 1`` even in unrelated models. So on the sample each unit's match
    is compared with how its second input-side candidate stands among the ``k`` after it (candidates
    ``2..k+1``, same residuals), which carries that rise but no descent:
    ``z = sum(rank_2 - rank_1) / sqrt(n k^2 / 6)``, where ``rank_1`` is the match's mid-rank among
    candidates ``1..k`` and ``rank_2`` the second candidate's among ``2..k+1``. Under exchangeable
    scores each rank has variance ``(k^2 - 1) / 12`` and their covariance is ``-1 / 12``, so the
    difference has variance ``k^2 / 6``. ``z_uncorrected`` keeps the plain statistic on the sample (biased
    upwards under the null; ``same`` only uses it to decide which layers to match early). On the sample the
    cosine products are in bfloat16 (:func:`_cosines`): candidates, ranks and the regression use values
    rounded to about 3 significant digits, the same rounding for every candidate, so the null is unchanged;
    ``matched_in_score`` (the mean input score of the matches) is recomputed in float32.
    """
    n_units = _n_units(a)
    if n_units == 0:
        return {"z": 0.0, "n": 0, "matched_out_cos": None}
    dead_a = a.degenerate.get("mlp", np.zeros(n_units, dtype=bool))
    sel: np.ndarray | None = None
    if sample is not None and int((~dead_a).sum()) > sample:
        live = np.flatnonzero(~dead_a)
        sel = np.sort(np.random.default_rng(seed).choice(live, sample, replace=False))
    s_in, sgn_in = _mlp_scores(a, b, ("in",), sel)
    predictors = [c for c in (_cosines(a, b, "mlp", "abs", "in", sel), _cosines(a, b, "mlp", "signed", "in", sel))
                  if c is not None]
    s_out_abs = _cosines(a, b, "mlp", "abs", "out", sel)
    s_out_sgn = _cosines(a, b, "mlp", "signed", "out", sel)
    if s_out_abs is None and s_out_sgn is None:
        return {"z": 0.0, "n": 0, "matched_out_cos": None}
    # M = (abs part) + (signed part, flipped where the input side chose -1); built in place, read-only after
    m_mat: np.ndarray | None = None
    if s_out_sgn is not None:
        m_mat = s_out_sgn
        if mlp_signs and sgn_in is not None:
            m_mat = s_out_sgn.copy()
            np.negative(m_mat, out=m_mat, where=sgn_in < 0)
    if s_out_abs is not None:
        if m_mat is None:
            m_mat = s_out_abs
        elif m_mat is s_out_sgn:  # a cached matrix: not written to
            m_mat = s_out_sgn + s_out_abs
        else:
            m_mat += s_out_abs
    assert m_mat is not None
    n_b = m_mat.shape[1]
    dead_b = b.degenerate.get("mlp", np.zeros(n_b, dtype=bool))
    if sel is None:
        cols = _assign_rows(s_in)  # rectangular (fewer rows: a pruned model's units) for lineage
        row_dead = dead_a
    else:
        cols = (np.where(dead_b[None, :], -np.inf, s_in) if dead_b.any() else s_in).argmax(axis=1)  # nearest
        row_dead = dead_a[sel]
    n_all = m_mat.shape[0]
    rows = np.flatnonzero(~row_dead & ~dead_b[cols])  # units that carry evidence, matched to one that does
    n = int(rows.size)
    k = min(RUNNER_UP_K, int((~dead_b).sum()))
    base = {"n": n, "k": int(k), "dropped_units": int(n_all - n), "sampled": sel is not None,
            "units": int(n_units)}
    if n == 0 or k < 2:
        return {"z": 0.0, **base, "matched_out_cos": None}
    raw_matched = float(m_mat[rows, cols[rows]].mean())
    null_mean = float((m_mat[np.ix_(~row_dead, ~dead_b)] if row_dead.any() or dead_b.any() else m_mat).mean())
    cand = input_candidates(s_in, cols, k, rows, dead_b)
    out_scores = m_mat[rows[:, None], cand].astype(np.float64)
    matched_out = m_mat[rows, cols[rows]].astype(np.float64)
    shifted = sel is not None and k + 1 <= int((~dead_b).sum())
    if shifted:  # the second input-side candidate and the k after it (ranks 2..k+1), in input order
        ranked = input_order(s_in, k + 1, rows, dead_b)
        second_scores = m_mat[rows[:, None], ranked[:, 1:]].astype(np.float64)
        second_out = second_scores[:, 0].copy()
    if condition:
        # remove what input-side similarity alone predicts about the output side, fitted by least squares on
        # (up to FIT_PAIRS) unmatched pairs of live units: shared, data-induced structure makes both rise
        # together in unrelated models
        rng = np.random.default_rng(0)
        live_b = np.flatnonzero(~dead_b)
        if n * live_b.size <= FIT_PAIRS:
            fi, fj = (x.reshape(-1) for x in np.meshgrid(rows, live_b, indexing="ij"))
        else:
            fi, fj = rows[rng.integers(0, n, FIT_PAIRS)], live_b[rng.integers(0, live_b.size, FIT_PAIRS)]
        keep = fj != cols[fi]
        fi, fj = fi[keep], fj[keep]

        def design(i: np.ndarray, j: np.ndarray) -> np.ndarray:
            cs = [np.ones(i.shape, dtype=np.float64)]
            for c in predictors:
                v = c[i, j].astype(np.float64)
                cs += [v, np.abs(v)]
            return np.stack(cs, axis=-1)

        coef, *_ = np.linalg.lstsq(design(fi, fj), m_mat[fi, fj].astype(np.float64), rcond=None)
        out_scores = out_scores - design(np.repeat(rows[:, None], k, axis=1), cand) @ coef
        matched_out = matched_out - design(rows, cols[rows]) @ coef
        if shifted:
            second_scores = second_scores - design(np.repeat(rows[:, None], k, axis=1), ranked[:, 1:]) @ coef
            second_out = second_scores[:, 0].copy()
    rank = mid_rank(out_scores, matched_out)
    z_plain = float(((k + 1) / 2 - rank).sum()) / np.sqrt(n * (k * k - 1) / 12.0)
    z = z_plain
    if shifted:
        z = float((mid_rank(second_scores, second_out) - rank).sum()) / np.sqrt(n * k * k / 6.0)
    top1 = float(np.mean(rank == 1))
    return {"z": float(z), **base, "second_candidate_reference": shifted, "z_uncorrected": z_plain,
            "top1_fraction": top1,
            "matched_out_cos": raw_matched, "null_mean_cos": null_mean,
            # exact (float32) where the sample's products were rounded: ``same`` screens copies on it
            "matched_in_score": float((s_in[rows, cols[rows]] if sel is None else
                                       _mlp_pair_scores(a, b, ("in",), sel[rows], cols[rows])).mean())}


def _n_units(f: UnitFeatures) -> int:
    for (kind, _, _), arrs in f.blocks.items():
        if kind == "mlp" and arrs:
            return int(arrs[0].shape[0])
    return 0


def _top_columns(s_in: np.ndarray, k: int, rows: np.ndarray, dead_b: np.ndarray | None,
                 ordered: bool) -> np.ndarray:
    """For each of ``rows``, the ``k`` best columns of ``s_in`` (``dead_b`` columns excluded), in decreasing
    order when ``ordered``; in row chunks, so no ``n x n`` index array is made."""
    out = []
    for i in range(0, rows.size, 1024):
        block = s_in[rows[i:i + 1024]]  # a copy (fancy indexing): dead columns can be masked in it
        if dead_b is not None and dead_b.any():
            block[:, dead_b] = -np.inf
        # torch's top-k: 50x numpy's argpartition on these rows (0.014 s against 0.7 s for 2048 x 11008)
        top = torch.topk(torch.from_numpy(block), k, dim=1, sorted=ordered).indices.numpy()
        out.append(top.astype(np.int64, copy=False))
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)


def input_candidates(s_in: np.ndarray, cols: np.ndarray, k: int, rows: np.ndarray,
                     dead_b: np.ndarray | None = None) -> np.ndarray:
    """For each of ``rows``, its ``k`` best columns of ``s_in`` (B's units with constant features
    excluded), the matched column ``cols[row]`` always among them (it replaces the last when absent)."""
    out = _top_columns(s_in, k, rows, dead_b, ordered=False)
    matched = cols[rows]
    has = (out == matched[:, None]).any(axis=1)
    out[~has, -1] = matched[~has]
    return out


def input_order(s_in: np.ndarray, k: int, rows: np.ndarray, dead_b: np.ndarray | None = None) -> np.ndarray:
    """For each of ``rows``, its ``k`` best columns of ``s_in`` in decreasing order (B's units with constant
    features excluded): column 0 is the row's nearest neighbour."""
    return _top_columns(s_in, k, rows, dead_b, ordered=True)


def mid_rank(scores: np.ndarray, own: np.ndarray, atol: float = 1e-12) -> np.ndarray:
    """Rank of ``own[i]`` among the row ``scores[i]`` (which contains it): 1 = the highest; scores within
    ``atol`` of it are ties and count one half each (the mid-rank), so ties favour neither side."""
    above = (scores > own[:, None] + atol).sum(axis=1)
    tied = (np.abs(scores - own[:, None]) <= atol).sum(axis=1) - 1  # the match itself is in its row
    return 1.0 + above + 0.5 * np.maximum(tied, 0)


def _assign_rows(score: np.ndarray) -> np.ndarray:
    """Each row's column in a maximum-score assignment (a square matrix: the project's LAP; a wide one,
    fewer rows than columns: SciPy's rectangular solver, every row matched to a distinct column)."""
    if score.shape[0] == score.shape[1]:
        return linear_assignment(score).cols
    from scipy.optimize import linear_sum_assignment

    if score.shape[0] > score.shape[1]:
        raise ValueError(f"held-out matching needs rows <= columns, got {score.shape}")
    r, c = linear_sum_assignment(score.astype(np.float64), maximize=True)
    out = np.empty(score.shape[0], dtype=np.int64)
    out[r] = c
    return out


# ----------------------------------------------------------------------------- from activations
@torch.no_grad()
def mlp_unit_moments(model_a: torch.nn.Module, model_b: torch.nn.Module, batches: list[torch.Tensor],
                     down_name: str = "down_proj", module_paths: list[str] | None = None) -> list[np.ndarray]:
    """Per layer, the cross-correlation between A's and B's MLP hidden units (inputs of the down projection).

    ``module_paths``: the down projections' exact module paths, one per layer (both models share them);
    without it, every module whose name ends in ``down_name``.
    """
    acts: dict[str, dict[int, list[torch.Tensor]]] = {"a": {}, "b": {}}
    hooks = []
    for tag, model in (("a", model_a), ("b", model_b)):
        if module_paths is not None:
            mods = [(p, model.get_submodule(p)) for p in module_paths]
        else:
            mods = [(n, m) for n, m in model.named_modules() if n.endswith(down_name)]
        for layer, (_, mod) in enumerate(mods):
            def hook(_m: Any, inp: tuple[torch.Tensor, ...], _o: Any, tag: str = tag, layer: int = layer) -> None:
                acts[tag].setdefault(layer, []).append(inp[0].reshape(-1, inp[0].shape[-1]).double())
            hooks.append(mod.register_forward_hook(hook))
    try:
        for ids in batches:
            model_a(input_ids=ids)
            model_b(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    out = []
    for layer in sorted(acts["a"]):
        xa, xb = torch.cat(acts["a"][layer]), torch.cat(acts["b"][layer])
        xa = (xa - xa.mean(0)) / xa.std(0, correction=0).clamp_min(1e-12)
        xb = (xb - xb.mean(0)) / xb.std(0, correction=0).clamp_min(1e-12)
        out.append((xa.T @ xb / xa.shape[0]).numpy())
    return out


def match_mlp_units_from_moments(corr: np.ndarray, signed: bool) -> UnitMatch:
    """Match units on their activation correlation (``|corr|`` and its sign where signs are allowed)."""
    return _match(np.abs(corr) if signed else corr, corr if signed else None)


STREAM_CHUNK = 1024  # tokens per float32 centred product folded into a layer's float64 cross-moments


@torch.no_grad()
def streamed_mlp_moments(path_a: Any, path_b: Any, batches: list[Any],
                         module_paths: list[str] | Callable[[torch.nn.Module], list[str]],
                         on_layer: Callable[[int, Any], None], *, chunk: int = STREAM_CHUNK) -> int:
    """Per layer, the cross-moments of A's and B's MLP hidden units (the inputs of the down projections at
    ``module_paths``, or at the paths it returns for A's model), handed to ``on_layer(layer, moments)``
    and dropped before the next layer.

    Both checkpoints run layer-streamed (:func:`gaugeport.core.stream.load_streamed`: their own
    ``transformers`` blocks, one block's weights in memory at a time), each in its own thread, on all
    the tokens of ``batches`` in one forward call (padded to one length; padding and the positions a
    batch's ``token_mask`` leaves out are not counted). The two forwards meet at each down projection:
    when both have reached layer ``i``, its activations are folded into a
    :class:`~gaugeport.estimate.moments.CrossMoments` (centred ``chunk``-token float32 products,
    float64 accumulation) and ``on_layer`` runs, then both continue. So the memory is one block of
    each model, one layer's activations and one ``n x n`` accumulator, whatever the depth; it grows
    with the number of tokens, not with the number of layers. Returns the number of tokens counted.
    """
    import threading

    from gaugeport.core.errors import ArchitectureError
    from gaugeport.core.stream import load_streamed
    from gaugeport.estimate.activations import _forward_kwargs
    from gaugeport.estimate.data import Batch
    from gaugeport.estimate.moments import CrossMoments

    items = [Batch.of(b) for b in batches]
    t = max(int(b.input_ids.shape[1]) for b in items)

    def pad(x: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, t - x.shape[1]), value=value)

    ids = torch.cat([pad(b.input_ids, 0) for b in items])
    mask = torch.cat([pad(b.attention_mask.long(), 0) for b in items])
    keep = torch.cat([pad(b.token_mask.long(), 0) for b in items]).bool().reshape(-1)
    models = {"a": load_streamed(path_a), "b": load_streamed(path_b)}
    if callable(module_paths):
        module_paths = module_paths(models["a"])
    slots: dict[str, tuple[int, torch.Tensor]] = {}

    def meet() -> None:  # runs once per layer, in whichever thread reaches the barrier last
        (la, xa), (lb, xb) = slots.pop("a"), slots.pop("b")
        if la != lb:
            raise RuntimeError(f"the two forwards reached different layers ({la} vs {lb})")
        cm = CrossMoments(xa.shape[1], xb.shape[1], batch_dtype=torch.float32)
        for s in range(0, xa.shape[0], chunk):
            cm.update(xa[s:s + chunk], xb[s:s + chunk])
        del xa, xb
        on_layer(la, cm)

    cond = threading.Condition()
    met = [0]  # layers met so far
    done: set[str] = set()
    errors: list[BaseException] = []

    class _Stopped(Exception):  # the other side failed: this forward stops too
        pass

    def arrive(tag: str, layer: int, x: torch.Tensor) -> None:
        other = "b" if tag == "a" else "a"
        with cond:
            if errors:
                raise _Stopped
            slots[tag] = (layer, x)
            if other in slots:  # both at this layer: fold it, then release the other side
                try:
                    meet()
                except BaseException as exc:
                    errors.append(exc)
                    raise
                finally:
                    met[0] += 1
                    cond.notify_all()
                return
            seen = met[0]
            cond.wait_for(lambda: met[0] != seen or bool(errors) or other in done)
            if errors:
                raise _Stopped
            if met[0] == seen:
                raise ArchitectureError("A and B reached different numbers of MLP down projections in one "
                                        "forward pass")

    def run(tag: str) -> None:
        model = models[tag]
        hooks = []
        for layer, p in enumerate(module_paths):
            def hook(_m: Any, inp: tuple[torch.Tensor, ...], layer: int = layer) -> None:
                x = inp[0].reshape(-1, inp[0].shape[-1])
                arrive(tag, layer, x[keep].float())
            hooks.append(model.get_submodule(p).register_forward_pre_hook(hook))
        try:
            model(**_forward_kwargs(model, ids, mask))
        except BaseException as exc:
            with cond:
                if not isinstance(exc, _Stopped) and exc not in errors:
                    errors.append(exc)
                cond.notify_all()
        finally:
            for h in hooks:
                h.remove()
            with cond:
                done.add(tag)
                cond.notify_all()

    threads = [threading.Thread(target=run, args=(tag,), name=f"same-data-{tag}") for tag in ("a", "b")]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return int(keep.sum())
