"""``same A B``: is B a gauged copy of A, derived from A, or trained independently?

Only the tensors both checkpoints hold are compared; the others (a dropped pooler, a buffer one
save kept) are listed in the report.

0. **Exact copies first** (data-free, both sides holding the same tensors): a pair whose norm gains and
   first layer could be a signed permutation of each other (:func:`_copy_screen`: sorted gains bit for
   bit, float64 sums of squares) has both canonical fingerprints taken; equal fingerprints mean the
   canonical weights are bit-identical, so B is A under the gauge composed from the two canonical
   gauges, exactly. The logits are compared as in 3., the p-value is the statistic of 4. on the first
   layer with MLP units, and ``identical`` is returned (:func:`_exact_copy`). Any other pair, or a
   failed logits check, goes on to 1.

1. **Residual map.** RMSNorm families whose table names gain folds: every norm gain is folded into
   its readers on both sides, lazily, one tensor at a time (a gain whose reader is absent, the final
   norm of a tied head, stays as stored). What is left is an orthogonal map, chosen by fit on the
   token embedding (:func:`_residual_by_fit`): a signed permutation when one explains the
   embedding, a rotation (orthogonal Procrustes) when only a rotation does, and the signed
   permutation again when neither does (an unrelated pair). So folding, rotating and then
   re-introducing random positive gains with compensated readers is undone like any signed
   permutation. LayerNorm families: the data-free signed permutation of ``align --method weights``
   (or, with ``--data``, the activation estimate).
2. **Per layer, then freed.** With B's residual axes in A's coordinates, each layer's unit features
   are read, scored and dropped before the next layer (:mod:`gaugeport.estimate.hidden`). The
   held-out statistic (4.) is computed first. MLPs wider than ``2 * SAMPLE_UNITS`` are tested on a
   seeded sample of ``SAMPLE_UNITS`` units, each matched to its nearest input-side neighbour, so an
   independent pair needs no assignment over the full width; their MLP units and heads are then
   matched (the hidden gauge) only while the pair can still be identical: the layer is related
   (``z > ESCALATE_Z``), every layer before it was a copy, and its sampled units' inputs are a copy's
   (:func:`_may_be_copy`). A derived pair's gauge is not recovered unless asked: ``full_gauge``
   (``--save-gauge``) matches every layer, on the full statistic. Narrower MLPs: every layer matched.
3. **Identical?** Once every layer is matched, every tensor of B is compared with the recovered gauge
   applied to A (MLP units up to a positive scale each, since a unit's up row and down column may be
   rescaled against each other; attention tensors after the maps inside heads, fitted per layer from
   A's prediction to B, :func:`gaugeport.provenance.heads.fit_layer_head_maps`); when all agree (relative
   ``tol``) the two models' logits are compared on probe tokens, layer-streamed: both pass means
   ``identical``. Where the table names the attention tensors, heads are matched on features that the
   maps inside a head (value/output, query/key commuting with RoPE) leave unchanged
   (:func:`gaugeport.provenance.heads.invariant_head_features`).
4. **p-value** under the null of independent training: per layer, MLP units are matched on their
   input weights only and the matched pairs' output weights are ranked (mid-ranks for ties) among
   the unit's best input-side candidates after regressing out input similarity (see
   :func:`~gaugeport.estimate.hidden.held_out_statistic`); the per-layer z-scores are combined by
   Stouffer's method (sum over the L layers tested, divided by sqrt(L)). ``derived`` when
   ``p < alpha``, else ``independent``. A layer's status: ``identical`` when its weights match,
   ``derived`` when its own p-value is below ``alpha / L`` (Bonferroni over the layers), else
   ``independent``. A pair the statistic calls ``independent`` is still ``derived`` when A and B store a
   non-constant weight matrix bit for bit (:func:`shared_weight_matrices`; a note names them): an edit
   that scrambles the input-side features, such as resetting every norm gain, keeps the rest of A.

The null model is explicit: under independent training, among a unit's best input-side candidates
in B, the one the matching picks is no more similar on the output side than the others, once
what input similarity alone predicts is removed. No p-value robust to the full gauge can be exact
by symmetry alone (any gauge-invariant statistic is blind to the relabelling a permutation test
draws), so this one is approximate; ``benchmarks/bench_same_calibration.py`` checks its
calibration on independently trained pairs.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy import stats

from gaugeport.core.allocator import StepTrim, freed_memory_kept, release_freed_memory
from gaugeport.core.archspec import ArchSpec
from gaugeport.core.checkpoint import Checkpoint
from gaugeport.core.errors import ArchitectureError, CheckpointError, GaugeError, GaugeportError
from gaugeport.core.fullgauge import FullGauge, transform_hidden
from gaugeport.core.gauge import SignedPermutation
from gaugeport.core.hidden import HiddenDims, HiddenSpec, get_hidden_spec
from gaugeport.estimate.hidden import (
    CANDIDATES,
    HiddenEstimate,
    OrthogonalGauge,
    ResidualMap,
    UnitFeatures,
    held_out_statistic,
    layer_features,
    match_layer,
    match_mlp_units_from_moments,
    streamed_mlp_moments,
    to_a_coordinates,
)
from gaugeport.estimate.lap import linear_assignment
from gaugeport.provenance.heads import (
    LayerHeadMaps,
    apply_layer_head_maps,
    attention_slots,
    fit_layer_head_maps,
    use_invariant_head_features,
)

if TYPE_CHECKING:
    from gaugeport.provenance.lineage import LineageResult

VERDICTS = ("identical", "derived", "independent")
DEFAULT_ALPHA = 1e-3
DEFAULT_TOL = 1e-5  # relative weight / logit difference for "identical"
_LAYER_RE = re.compile(r"\.(\d+)\.")


@dataclass
class SameResult:
    verdict: str
    p_value: float
    log10_p: float
    alpha: float
    layers: list[dict[str, Any]]
    residual: dict[str, Any]
    identical_check: dict[str, Any]
    gauge: FullGauge | None = None  # signed-permutation residual
    rotation: np.ndarray | None = None  # orthogonal residual (folded gains)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    one_sided: dict[str, list[str]] = field(default_factory=dict)  # tensors only one side holds (not compared)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "verdict": self.verdict, "p_value": self.p_value, "log10_p_value": self.log10_p, "alpha": self.alpha,
            "layers": self.layers, "residual": self.residual, "identical_check": self.identical_check,
            "gauge_fingerprint": self.gauge.fingerprint() if self.gauge is not None else None,
            "seconds": self.seconds, "notes": self.notes, "not_compared": self.one_sided,
            "null": "independent training: input-side unit matches carry no information about output-side weights",
        }
        if self.rotation is not None:
            out["rotation_shape"] = list(self.rotation.shape)
        return out


_WIDENED = (torch.bfloat16, torch.float16, torch.float32)  # times a float32 gain: float32, exactly t.float() * g


class _FoldBuffers:
    """The float32 buffers one side's folded layer tensors are written into: one per tensor of a layer (its
    name with the layer index taken out, and its shape), reused by the same tensor of every later layer.
    Allocated once, they are not given back between layers (``same`` trims the heap after each layer), so
    a layer's folded copies do not fault in new memory (a fold ran at 26-39 ms per 11008 x 4096 tensor
    into new memory, 10 ms into a reused buffer). A buffer is rewritten by its next use: callers drop
    a layer's tensors before reading the next layer's."""

    def __init__(self) -> None:
        self.bufs: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}

    def get(self, name: str, shape: Sequence[int]) -> torch.Tensor:
        key = (_LAYER_RE.sub(".#.", name, count=1), tuple(int(n) for n in shape))
        if key not in self.bufs:
            self.bufs[key] = torch.empty(key[1], dtype=torch.float32)
        return self.bufs[key]


class _Tensors:
    """A checkpoint's tensors by name, read on demand; ``fold``: norm gains folded into their readers.

    ``raw(name)`` is the stored tensor; calling the object gives the tensor to compare (folded), from a
    raw tensor already read when one is given, so that each tensor is read once."""

    def __init__(self, ckpt: Checkpoint, gain_of: dict[str, str] | None = None, reset: frozenset[str] = frozenset(),
                 offset: float = 0.0) -> None:
        self.ckpt = ckpt
        self.gain_of = gain_of or {}
        self.reset = reset
        self.offset = offset

    def raw(self, name: str) -> torch.Tensor:
        return self.ckpt.tensor(name)

    def __call__(self, name: str, raw: torch.Tensor | None = None,
                 gain_map: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
                 buffers: _FoldBuffers | None = None) -> torch.Tensor:
        """``gain_map(gain_name, gain)``: applied to the gain before folding (``raw`` already moved by a
        signed permutation of the residual axes: the gain is then moved alike, so the product is the same).
        ``buffers``: a folded tensor is written into its buffer there (valid until that buffer's next use)."""
        t = self.raw(name) if raw is None else raw
        if name in self.gain_of:
            g = self.ckpt.tensor(self.gain_of[name])
            if gain_map is not None:
                g = gain_map(self.gain_of[name], g)
            g = g.float() + self.offset
            if t.dtype in _WIDENED:  # converted while multiplied: one pass, no float32 copy first (5x faster)
                out = None if buffers is None else buffers.get(name, t.shape)
                return torch.mul(t, g, out=out)  # readers: the residual axis is the last (in_features)
            return t.float() * g
        if name in self.reset:
            return torch.full(t.shape, 1.0 - self.offset, dtype=torch.float32)
        return t


def same(path_a: str | Path, path_b: str | Path, *, data: str | None = None, alpha: float = DEFAULT_ALPHA,
         tol: float = DEFAULT_TOL, tokens: int = 4096, progress: bool = False,
         full_gauge: bool = False) -> SameResult | LineageResult:
    """Compare two checkpoints of one architecture (see the module docstring); a pair whose shapes differ
    (depth, widths, vocabulary, experts) goes to :func:`gaugeport.provenance.lineage.lineage`.

    Freed arrays stay in the process while it runs (:func:`gaugeport.core.allocator.freed_memory_kept`:
    each layer reuses the pages of the one before instead of faulting in new ones) and are given back
    when it returns."""
    with freed_memory_kept():
        return _same(path_a, path_b, data=data, alpha=alpha, tol=tol, tokens=tokens, progress=progress,
                     full_gauge=full_gauge)


def _same(path_a: str | Path, path_b: str | Path, *, data: str | None, alpha: float, tol: float, tokens: int,
          progress: bool, full_gauge: bool) -> SameResult | LineageResult:
    t0 = time.perf_counter()
    if not 0 < alpha < 1:
        raise GaugeError(f"alpha must lie in (0, 1), got {alpha}")
    from gaugeport.provenance.lineage import lineage, shapes_differ

    if shapes_differ(path_a, path_b):
        return lineage(path_a, path_b, alpha=alpha)
    ca, cb = Checkpoint.open(path_a), Checkpoint.open(path_b)
    if ca.spec.table != cb.spec.table:  # model types one table reads (llama, mistral) are one architecture
        raise ArchitectureError(f"different architectures: A is {ca.model_type}, B is {cb.model_type}",
                                hint="same compares two checkpoints of one architecture")
    spec = ca.spec
    hspec = get_hidden_spec(spec.model_type)
    dims_a, dims_b = hspec.dims(ca.config, ca.d_model), hspec.dims(cb.config, cb.d_model)
    if ca.d_model != cb.d_model or dims_a != dims_b:
        raise GaugeError(f"A and B differ in size (d={ca.d_model}, {dims_a.to_dict()} vs d={cb.d_model}, "
                         f"{dims_b.to_dict()})", hint="a gauge relates two checkpoints of one shape")
    names = sorted(set(ca.names) & set(cb.names))
    one_sided = {"only_in_a": sorted(set(ca.names) - set(cb.names)),
                 "only_in_b": sorted(set(cb.names) - set(ca.names))}
    notes: list[str] = []
    if one_sided["only_in_a"] or one_sided["only_in_b"]:
        notes.append("compared the tensors both hold; not compared: "
                     + ", ".join(f"{n} (only in A)" for n in one_sided["only_in_a"][:6])
                     + (", " if one_sided["only_in_a"] and one_sided["only_in_b"] else "")
                     + ", ".join(f"{n} (only in B)" for n in one_sided["only_in_b"][:6]))
    dims = dims_a
    if EXACT_COPY_SHORTCUT and data is None and not one_sided["only_in_a"] and not one_sided["only_in_b"]:
        exact = _exact_copy(ca, cb, names, tol, alpha, full_gauge, t0)
        if exact is not None:
            return exact
    get_a: Callable[[str], torch.Tensor] = _Tensors(ca)
    get_b: Callable[[str], torch.Tensor] = _Tensors(cb)
    residual: ResidualMap
    if spec.norm == "rms" and hspec.folds:
        # fold every norm gain into its readers on both sides (lazily, tensor by tensor): what is left of the
        # residual gauge is an orthogonal map, a signed permutation or a rotation; choose by fit
        get_a, unfolded_a = _folded(ca, names, spec, hspec)
        get_b, unfolded_b = _folded(cb, names, spec, hspec)
        for g in sorted(set(unfolded_a) | set(unfolded_b)):
            notes.append(f"{g} not folded ({', '.join(unfolded_a.get(g) or unfolded_b.get(g) or [])} absent: "
                         "tied embeddings); it is compared as stored")
        # with --data, the activation estimate of the signed permutation competes too
        candidates = [] if data is None else [_residual_gauge(path_a, path_b, data, tokens, progress)[0]]
        residual, residual_info = _residual_by_fit(ca, get_a, get_b, spec, candidates)
    else:
        residual, residual_info = _residual_gauge(path_a, path_b, data, tokens, progress)
    rules = spec.classify_all(names)
    by_layer = _names_by_layer(names, hspec)
    rest = [n for n in names if hspec.match(n) is None]
    sample = None if full_gauge or dims.mlp <= 2 * SAMPLE_UNITS else SAMPLE_UNITS
    # rotary dims per head where the table says where the heads live: heads are then matched, and compared,
    # up to the maps inside a head that keep the function (provenance/heads.py); None where the config stops
    # those maps (OLMo's clip_qkv): the heads are then compared as stored
    attn = hspec.attention
    stopped = attn is None or attn.head_maps_stopped_by(ca.config) is not None
    rotary = None if stopped else attn.rotary_dims(ca.config, dims.head_dim)  # type: ignore[union-attr]
    est = HiddenEstimate([], [], [], [], [])
    check = _IdenticalCheck(tol, rules, hspec, dims, residual, spec, rotary)
    shared: list[str] = []
    unmatched: list[int] = []  # layers whose hidden gauge was not recovered (sampled statistic only)
    prefetch: threading.Thread | None = None
    buffers = (_FoldBuffers(), _FoldBuffers())  # the layers' folded copies, one set reused layer after layer
    trim = StepTrim()
    for layer in range(dims.n_layers):  # each layer's tensors read once, scored, checked and freed before the next
        lnames = sorted(by_layer.get(layer, []))
        units = sample is None or check.alive  # may this layer's gauge be matched? else its MLP tensors suffice
        if not units:
            lnames = _mlp_only(lnames, hspec, get_a, get_b, shared)
        ta, tb = _read_layer(lnames, get_a, get_b, rules, residual, shared, buffers)
        a, b = _features(lnames, ta, tb, spec, hspec, dims, layer, rotary, heads=units)  # heads: invariant features
        h = held_out_statistic(a, b, hspec.mlp_signs, sample=sample, seed=layer)
        est.held_out.append(h)
        # sampled (wide MLPs, no --save-gauge): the hidden gauge is recovered only while the pair can still be
        # identical, since nothing else reads it; the screen: the uncorrected sampled z (larger on related layers)
        # and the sampled units' input cosines (a copy's are 1)
        if sample is None or (check.alive and h.get("z_uncorrected", h["z"]) > ESCALATE_Z and _may_be_copy(h, tol)):
            _store(est, layer, match_layer(a, b, dims, hspec.mlp_signs, exhaustive=sample is None))
            if check.alive:
                check.layer(lnames, ta, tb, layer, est.layers[layer], res_sp=_as_sp(residual, ca.d_model))
                if check.alive and prefetch is None:  # a copy so far: the function check will need its class
                    prefetch = _prefetch_model_class(ca.config)
        else:
            _store(est, layer, None)
            unmatched.append(layer)
            check.stop(f"layer {layer} is not a copy: " + (
                "its sampled MLP units' inputs differ (mean cosine "
                f"{h['matched_in_score']:.4g} with their nearest units of B)" if not _may_be_copy(h, tol) else
                "not related on the sampled statistic" if check.alive else "an earlier layer is not one"))
        del a, b, ta, tb
        trim.step_done()  # the layer's freed pages serve the next, up to a bound on the resident size
    release_freed_memory()  # what the layers kept: the tensors outside the layers and the logits check differ
    if sample is not None:
        notes.append(f"p-value on a seeded sample of {sample} of {dims.mlp} MLP units per layer, each matched to "
                     "its nearest input-side neighbour (no assignment over the full width); related layers' units "
                     f"matched by exact hashes or among their {CANDIDATES} nearest candidates")
    gauge = None
    if unmatched:
        notes.append(f"the hidden gauge was recovered only while the pair could be identical ({check.why}); "
                     f"{len(unmatched)} of {dims.n_layers} layers not matched (--save-gauge matches every layer)")
        ident: dict[str, Any] = {"weights_match": False, "max_rel_weight_diff": None, "worst_tensor": None,
                                 "per_layer_rel_diff": {}, "tol": tol, "not_run": check.why}
    else:
        if data is not None:
            _refine_mlp_with_activations(est, path_a, path_b, data, tokens, ca, hspec, notes)
            check.stop("re-matched on activations")  # the weights are compared again under the new gauge
            check = _IdenticalCheck(tol, rules, hspec, dims, residual, spec, rotary)
            gauge = est.full_gauge(_as_sp(residual, ca.d_model))
            for layer in range(dims.n_layers):
                if not check.alive:
                    break
                lnames = sorted(by_layer.get(layer, []))
                ta, tb = _read_layer(lnames, get_a, get_b, rules, residual, None)
                check.layer(lnames, ta, tb, layer, est.layers[layer], res_sp=gauge.residual)
                del ta, tb
        gauge = est.full_gauge(_as_sp(residual, ca.d_model))
        if check.alive:
            for name in rest:
                if not check.alive:
                    break
                rel = _sliced_rel_diff(name, get_a, get_b, rules, residual)
                if rel is not None:
                    check.record(name, rel)
                    continue
                ta, tb = _read_layer([name], get_a, get_b, rules, residual, None)
                check.tensor(name, ta[name], tb[name])
        ident = check.result()
    layers, p, log10_p = _layer_report(est, ident, dims, alpha)
    if prefetch is not None:
        prefetch.join()
    if ident["weights_match"]:
        ident.update(_function_check(path_a, path_b, tol=max(tol, 1e-4)))
    verdict = "identical" if ident["weights_match"] and ident.get("function_match") else \
        "derived" if p < alpha else "independent"
    if verdict == "independent":
        shared += shared_weight_matrices(ca, cb, rest)
        if shared:
            verdict = "derived"
            notes.append(f"derived: {len(shared)} weight matrices are bit-identical in A and B (e.g. "
                         f"{', '.join(shared[:3])}); independently trained models share none, whatever the "
                         "p-value of the gauge-robust statistic says")
    return SameResult(verdict, p, log10_p, alpha, layers, residual_info, ident,
                      gauge if isinstance(residual, SignedPermutation) else None,
                      residual.matrix if isinstance(residual, OrthogonalGauge) else None,
                      time.perf_counter() - t0, notes, one_sided)


def _carries_mlp_units(name: str, hspec: HiddenSpec) -> bool:
    """Does tensor ``name`` have hidden rows (or columns) of MLP units (the table's hidden section)?"""
    hit = hspec.match(name)
    return hit is not None and any(seg.kind == "mlp" for seg in hit[0].segments)


def _names_by_layer(names: list[str], hspec: HiddenSpec) -> dict[int, list[str]]:
    """The tensors with hidden rows, by layer (in ``names``' order)."""
    by_layer: dict[int, list[str]] = {}
    for n in names:
        hit = hspec.match(n)
        if hit is not None:
            by_layer.setdefault(hit[1], []).append(n)
    return by_layer


# ----------------------------------------------------------------------------- exact copies
EXACT_COPY_SHORTCUT = True  # exact copies decided by their fingerprints (tests turn it off to test the general path)
SCREEN_SS_TOL = 1e-9  # relative difference of two float64 sums of squares that are the same values reordered


def _copy_screen(ca: Checkpoint, cb: Checkpoint, names: list[str], rules: dict[str, Any],
                 first_layer: list[str]) -> bool:
    """Could B be A under a signed permutation, bit for bit? A cheap necessary test before the two canonical
    passes: every tensor has A's shape and dtype, every norm gain holds A's values (sorted, bit for bit: a
    signed permutation only moves a gain's entries), and each tensor of the first layer has A's sum of
    squares (float64; the same values in another order and with other signs). A fine-tune changes its norm
    gains, a LoRA merge its first layer's projections: either fails here, having read almost nothing."""
    gains = [n for n in names if rules[n].role == "gain"]
    if not gains:
        return False
    for n in names:
        if ca.shape(n) != cb.shape(n):
            return False
    for n in gains:
        ga, gb = ca.tensor(n), cb.tensor(n)
        if ga.dtype != gb.dtype or not torch.equal(ga.reshape(-1).sort().values, gb.reshape(-1).sort().values):
            return False
    for n in first_layer:
        ta, tb = ca.tensor(n), cb.tensor(n)
        if ta.dtype != tb.dtype:
            return False
        if ta.is_floating_point():
            sa, sb = _sum_of_squares(ta), _sum_of_squares(tb)
            if abs(sa - sb) > SCREEN_SS_TOL * max(abs(sa), abs(sb), 1e-300):
                return False
        del ta, tb
    return True


def _sum_of_squares(t: torch.Tensor, chunk: int = 1 << 20) -> float:
    """``sum(t ** 2)`` in float64, a chunk at a time (no float64 copy of the whole tensor)."""
    flat = t.reshape(-1)
    total = 0.0
    for start in range(0, flat.numel(), chunk):
        part = flat[start:start + chunk].double()
        total += float(torch.dot(part, part))
    return total


def _exact_copy(ca: Checkpoint, cb: Checkpoint, names: list[str], tol: float, alpha: float, full_gauge: bool,
                t0: float) -> SameResult | None:
    """``identical`` for a pair whose canonical weights are bit-identical (B is A under a signed permutation of
    the residual stream, MLP units and heads), with the logits checked; None for every other pair, which
    then takes the general path. Two fingerprint passes (:func:`gaugeport.provenance.canonical.canonical_fingerprint`)
    replace the per-layer matching and weight comparison, and the gauge from A to B is composed from the two
    canonical gauges, exactly. The p-value comes from the held-out statistic of the first layer that has
    MLP units (:func:`held_out_statistic`, as the general path computes it on every layer): the other layers
    are proven copies, and scoring them would change no verdict. Run only when :func:`_copy_screen` passes."""
    from gaugeport.provenance.canonical import canonical_fingerprint

    spec = ca.spec
    hspec = get_hidden_spec(spec.model_type)
    dims = hspec.dims(ca.config, ca.d_model)
    rules = spec.classify_all(names)
    by_layer = _names_by_layer(names, hspec)
    if not by_layer or not _copy_screen(ca, cb, names, rules, by_layer[min(by_layer)]):
        return None
    try:
        fp_a, can_a = canonical_fingerprint(ca)
        fp_b, can_b = canonical_fingerprint(cb)
    except GaugeportError:  # no canonical form for this checkpoint: the general path decides
        return None
    if fp_a != fp_b:
        return None
    gauge = can_b.gauge.inverse() @ can_a.gauge  # A to canonical, then canonical to B
    ident_fn = _function_check(ca.path, cb.path, tol=max(tol, 1e-4))
    if not ident_fn["function_match"]:
        return None
    residual = gauge.residual
    if spec.norm == "rms" and hspec.folds:
        get_a, _ = _folded(ca, names, spec, hspec)
        get_b, _ = _folded(cb, names, spec, hspec)
    else:
        get_a, get_b = _Tensors(ca), _Tensors(cb)
    sample = None if full_gauge or dims.mlp <= 2 * SAMPLE_UNITS else SAMPLE_UNITS
    scored, h = None, None
    for layer in sorted(by_layer):
        mlp = [n for n in sorted(by_layer[layer]) if _carries_mlp_units(n, hspec)]
        if not mlp:
            continue
        ta, tb = _read_layer(mlp, get_a, get_b, rules, residual, None)
        a, b = _features(mlp, ta, tb, spec, hspec, dims, layer, heads=False)
        h = held_out_statistic(a, b, hspec.mlp_signs, sample=sample, seed=layer)
        del ta, tb, a, b
        if h["n"]:
            scored = layer
            break
    if scored is None or h is None:
        return None
    logp = float(stats.norm.logsf(h["z"]))
    layers = []
    for i in range(dims.n_layers):
        lay: dict[str, Any] = {
            "layer": i, "p_value": None, "z": None, "mlp_units_tested": 0, "mlp_matched_output_cos": None,
            "mlp_null_output_cos": None, "mlp_units_sampled": False, "mlp_mean_confidence": 1.0,
            "mlp_low_margin_units": 0, "heads_mean_confidence": 1.0, "max_rel_weight_diff": 0.0,
            "status": "identical", "status_alpha": alpha}
        if i == scored:
            lay.update({"p_value": float(np.exp(logp)), "z": h["z"], "mlp_units_tested": h["n"],
                        "mlp_matched_output_cos": h.get("matched_out_cos"),
                        "mlp_null_output_cos": h.get("null_mean_cos"),
                        "mlp_units_sampled": bool(h.get("sampled", False))})
        layers.append(lay)
    ident = {"weights_match": True, "max_rel_weight_diff": 0.0, "worst_tensor": "", "tol": tol,
             "per_layer_rel_diff": {i: 0.0 for i in range(dims.n_layers)}, "exact_copy_fingerprint": fp_a,
             **ident_fn}
    residual_info = {"kind": "signed_permutation", "fingerprint": residual.fingerprint(),
                     "method": "composed from A's and B's canonical gauges",
                     "chosen_because": "A's and B's canonical weights are bit-identical"}
    notes = [f"exact copy: A's and B's canonical weights are bit-identical (fingerprint {fp_a}), so B is A under "
             "a signed permutation of the residual stream, MLP units and heads, recovered exactly from the two "
             f"canonical gauges; p-value from layer {scored}'s held-out statistic only (every layer is a proven "
             "copy: scoring the others would change no verdict)"]
    return SameResult("identical", float(np.exp(logp)), logp / np.log(10), alpha, layers, residual_info, ident,
                      gauge, None, time.perf_counter() - t0, notes, {"only_in_a": [], "only_in_b": []})


SAMPLE_UNITS = 2048  # wider MLPs are screened on a seeded sample of this many units per layer
ESCALATE_Z = 3.0  # a screened layer whose z exceeds this has its gauge recovered (while the pair may be identical)
COPY_SLACK = 1e-3  # a copy's sampled units have a mean input cosine with their nearest unit of B above 1 - this
COPY_GATE_TOL = 1e-4  # the screen above is used for --tol up to this (larger tolerances: every related layer matched)


def _may_be_copy(h: dict[str, Any], tol: float) -> bool:
    """Could this layer (its held-out statistic ``h``) pass the identical check at ``tol``? Not when its sampled
    MLP units' mean input cosine with their nearest unit of B is below ``1 - COPY_SLACK``. The bound: tensors
    within ``tol`` (relative to the largest entry) differ per row by at most ``tol`` times the row's
    max-to-rms ratio relative to its norm; at ``tol <= COPY_GATE_TOL`` and a ratio up to 300 that is 0.03,
    a cosine above ``1 - 4.5e-4``. Larger tolerances, or no unit tested: maybe."""
    return tol > COPY_GATE_TOL or not h.get("n") or h.get("matched_in_score", 1.0) >= 1 - COPY_SLACK


def _store(est: HiddenEstimate, layer: int, m: tuple[Any, np.ndarray, np.ndarray, np.ndarray] | None) -> None:
    vals = (None, None, None, None) if m is None else m
    for lst, v in zip((est.layers, est.mlp_confidence, est.mlp_margin, est.head_confidence), vals, strict=True):
        if layer < len(lst):
            lst[layer] = v
        else:
            lst.append(v)


def _as_sp(residual: ResidualMap, d: int) -> SignedPermutation:
    return residual if isinstance(residual, SignedPermutation) else SignedPermutation.identity(d)


def _read_layer(names: list[str], get_a: Callable[..., torch.Tensor], get_b: Callable[..., torch.Tensor],
                rules: dict[str, Any], residual: ResidualMap, shared: list[str] | None,
                buffers: tuple[_FoldBuffers, _FoldBuffers] | None = None
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``names`` read once per side: A's tensors (folded) and B's in A's residual coordinates; with
    ``shared``, the names of the stored matrices that are bit-identical in A and B are appended to it;
    with ``buffers`` (A's, B's), folded tensors are written into them (drop the result before the next call)."""
    ta, tb = {}, {}
    buf_a, buf_b = buffers if buffers is not None else (None, None)
    for n in names:
        if isinstance(get_a, _Tensors) and isinstance(get_b, _Tensors):
            ra, rb = get_a.raw(n), get_b.raw(n)
            if shared is not None and _bit_identical(ra, rb):
                shared.append(n)
            ta[n] = get_a(n, ra, buffers=buf_a)
            del ra
            if isinstance(residual, SignedPermutation):
                # moved as stored (bf16: half the bytes of the folded float32), then folded with the gain moved
                # alike: the same values as moving the folded tensor
                tb[n] = get_b(n, to_a_coordinates(n, rb, rules[n], residual),
                              lambda gn, g: to_a_coordinates(gn, g, rules[gn], residual), buffers=buf_b)
                del rb
                continue
            fb = get_b(n, rb)
            del rb
        else:
            ta[n], fb = get_a(n), get_b(n)
        tb[n] = to_a_coordinates(n, fb, rules[n], residual)
        del fb
    return ta, tb


def _mlp_only(names: list[str], hspec: HiddenSpec, get_a: Callable[..., torch.Tensor],
              get_b: Callable[..., torch.Tensor], shared: list[str]) -> list[str]:
    """The tensors of ``names`` that carry MLP units (all the held-out statistic reads); the others are only
    checked finite, as every tensor read, and compared as stored, bit for bit (most differ in their first
    row), never converted, folded or moved; their names are appended to ``shared`` when they are equal."""
    keep = []
    for n in names:
        if _carries_mlp_units(n, hspec):
            keep.append(n)
        elif isinstance(get_a, _Tensors) and isinstance(get_b, _Tensors) and _bit_identical(get_a.raw(n),
                                                                                            get_b.raw(n)):
            shared.append(n)
    return keep


def _features(names: list[str], ta: dict[str, torch.Tensor], tb: dict[str, torch.Tensor], spec: ArchSpec,
              hspec: HiddenSpec, dims: HiddenDims, layer: int,
              rotary: int | None = None, heads: bool = True) -> tuple[UnitFeatures, UnitFeatures]:
    """One layer's unit features of A and B; with ``rotary``, heads on the features no map inside a head
    changes (:func:`gaugeport.provenance.heads.use_invariant_head_features`), the flattened head blocks they
    replace not even built, where the layer has its attention tensors. ``heads`` False: MLP units only
    (nothing will be matched), their raw rows not kept for hashing."""
    if not heads:
        no_heads = frozenset({"q_heads", "kv_heads"})
        fa = layer_features(names, ta.__getitem__, spec, hspec, dims, skip=no_heads).get(layer, UnitFeatures())
        fb = layer_features(names, tb.__getitem__, spec, hspec, dims, skip=no_heads).get(layer, UnitFeatures())
        return fa, fb
    skip: frozenset[str] = frozenset()
    if rotary is not None and hspec.attention is not None:
        try:
            attention_slots(names, spec, hspec, dims, layer)
            skip = frozenset({"q_heads", "kv_heads"})
        except ArchitectureError:
            pass
    fa = layer_features(names, ta.__getitem__, spec, hspec, dims, keep_raw=True, skip=skip).get(layer, UnitFeatures())
    fb = layer_features(names, tb.__getitem__, spec, hspec, dims, keep_raw=True, skip=skip).get(layer, UnitFeatures())
    if rotary is not None and not use_invariant_head_features(fa, fb, names, ta.__getitem__, tb.__getitem__, spec,
                                                              hspec, dims, rotary, layer) and skip:
        return _features(names, ta, tb, spec, hspec, dims, layer)  # no MLP blocks to hang the heads on: as they are
    return fa, fb


def _stouffer(zs: list[float]) -> float:
    """The layers' z-scores summed, divided by sqrt(L): N(0, 1) under the null (layers independent)."""
    return float(np.sum(zs) / np.sqrt(len(zs))) if zs else 0.0


# ----------------------------------------------------------------------------- residual
def _folded(ckpt: Checkpoint, names: list[str], spec: ArchSpec,
            hspec: HiddenSpec) -> tuple[_Tensors, dict[str, list[str]]]:
    """A getter returning ``ckpt``'s tensors with every norm gain folded into its readers
    (``W' = W diag(g + offset)``, the gain itself then reads ``1 - offset``), one tensor at a time;
    and the gains left unfolded because a reader is absent (an output head tied to the embedding)."""
    readers, unfolded = hspec.fold_plan((n for n in names if spec.classify(n).role == "gain"), set(names))
    gain_of = {t: gain for gain, targets in readers.items() for t in targets}
    return _Tensors(ckpt, gain_of, frozenset(readers), spec.gain_offset), unfolded


def _residual_gauge(a: str | Path, b: str | Path, data: str | None, tokens: int,
                    progress: bool) -> tuple[SignedPermutation, dict[str, Any]]:
    if data is None:
        from gaugeport.estimate.align import align_by_weights

        al = align_by_weights(a, b)
    else:
        from gaugeport.estimate.pipeline import DataOptions, align_checkpoints

        al = align_checkpoints(a, b, DataOptions(data, tokens=tokens, seq_len=64), progress=progress)
    return al.gauge, {"kind": "signed_permutation", "method": al.method, "mean_confidence": al.mean_confidence,
                      "min_confidence": al.min_confidence, "mean_margin": float(np.mean(al.margin)),
                      "fingerprint": al.gauge.fingerprint()}


def _embedding_name(ckpt: Checkpoint, spec: ArchSpec) -> str:
    vocab = int(ckpt.config.get("text_config", ckpt.config).get("vocab_size", 0) or 0)
    for n in sorted(ckpt.names):
        r = spec.classify(n)
        if r.role == "write" and r.axes == (1,) and not any(k in n for k in ("position", "wpe", "token_type")) \
                and (vocab == 0 or _shape0(ckpt, n) == vocab):
            return n
    raise ArchitectureError("no token embedding found for the Procrustes fit")


def _shape0(ckpt: Checkpoint, name: str) -> int:
    return int(ckpt.tensor(name).shape[0])


SNAP_SLACK = 1.10  # a signed permutation is kept when its fit is within 10 % of the best rotation's
ROTATION_MAX_RESIDUAL = 0.5  # a map "explains" the embedding when its relative residual is at most this
GRAM_MAX = 1.0  # token Gram matrices further apart than this (relative): no rotation can explain the embedding
GRAM_ROWS = 1024  # tokens the Gram screen compares (float32)
FIT_ROWS = 4096  # embedding rows (a seeded sample of tokens) the residual map is fitted on


def _residual_by_fit(ca: Checkpoint, get_a: Callable[[str], torch.Tensor], get_b: Callable[[str], torch.Tensor],
                     spec: ArchSpec, candidates: list[SignedPermutation]) -> tuple[ResidualMap, dict[str, Any]]:
    """The residual map after folding both sides, chosen by fit on the token embeddings.

    Fits are relative residuals ``||E_A M^T - E_B|| / ||E_B||`` on a seeded sample of ``FIT_ROWS``
    tokens (``x_B = M x_A``; the embedding is a writer, untouched by folding). In order:

    1. the signed permutation that matches B's embedding columns to A's by ``|correlation|`` (a linear
       assignment; the sign of the correlation), and any ``candidates`` (``--data``'s activation
       estimate): the best of them is chosen when its residual is at most ``ROTATION_MAX_RESIDUAL``;
    2. otherwise a rotation can only explain the embedding if the token Gram matrices agree
       (``E_B E_B^T = E_A E_A^T`` for any orthogonal map): when their relative difference exceeds
       ``GRAM_MAX`` the pair is unrelated on the embedding and the signed permutation is kept;
    3. otherwise ``Q`` minimising the residual over orthogonal matrices (Procrustes: ``Q = U V^T``
       of ``E_B^T E_A``) is chosen when its residual is at most ``ROTATION_MAX_RESIDUAL`` and the
       signed permutation's is more than ``SNAP_SLACK`` times it, else the signed permutation.

    Keeping the signed permutation for unrelated pairs matters for the p-value: a rotation fitted to
    two independent models aligns what they learned alike from the same data (convergent features),
    and the held-out statistic, measured in such a basis, drifts above its null (mean z about +0.8
    per layer on tiny independent pairs, against about 0 in the signed-permutation basis).
    """
    name = _embedding_name(ca, spec)
    vocab = int(ca.tensor(name).shape[0])
    rows = torch.from_numpy(token_sample(vocab, FIT_ROWS))
    ea, eb = get_a(name)[rows].double(), get_b(name)[rows].double()
    d = int(ea.shape[1])
    norm_b = max(float(eb.norm()), 1e-30)

    def fit_sp(sp: SignedPermutation) -> float:
        return float((sp.apply(ea, 1) - eb).norm()) / norm_b

    corr_t, scale_a, scale_b = column_correlation(ea, eb)
    corr = corr_t.numpy()  # corr[i, j]: B's column i against A's column j
    cols = linear_assignment(np.abs(corr)).cols  # B's coordinate i is A's coordinate cols[i]
    signs = np.where(corr[np.arange(d), cols] < 0, -1, 1).astype(np.int8)
    inv = np.argsort(cols)
    perms = [SignedPermutation(inv, signs[inv]), *candidates]
    fits = [fit_sp(sp) for sp in perms]
    best = int(np.argmin(fits))
    sp, f_sp = perms[best], fits[best]
    info: dict[str, Any] = {"method": f"fit on {rows.numel()} rows of {name} after folding both sides' norm gains",
                            "signed_permutation_relative_residual": f_sp,
                            "signed_permutation_source": "embedding columns" if best == 0 else "--data"}

    def keep_sp(why: str) -> tuple[ResidualMap, dict[str, Any]]:
        info.update({"kind": "signed_permutation", "fingerprint": sp.fingerprint(), "chosen_because": why})
        return sp, info

    if f_sp <= ROTATION_MAX_RESIDUAL:
        return keep_sp("a signed permutation explains the embedding")
    ga, gb = ea[:GRAM_ROWS].float() @ ea[:GRAM_ROWS].float().T, eb[:GRAM_ROWS].float() @ eb[:GRAM_ROWS].float().T
    gram = float((ga - gb).norm() / ga.norm().clamp_min(1e-30))
    info["token_gram_relative_difference"] = gram
    del ga, gb
    if gram > GRAM_MAX:
        return keep_sp("no orthogonal map can explain the embedding (token Gram matrices differ)")
    f_est = rotation_residual(ea, eb, cross_from_correlation(corr_t, scale_a, scale_b, ea, eb))
    info["rotation_relative_residual"] = f_est
    if f_est > ROTATION_MAX_RESIDUAL * (1 + SCREEN_MARGIN):  # clearly unexplained: no d x d SVD in float64
        return keep_sp("no rotation explains the embedding (the pair looks unrelated there)")
    u, _, vt = torch.linalg.svd(eb.T @ ea)
    q = (u @ vt).numpy()
    f_q = float((ea @ torch.from_numpy(q).T - eb).norm()) / norm_b
    info.update({"rotation_relative_residual": f_q, "orthogonality_error": float(np.abs(q @ q.T - np.eye(d)).max())})
    if f_q > ROTATION_MAX_RESIDUAL:
        return keep_sp("no rotation explains the embedding (the pair looks unrelated there)")
    if f_sp <= SNAP_SLACK * f_q + 1e-6:
        return keep_sp("fits within the slack of the rotation")
    info.update({"kind": "orthogonal", "chosen_because": "a rotation explains the embedding and no signed "
                 "permutation comes close"})
    return OrthogonalGauge(q), info


def column_correlation(ea: torch.Tensor, eb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``corr[i, j]``, the correlation of B's column ``i`` with A's column ``j`` over the rows (float32), and
    the centred columns' norms of A and of B it was scaled by."""
    za, zb = (ea - ea.mean(0)).float(), (eb - eb.mean(0)).float()
    scale_a, scale_b = za.norm(dim=0).clamp_min(1e-30), zb.norm(dim=0).clamp_min(1e-30)
    return (zb / scale_b).T @ (za / scale_a), scale_a, scale_b


def cross_from_correlation(corr: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor, ea: torch.Tensor,
                           eb: torch.Tensor) -> torch.Tensor:
    """``E_B^T E_A`` (float32) from :func:`column_correlation`'s output: the centred cross-moment (the
    correlations rescaled by both norms) plus ``n`` times the outer product of the column means. The
    rotation screen's ``d x d`` product without a second pass over the ``n`` rows."""
    return corr * scale_b[:, None] * scale_a[None, :] + ea.shape[0] * torch.outer(eb.mean(0), ea.mean(0)).float()


SCREEN_MARGIN = 0.02  # the float32 residual decides alone when it is this far (relative) above the threshold


def rotation_residual(ea: torch.Tensor, eb: torch.Tensor, cross: torch.Tensor | None = None) -> float:
    """The best rotation's relative residual ``min_Q ||E_A Q^T - E_B|| / ||E_B||`` without ``Q``:
    ``||E_A||^2 + ||E_B||^2 - 2 ||E_B^T E_A||_*`` (the nuclear norm from the eigenvalues of ``M^T M``),
    in float32 (a symmetric eigenvalue problem, several times cheaper than the float64 SVD that
    gives ``Q``); accurate to about 1e-4 relative, which is what the choice of map needs.
    ``cross``: ``M = E_B^T E_A`` when the caller has it (float32), else computed here."""
    a, b = ea.float(), eb.float()
    m = b.T @ a if cross is None else cross
    nuc = float(torch.linalg.eigvalsh(m.T @ m).clamp_min(0).sqrt().double().sum())
    na, nb = float(a.double().pow(2).sum()), float(b.double().pow(2).sum())
    return float(np.sqrt(max(na + nb - 2 * nuc, 0.0) / max(nb, 1e-30)))


def token_sample(vocab: int, size: int) -> np.ndarray:
    """A seeded, sorted sample of ``size`` token ids (all of them for a smaller vocabulary)."""
    if vocab <= size:
        return np.arange(vocab)
    return np.sort(np.random.default_rng(0).choice(vocab, size, replace=False))


# ----------------------------------------------------------------------------- activations
def _refine_mlp_with_activations(est: HiddenEstimate, a: str | Path, b: str | Path, data: str, tokens: int,
                                 ca: Checkpoint, hspec: HiddenSpec, notes: list[str]) -> None:
    """Re-match every layer's MLP units on the correlation of their activations (A and B run
    layer-streamed in lockstep, one layer's cross-moments at a time:
    :func:`~gaugeport.estimate.hidden.streamed_mlp_moments`)."""
    from gaugeport.core.fullgauge import LayerGauge
    from gaugeport.estimate.pipeline import DataOptions

    batches = DataOptions(data, tokens=tokens, seq_len=64).batches(a, b)
    found: list[str] = []

    def paths_of(model: torch.nn.Module) -> list[str]:
        found[:] = down_projection_modules(model, ca.spec, hspec)
        return found if len(found) == len(est.layers) else []

    def on_layer(i: int, moments: Any) -> None:
        m = match_mlp_units_from_moments(moments.correlation(), hspec.mlp_signs)
        est.layers[i] = LayerGauge(m.gauge, est.layers[i].heads, est.layers[i].n_kv_heads)
        est.mlp_confidence[i], est.mlp_margin[i] = m.confidence, m.margin

    n_tok = streamed_mlp_moments(a, b, batches, paths_of, on_layer)
    if len(found) != len(est.layers):
        notes.append(f"activation matching skipped: the table's MLP writers name {len(found)} modules "
                     f"for {len(est.layers)} layers")
        return
    notes.append(f"MLP units matched on activation correlations ({n_tok} tokens, both models layer-streamed; "
                 "inputs of " + ", ".join(found[:1]) + (" ..." if len(found) > 1 else "") + ")")


def down_projection_modules(model: torch.nn.Module, spec: ArchSpec, hspec: HiddenSpec) -> list[str]:
    """Per layer, the exact module path of the MLP's down projection: the module owning the weight that
    the architecture table marks as a residual writer (role ``write``) *and* as carrying the MLP units
    on a hidden row. Its input is the MLP's hidden activation, whatever the module is called."""
    found: dict[int, str] = {}
    for name, _ in model.named_parameters():
        if not name.endswith(".weight"):
            continue
        hit = hspec.match(name)
        if hit is None or not _carries_mlp_units(name, hspec):
            continue
        try:
            role = spec.classify(name).role
        except ArchitectureError:
            continue
        if role != "write":
            continue
        if hit[1] in found:
            raise ArchitectureError(f"layer {hit[1]} has two MLP writers: {found[hit[1]]} and {name}")
        found[hit[1]] = name[: -len(".weight")]
    return [found[i] for i in sorted(found)]


# ----------------------------------------------------------------------------- identical?
class _IdenticalCheck:
    """B's tensors against the recovered gauge applied to A's, in A's residual coordinates, layer by layer
    as each layer's gauge is recovered (its tensors still in memory), then the tensors outside the layers:
    max relative difference (``max |pred - B| / max |B|``), overall and per layer. It stops at the first
    tensor over ``tol`` (the rest would only refine the figure) or when a layer is not matched.
    With ``rotary`` (the table names the attention tensors), each layer's maps inside the heads
    (value/output, and query/key commuting with RoPE) are fitted from A's predicted tensors to B's
    (:func:`gaugeport.provenance.heads.fit_layer_head_maps`) and applied to the prediction, when the check
    reaches the first head tensor and only if the heads do not already agree within ``tol`` without them;
    those maps act on head axes only, so fitting them in A's residual coordinates gives the maps of B's.
    An MLP tensor's unit directions are first compared on ``SCREEN_UNITS`` units: a lower bound of the
    figure over ``tol`` stops the check there (``max_rel_weight_diff_is_lower_bound`` in the result)."""

    def __init__(self, tol: float, rules: dict[str, Any], hspec: HiddenSpec, dims: HiddenDims,
                 residual: ResidualMap, spec: ArchSpec | None = None, rotary: int | None = None) -> None:
        self.tol, self.rules, self.hspec, self.dims, self.residual = tol, rules, hspec, dims, residual
        self.spec, self.rotary = spec, rotary
        self.worst, self.worst_name = 0.0, ""
        self.per_layer: dict[int, float] = {}
        self.alive = True
        self.why = ""
        self.lower_bound = False  # the last figure is a lower bound (a few units' directions)

    def stop(self, why: str) -> None:
        if self.alive:
            self.alive, self.why = False, why

    def layer(self, names: list[str], ta: dict[str, torch.Tensor], tb: dict[str, torch.Tensor], layer: int,
              lg: Any, res_sp: SignedPermutation) -> None:
        gauge = FullGauge(res_sp, (lg,) * (layer + 1))  # transform_hidden reads layers[layer] only
        preds: dict[str, torch.Tensor] = {}

        def predict(name: str) -> torch.Tensor:  # A's tensor with the layer's hidden gauge applied, once
            if name not in preds:
                hit = self.hspec.match(name)
                preds[name] = ta[name] if hit is None else \
                    transform_hidden(name, ta[name], hit[0], hit[1], gauge, self.dims)
            return preds[name]

        maps: LayerHeadMaps | None = None
        fitted = False  # the maps inside the heads are fitted at the first tensor that needs them, if one does
        for name in names:
            if not self.alive:
                return
            pred, b = predict(name), tb[name]
            if not fitted and self._in_heads(name, names, layer):
                maps, fitted = self._head_maps(names, predict, tb, layer), True
            preds.pop(name, None)  # compared once, below: its memory serves the next prediction (no fresh pages)
            if maps is not None:
                pred = apply_layer_head_maps(name, pred, maps, self.dims)
            hit = self.hspec.match(name)
            if hit is not None:
                if pred.dtype == b.dtype and torch.equal(pred, b):  # an exact copy: nothing to measure
                    self.tensor(name, b, b)
                    continue
                if [seg.kind for seg in hit[0].segments] == ["mlp"] and b.ndim == 2:
                    # an MLP unit may be rescaled by any c > 0 (up row c, down column 1/c; a homogeneous
                    # activation's gate likewise): compare each unit's direction, the function check decides.
                    # First on a few units: a lower bound over tol already ends the check (an edited copy)
                    bound = _direction_diff_lower_bound(pred, b, hit[0].axis)
                    if bound > self.tol:
                        self.lower_bound = True
                        self.record(name, bound)
                        return
                    pred, b = _unit_directions(pred, hit[0].axis), _unit_directions(b, hit[0].axis)
            self.tensor(name, pred, b)

    def _slots(self, names: list[str], layer: int) -> dict[str, Any] | None:
        if self.rotary is None or self.spec is None:
            return None
        try:
            return attention_slots(names, self.spec, self.hspec, self.dims, layer)
        except ArchitectureError:  # the layer lacks its attention tensors: compared as they are
            return None

    def _in_heads(self, name: str, names: list[str], layer: int) -> bool:
        slots = self._slots(names, layer)
        return slots is not None and any(s.name == name for role in slots.values() for s in role)

    def _head_maps(self, names: list[str], predict: Callable[[str], torch.Tensor], tb: dict[str, torch.Tensor],
                   layer: int) -> LayerHeadMaps | None:
        """The layer's maps inside the heads, or None when none is needed: every head tensor already agrees
        within ``tol`` without them (the identity is such a map; an exact copy's heads, no fit to run)."""
        slots = self._slots(names, layer)
        if slots is None:
            return None
        held = sorted({s.name for role in slots.values() for s in role})
        if all(_rel_diff(predict(n), tb[n]) <= self.tol for n in held):
            return None
        return fit_layer_head_maps(predict, tb.__getitem__, slots, self.dims, self.rotary,  # type: ignore[arg-type]
                                   self.hspec.attention.rope)  # type: ignore[union-attr]

    def tensor(self, name: str, pred: torch.Tensor, b: torch.Tensor) -> None:
        self.record(name, _rel_diff(pred, b))

    def record(self, name: str, rel: float) -> None:
        if rel >= self.worst:
            self.worst, self.worst_name = rel, name
        m = _LAYER_RE.search(name)
        if m:
            li = int(m.group(1))
            self.per_layer[li] = max(self.per_layer.get(li, 0.0), rel)
        if self.worst > self.tol:
            self.stop("first difference")

    def result(self) -> dict[str, Any]:
        out = {"weights_match": self.alive and self.worst <= self.tol, "max_rel_weight_diff": self.worst,
               "worst_tensor": self.worst_name, "per_layer_rel_diff": self.per_layer, "tol": self.tol}
        if self.lower_bound:
            out["max_rel_weight_diff_is_lower_bound"] = True
        if not self.alive:
            out["stopped_at_first_difference"] = True
            if self.why != "first difference":
                out["stopped_because"] = self.why
        return out


def _rel_diff(pred: torch.Tensor, b: torch.Tensor) -> float:
    """``max |pred - b| / max |b|`` (the plain difference where ``b`` is zero); 0 for an exact copy."""
    if b.numel() == 0 or (pred.dtype == b.dtype and torch.equal(pred, b)):
        return 0.0
    scale = float(b.abs().max())
    diff = float(torch.sub(pred.float(), b.float()).abs_().max())
    return diff / scale if scale > 0 else diff


SLICE_ELEMENTS = 1 << 25  # tensors outside the layers larger than this (32M values) are compared by row slices


def _sliced_rel_diff(name: str, get_a: Callable[..., torch.Tensor], get_b: Callable[..., torch.Tensor],
                     rules: dict[str, Any], residual: ResidualMap) -> float | None:
    """:func:`_rel_diff` of A's tensor ``name`` (folded) against B's (in A's residual coordinates), both read
    ``SLICE_ELEMENTS`` values at a time along the first axis, which no residual map moves here (a ``[vocab, d]``
    embedding or output head: whole, in float32 on both sides, it would be 4 x 4.2 GB at Llama-3-70B's
    shapes). The same figure as the whole tensors give: a maximum over slices of ``max |pred - b|``, over the
    maximum of ``max |b|``. None where the tensor is not such a matrix (it is then compared whole)."""
    if not (isinstance(get_a, _Tensors) and isinstance(get_b, _Tensors)):
        return None
    shape = get_a.ckpt.shape(name)
    rule = rules[name]
    n = int(np.prod(shape, dtype=np.int64)) if shape else 0
    if len(shape) != 2 or n <= SLICE_ELEMENTS or 0 in rule.axes or get_b.ckpt.shape(name) != shape:
        return None
    step = max(1, SLICE_ELEMENTS // shape[1])
    diff = scale = 0.0
    for begin in range(0, shape[0], step):
        stop = min(begin + step, shape[0])
        pa = get_a(name, get_a.ckpt.tensor_rows(name, begin, stop))
        rb = get_b.ckpt.tensor_rows(name, begin, stop)
        if isinstance(residual, SignedPermutation):  # as _read_layer: moved as stored, then folded (gain moved alike)
            b = get_b(name, to_a_coordinates(name, rb, rule, residual),
                      lambda gn, g: to_a_coordinates(gn, g, rules[gn], residual))
        else:
            b = to_a_coordinates(name, get_b(name, rb), rule, residual)
        del rb
        scale = max(scale, float(b.abs().max()) if b.numel() else 0.0)
        if not (pa.dtype == b.dtype and torch.equal(pa, b)):
            diff = max(diff, float(torch.sub(pa.float(), b.float()).abs_().max()))
        del pa, b
    return diff / scale if scale > 0 else diff


SCREEN_UNITS = 64  # units whose directions are compared first


def _direction_diff_lower_bound(pred: torch.Tensor, b: torch.Tensor, axis: int) -> float:
    """A lower bound of the relative difference of the unit directions (``_rel_diff`` of
    ``_unit_directions``), from ``SCREEN_UNITS`` evenly spaced units: their largest difference over the
    largest entry of all of B's directions (one pass over B), never above the full figure."""
    n = int(b.shape[axis])
    idx = torch.from_numpy(np.unique(np.linspace(0, n - 1, min(n, SCREEN_UNITS)).round().astype(np.int64)))
    bf = torch.movedim(b, axis, 0).float()
    norms = bf.norm(dim=1).clamp_min(1e-30)
    scale = float((bf.abs().amax(dim=1) / norms).max())
    sub_p = _unit_directions(torch.movedim(pred, axis, 0)[idx], 0)
    sub_b = bf[idx] / norms[idx, None]
    diff = float(torch.sub(sub_p, sub_b).abs_().max())
    return diff / scale if scale > 0 else diff


def _unit_directions(t: torch.Tensor, axis: int) -> torch.Tensor:
    x = torch.movedim(t.float(), axis, 0)
    norms = x.reshape(x.shape[0], -1).norm(dim=1).clamp_min(1e-30)
    return torch.movedim(x / norms.reshape(-1, *([1] * (x.ndim - 1))), 0, axis)


def _prefetch_model_class(config: dict[str, Any]) -> threading.Thread:
    """Import the model's ``transformers`` class (several seconds of imports) in a background thread while the
    layers are still compared; errors are left to the function check, which imports it again."""
    def run() -> None:
        try:
            from gaugeport.core.stream import model_class_for

            model_class_for(config)
        except Exception:  # the function check reports it
            pass

    th = threading.Thread(target=run, name="same-prefetch", daemon=True)
    th.start()
    return th


def _function_check(a: str | Path, b: str | Path, tol: float) -> dict[str, Any]:
    """Same logits on probe tokens (no gauge needed: the output is gauge-invariant). Both models run
    layer-streamed (:func:`gaugeport.core.stream.load_streamed`): one block of each in memory at a time."""
    from gaugeport.core.stream import load_streamed
    from gaugeport.core.verify import compare_models, probe_token_ids

    ca = Checkpoint.open(a)
    ids = probe_token_ids(int(ca.config.get("text_config", ca.config).get("vocab_size", 2)), 2, 16, 0)
    try:
        model_a = load_streamed(a)
        model_b = load_streamed(b)
    except CheckpointError as exc:  # e.g. B dropped a tensor its class needs: no logits to compare
        return {"function_match": False, "function_check": f"not run: {exc.message}"}
    res = compare_models(model_a, model_b, ids, None, tol)
    return {"function_match": res.max_rel_diff <= tol, "logits_max_rel_diff": res.max_rel_diff,
            "probe_tokens": int(ids.numel())}


# ----------------------------------------------------------------------------- p-values
def _mean_or_none(x: np.ndarray | None) -> float | None:
    return None if x is None else float(np.mean(x))


def _layer_report(est: HiddenEstimate, ident: dict[str, Any], dims: HiddenDims,
                  alpha: float) -> tuple[list[dict[str, Any]], float, float]:
    layers = []
    for i in range(dims.n_layers):
        h = est.held_out[i]
        logp = float(stats.norm.logsf(h["z"])) if h["n"] else 0.0
        layers.append({
            "layer": i,
            "p_value": float(np.exp(logp)),
            "z": h["z"],
            "mlp_units_tested": h["n"],
            "mlp_matched_output_cos": h.get("matched_out_cos"),
            "mlp_null_output_cos": h.get("null_mean_cos"),
            "mlp_units_sampled": bool(h.get("sampled", False)),
            "mlp_mean_confidence": _mean_or_none(est.mlp_confidence[i]),
            "mlp_low_margin_units": None if est.mlp_margin[i] is None else int(np.sum(est.mlp_margin[i] < 0.05)),
            "heads_mean_confidence": _mean_or_none(est.head_confidence[i]),
            "max_rel_weight_diff": ident["per_layer_rel_diff"].get(i),
        })
    zs = [est.held_out[i]["z"] for i in range(dims.n_layers) if est.held_out[i]["n"]]
    z_all = _stouffer(zs)
    logp = float(stats.norm.logsf(z_all))
    # per-layer status in the verdict's words; Bonferroni over the L layers tested (a layer is "derived"
    # when its own p-value is below alpha / L), so the chance that any layer of an independent pair is
    # called derived stays below alpha
    per_layer_alpha = alpha / max(len(zs), 1)
    for lay in layers:
        wd = lay["max_rel_weight_diff"]
        lay["status"] = ("identical" if wd is not None and wd <= ident["tol"] else
                         "derived" if lay["p_value"] < per_layer_alpha else "independent")
        lay["status_alpha"] = per_layer_alpha
    return layers, float(np.exp(logp)), logp / np.log(10)


SHARED_MIN_ELEMENTS = 1024  # a matrix this large, non-constant and bit-identical is never a coincidence


def shared_weight_matrices(ca: Checkpoint, cb: Checkpoint, names: list[str]) -> list[str]:
    """Names of the stored matrices (2-D or more, at least ``SHARED_MIN_ELEMENTS`` values, not constant)
    that are bit-identical in A and B. Independent training never produces one; a copy edited elsewhere
    (its norm gains reset, one block re-trained) keeps them, so they are evidence the held-out statistic
    can miss when an edit scrambles the input-side features it matches on. One tensor in memory per side."""
    shared = []
    for name in names:
        a = ca.tensor(name)
        if a.dim() < 2 or a.numel() < SHARED_MIN_ELEMENTS:
            continue
        if _bit_identical(a, cb.tensor(name)):
            shared.append(name)
        del a
    return shared


def _bit_identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """A matrix (see :func:`shared_weight_matrices`) stored bit for bit alike on both sides, compared as bytes:
    exact, and defined for every stored dtype (float8 and ints included); the first row first (most pairs
    differ there), and a constant one (zeros) proves nothing."""
    if a.dim() < 2 or a.numel() < SHARED_MIN_ELEMENTS or a.shape != b.shape or a.dtype != b.dtype:
        return False
    ra = a.contiguous().reshape(-1).view(torch.uint8).reshape(a.numel(), -1)
    rb = b.contiguous().reshape(-1).view(torch.uint8).reshape(b.numel(), -1)
    head = min(int(a.shape[-1]), a.numel())
    if not torch.equal(ra[:head], rb[:head]) or not torch.equal(ra, rb):
        return False
    return not torch.equal(ra, ra[:1].expand_as(ra))
