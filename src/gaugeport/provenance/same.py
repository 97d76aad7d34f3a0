"""``same A B``: is B a gauged copy of A, derived from A, or trained independently?

1. **Residual gauge.** Generic gains: the data-free signed permutation of ``align --method weights``
   (token embeddings, untied head, norm gains), or with ``--data`` the activation estimate. Uniform
   gains in A or B (a folded checkpoint, group O(d)): A's gains are folded too and the rotation
   ``Q`` with ``x_B = Q x_A`` is fitted by orthogonal Procrustes on the token embeddings.
2. **Hidden gauge.** With B's residual axes in A's coordinates, every layer's MLP units and heads
   are matched (:mod:`gaugeport.estimate.hidden`), each with a confidence.
3. **Identical?** Every tensor of B is compared with the recovered gauge applied to A; when all
   agree (relative ``tol``) the two models' logits are compared on probe tokens: both pass means
   ``identical``, and the recovered gauge is the evidence.
4. **p-value** under the null of independent training: per layer, MLP units are matched on their
   input weights only and the matched pairs' output weights are scored against a random pairing
   (see :func:`~gaugeport.estimate.hidden.held_out_statistic`); the per-layer z-scores are combined
   by Stouffer's method. ``derived`` when ``p < alpha``, else ``independent``.

The null model is explicit: under independent training, among a unit's best input-side candidates
in B, the one the matching picks is no more similar on the output side than the others, once
what input similarity alone predicts is removed. No p-value robust to the full gauge can be exact
by symmetry alone (any gauge-invariant statistic is blind to the relabelling a permutation test
draws), so this one is approximate; the benchmark and the tests check its calibration on
independently trained pairs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy import stats

from gaugeport.core.archspec import ArchSpec
from gaugeport.core.checkpoint import Checkpoint
from gaugeport.core.errors import ArchitectureError, CheckpointError, GaugeError
from gaugeport.core.fullgauge import FullGauge, transform_hidden
from gaugeport.core.gauge import SignedPermutation
from gaugeport.core.hidden import HiddenDims, HiddenSpec, get_hidden_spec
from gaugeport.estimate.hidden import (
    HiddenEstimate,
    OrthogonalGauge,
    ResidualMap,
    estimate_hidden,
    layer_features,
    match_mlp_units_from_moments,
    mlp_unit_moments,
    to_a_coordinates,
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

    def to_dict(self) -> dict[str, Any]:
        out = {
            "verdict": self.verdict, "p_value": self.p_value, "log10_p_value": self.log10_p, "alpha": self.alpha,
            "layers": self.layers, "residual": self.residual, "identical_check": self.identical_check,
            "gauge_fingerprint": self.gauge.fingerprint() if self.gauge is not None else None,
            "seconds": self.seconds, "notes": self.notes,
            "null": "independent training: input-side unit matches carry no information about output-side weights",
        }
        if self.rotation is not None:
            out["rotation_shape"] = list(self.rotation.shape)
        return out


class _Tensors:
    """A checkpoint's tensors by name, read on demand (optionally overridden by an in-memory state)."""

    def __init__(self, ckpt: Checkpoint, override: dict[str, torch.Tensor] | None = None) -> None:
        self.ckpt = ckpt
        self.override = override

    def __call__(self, name: str) -> torch.Tensor:
        if self.override is not None:
            return self.override[name]
        return self.ckpt.tensor(name)


def same(path_a: str | Path, path_b: str | Path, *, data: str | None = None, alpha: float = DEFAULT_ALPHA,
         tol: float = DEFAULT_TOL, tokens: int = 4096, progress: bool = False) -> SameResult | LineageResult:
    """Compare two checkpoints of one architecture (see the module docstring); a pair whose shapes differ
    (depth, widths, vocabulary, experts) goes to :func:`gaugeport.provenance.lineage.lineage`."""
    t0 = time.perf_counter()
    if not 0 < alpha < 1:
        raise GaugeError(f"alpha must lie in (0, 1), got {alpha}")
    from gaugeport.provenance.lineage import lineage, shapes_differ

    if shapes_differ(path_a, path_b):
        return lineage(path_a, path_b, alpha=alpha)
    ca, cb = Checkpoint.open(path_a), Checkpoint.open(path_b)
    if ca.model_type != cb.model_type:
        raise ArchitectureError(f"different architectures: A is {ca.model_type}, B is {cb.model_type}",
                                hint="same compares two checkpoints of one architecture")
    spec = ca.spec
    hspec = get_hidden_spec(spec.model_type)
    dims_a, dims_b = hspec.dims(ca.config, ca.d_model), hspec.dims(cb.config, cb.d_model)
    if ca.d_model != cb.d_model or dims_a != dims_b:
        raise GaugeError(f"A and B differ in size (d={ca.d_model}, {dims_a.to_dict()} vs d={cb.d_model}, "
                         f"{dims_b.to_dict()})", hint="a gauge relates two checkpoints of one shape")
    if set(ca.names) != set(cb.names):
        raise CheckpointError("A and B hold different tensors: "
                              + ", ".join(sorted(set(ca.names) ^ set(cb.names))[:4]))
    dims = dims_a
    get_a, get_b = _Tensors(ca), _Tensors(cb)
    notes: list[str] = []
    folded = spec.norm == "rms" and (_gains_uniform(ca, spec) or _gains_uniform(cb, spec))
    residual_info: dict[str, Any]
    if folded:
        from gaugeport.provenance.disguise import fold_gains

        state_a = {n: ca.tensor(n) for n in ca.names}
        get_a = _Tensors(ca, fold_gains(state_a, spec))
        if not _gains_uniform(cb, spec):
            get_b = _Tensors(cb, fold_gains({n: cb.tensor(n) for n in cb.names}, spec))
        q, residual_info = _procrustes(ca, get_a, get_b, spec)
        residual: ResidualMap = OrthogonalGauge(q)
        notes.append("uniform norm gains (folded): the residual map is a rotation fitted by orthogonal Procrustes")
    else:
        residual, residual_info = _residual_gauge(path_a, path_b, data, tokens, progress)
    rules = spec.classify_all(ca.names)
    fa = layer_features(ca.names, get_a, spec, hspec, dims)
    fb = layer_features(cb.names, lambda n: to_a_coordinates(n, get_b(n), rules[n], residual), spec, hspec, dims)
    est = estimate_hidden(fa, fb, dims, hspec.mlp_signs)
    if data is not None:
        _refine_mlp_with_activations(est, path_a, path_b, data, tokens, hspec, notes)
    res_sp = residual if isinstance(residual, SignedPermutation) else SignedPermutation.identity(ca.d_model)
    gauge = est.full_gauge(res_sp)
    ident = _identical_check(ca, cb, get_a, get_b, spec, hspec, dims, gauge, residual, tol)
    layers, p, log10_p = _layer_report(est, ident, dims, alpha)
    if ident["weights_match"]:
        ident.update(_function_check(path_a, path_b, tol=max(tol, 1e-4)))
    verdict = "identical" if ident["weights_match"] and ident.get("function_match") else \
        "derived" if p < alpha else "independent"
    return SameResult(verdict, p, log10_p, alpha, layers, residual_info, ident,
                      gauge if isinstance(residual, SignedPermutation) else None,
                      residual.matrix if isinstance(residual, OrthogonalGauge) else None,
                      time.perf_counter() - t0, notes)


# ----------------------------------------------------------------------------- residual
def _gains_uniform(ckpt: Checkpoint, spec: ArchSpec) -> bool:
    gains = [n for n in ckpt.names if spec.classify(n).role == "gain"]
    return bool(gains) and all(bool((t == t.reshape(-1)[0]).all()) for t in (ckpt.tensor(n) for n in gains))


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


def _procrustes(ca: Checkpoint, get_a: _Tensors, get_b: _Tensors, spec: ArchSpec) -> tuple[np.ndarray, dict[str, Any]]:
    """``Q`` minimising ``||E_A Q^T - E_B||`` (token embeddings, ``x_B = Q x_A``): ``Q = U V^T`` of ``E_B^T E_A``."""
    name = _embedding_name(ca, spec)
    ea, eb = get_a(name).double().numpy(), get_b(name).double().numpy()
    u, s, vt = np.linalg.svd(eb.T @ ea)
    q = u @ vt
    resid = float(np.linalg.norm(ea @ q.T - eb) / max(np.linalg.norm(eb), 1e-30))
    return q, {"kind": "orthogonal", "method": "procrustes on " + name, "relative_residual": resid,
               "orthogonality_error": float(np.abs(q @ q.T - np.eye(q.shape[0])).max())}


# ----------------------------------------------------------------------------- activations
def _refine_mlp_with_activations(est: HiddenEstimate, a: str | Path, b: str | Path, data: str, tokens: int,
                                 hspec: HiddenSpec, notes: list[str]) -> None:
    from gaugeport.core.fullgauge import LayerGauge
    from gaugeport.core.verify import load_model
    from gaugeport.estimate.pipeline import DataOptions

    batches = [bt.input_ids if hasattr(bt, "input_ids") else bt
               for bt in DataOptions(data, tokens=tokens, seq_len=64).batches(a, b)]
    down = [r.template.split(".")[-2] for r in hspec.rules
            if r.segments[0].kind == "mlp" and r.axis == 1 and r.template.endswith("weight")]
    corrs = mlp_unit_moments(load_model(a), load_model(b), batches, down_name=down[0] if down else "down_proj")
    if len(corrs) != len(est.layers):
        notes.append("activation matching skipped: MLP hidden units not found by module name")
        return
    for i, c in enumerate(corrs):
        m = match_mlp_units_from_moments(c, hspec.mlp_signs)
        est.layers[i] = LayerGauge(m.gauge, est.layers[i].heads, est.layers[i].n_kv_heads)
        est.mlp_confidence[i], est.mlp_margin[i] = m.confidence, m.margin
    notes.append(f"MLP units matched on activation correlations ({tokens} tokens)")


# ----------------------------------------------------------------------------- identical?
def _identical_check(ca: Checkpoint, cb: Checkpoint, get_a: Callable[[str], torch.Tensor],
                     get_b: Callable[[str], torch.Tensor], spec: ArchSpec, hspec: HiddenSpec, dims: HiddenDims,
                     gauge: FullGauge, residual: ResidualMap, tol: float) -> dict[str, Any]:
    """Every tensor of B against the recovered gauge applied to A: max relative difference, per layer."""
    from gaugeport.core.apply import transform_tensor

    rules = spec.classify_all(ca.names)
    worst, worst_name = 0.0, ""
    per_layer: dict[int, float] = {}
    for name in ca.names:
        ta = get_a(name)
        if isinstance(residual, SignedPermutation):
            pred = transform_tensor(name, ta, rules[name], residual)
        else:
            pred = _rotate(ta, rules[name], residual.matrix)
        hit = hspec.match(name)
        if hit is not None:
            pred = transform_hidden(name, pred, hit[0], hit[1], gauge, dims)
        tb = get_b(name)
        scale = float(tb.float().abs().max()) if tb.numel() else 0.0
        diff = float((pred.float() - tb.float()).abs().max()) if tb.numel() else 0.0
        rel = diff / scale if scale > 0 else diff
        if rel >= worst:
            worst, worst_name = rel, name
        m = _LAYER_RE.search(name)
        if m:
            li = int(m.group(1))
            per_layer[li] = max(per_layer.get(li, 0.0), rel)
    return {"weights_match": worst <= tol, "max_rel_weight_diff": worst, "worst_tensor": worst_name,
            "per_layer_rel_diff": per_layer, "tol": tol}


def _rotate(t: torch.Tensor, rule: Any, q: np.ndarray) -> torch.Tensor:
    x = t.double()
    qt = torch.from_numpy(q)
    for ax in rule.axes if rule.mode == "signed" else ():
        x = torch.movedim(torch.movedim(x, ax, -1) @ qt.T, -1, ax)
    return x


def _function_check(a: str | Path, b: str | Path, tol: float) -> dict[str, Any]:
    """Same logits on probe tokens (no gauge needed: the output is gauge-invariant)."""
    from gaugeport.core.verify import compare_models, load_model, probe_token_ids

    ca = Checkpoint.open(a)
    ids = probe_token_ids(int(ca.config.get("text_config", ca.config).get("vocab_size", 2)), 2, 16, 0)
    res = compare_models(load_model(a), load_model(b), ids, None, tol)
    return {"function_match": res.max_rel_diff <= tol, "logits_max_rel_diff": res.max_rel_diff,
            "probe_tokens": int(ids.numel())}


# ----------------------------------------------------------------------------- p-values
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
            "mlp_mean_confidence": float(np.mean(est.mlp_confidence[i])),
            "mlp_low_margin_units": int(np.sum(est.mlp_margin[i] < 0.05)),
            "heads_mean_confidence": float(np.mean(est.head_confidence[i])),
            "max_rel_weight_diff": ident["per_layer_rel_diff"].get(i),
        })
    # Stouffer: the layers' z-scores summed, divided by sqrt(L): N(0, 1) under the null
    zs = [est.held_out[i]["z"] for i in range(dims.n_layers) if est.held_out[i]["n"]]
    z_all = float(np.sum(zs) / np.sqrt(len(zs))) if zs else 0.0
    logp = float(stats.norm.logsf(z_all))
    # per-layer status in the verdict's words; Bonferroni over the L layers tested (a layer is "derived"
    # when its own p-value is below alpha / L), so the chance that any layer of an independent pair is
    # called derived stays below alpha
    per_layer_alpha = alpha / max(len(zs), 1)
    for lay in layers:
        lay["status"] = ("identical" if (lay["max_rel_weight_diff"] or 0.0) <= ident["tol"] else
                         "derived" if lay["p_value"] < per_layer_alpha else "independent")
        lay["status_alpha"] = per_layer_alpha
    return layers, float(np.exp(logp)), logp / np.log(10)
