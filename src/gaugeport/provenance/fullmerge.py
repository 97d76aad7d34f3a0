"""Full-network alignment and merges of independently trained runs (``merge --full``).

Two runs trained from different seeds share no residual basis, no MLP unit order and no head
order. Averaging them as stored mixes unrelated units; aligning the residual stream alone still
averages unit ``i`` of A with whatever sits at ``i`` in B. ``merge --full`` estimates the whole
gauge (residual, then every layer's MLP units and heads, data-free), brings B into A's
coordinates with its inverse, then interpolates.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from gaugeport.core.apply import rewrite_checkpoint
from gaugeport.core.archspec import spec_for_config
from gaugeport.core.checkpoint import Checkpoint
from gaugeport.core.errors import ArtifactError
from gaugeport.core.fileio import atomic_path
from gaugeport.core.fullgauge import (
    FullGauge,
    FullTransform,
    apply_full_gauge_to_state_dict,
    is_full_gauge_file,
    load_full_gauge,
    model_d,
)
from gaugeport.core.gauge import SignedPermutation, load_gauge
from gaugeport.core.hidden import get_hidden_spec
from gaugeport.estimate.hidden import HiddenEstimate, estimate_hidden, layer_features, to_a_coordinates
from gaugeport.transport.merge import METHODS, Method, merge_tensors

Model = str | Path | torch.nn.Module


def _state(x: Model) -> tuple[dict[str, Any], list[str], Any]:
    """(config dict, tensor names, getter) of a checkpoint directory or an in-memory model."""
    if isinstance(x, torch.nn.Module):
        sd = x.state_dict()
        return x.config.to_dict(), list(sd), sd.__getitem__
    c = Checkpoint.open(x)
    return c.config, c.names, c.tensor


def estimate_full_gauge(a: Model, b: Model, residual: SignedPermutation | None = None) -> tuple[FullGauge,
                                                                                                HiddenEstimate]:
    """Data-free estimate of the full gauge A -> B (``residual`` given, or matched on the weights)."""
    from gaugeport.estimate.align import align_by_weights

    cfg_a, names_a, get_a = _state(a)
    cfg_b, names_b, get_b = _state(b)
    spec = spec_for_config(cfg_a)
    hspec = get_hidden_spec(spec.model_type)
    dims = hspec.dims(cfg_a, model_d(cfg_a))
    if hspec.dims(cfg_b, model_d(cfg_b)) != dims or set(names_a) != set(names_b):
        raise ArtifactError("A and B differ in shape or tensors", hint="align two checkpoints of one architecture")
    res = residual if residual is not None else align_by_weights(a, b).gauge
    rules = spec.classify_all(names_a)
    fa = layer_features(names_a, get_a, spec, hspec, dims)
    fb = layer_features(names_b, lambda n: to_a_coordinates(n, get_b(n), rules[n], res), spec, hspec, dims)
    est = estimate_hidden(fa, fb, dims, hspec.mlp_signs)
    return est.full_gauge(res), est


@torch.no_grad()
def merge_models_full(model_a: torch.nn.Module, model_b: torch.nn.Module, gauge: FullGauge, alpha: float = 0.5,
                      method: Method = "linear") -> torch.nn.Module:
    """``merge(A, G^-1 B)`` under a full gauge, in memory (neither input is modified)."""
    cfg = model_b.config.to_dict()
    aligned = apply_full_gauge_to_state_dict(model_b.state_dict(), gauge.inverse(), spec_for_config(cfg), cfg)
    merged = {n: merge_tensors(t, aligned[n], alpha, method) for n, t in model_a.state_dict().items()}
    out = copy.deepcopy(model_a)
    out.load_state_dict(merged)
    return out


def merge_checkpoints_full(a_dir: str | Path, b_dir: str | Path, gauge: str | Path | FullGauge | None,
                           out_dir: str | Path, *, alpha: float = 0.5, method: Method = "linear",
                           force: bool = False, progress: bool = False) -> FullGauge:
    """Stream a full-gauge merge into ``out_dir`` (in A's coordinates); returns the gauge used.

    ``gauge``: a version-2 file or :class:`FullGauge` (used as is); a version-1 file (its residual
    gauge is kept, the hidden gauges are estimated); ``None`` (everything estimated from the weights).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ArtifactError(f"alpha must lie in [0, 1], got {alpha}", hint="alpha is B's weight")
    if method not in METHODS:
        raise ArtifactError(f"unknown merge method {method!r}", hint=f"methods: {', '.join(METHODS)}")
    ca, cb = Checkpoint.open(a_dir), Checkpoint.open(b_dir)
    if ca.model_type != cb.model_type:
        raise ArtifactError(f"cannot merge a {ca.model_type} checkpoint with a {cb.model_type} one")
    if isinstance(gauge, FullGauge):
        full = gauge
    elif gauge is not None and is_full_gauge_file(gauge):
        full = load_full_gauge(gauge)
    else:
        full, _ = estimate_full_gauge(a_dir, b_dir, load_gauge(gauge) if gauge is not None else None)
    if not full.is_full:
        raise ArtifactError("the gauge has no hidden part", hint="internal error")
    tf_b = FullTransform(cb.spec, cb.names, full.inverse(), cb.d_model, cb.config)
    stamp = {"gaugeport_merge": f"{method} alpha={alpha} full-network alignment",
             "gaugeport_gauge": full.fingerprint(), "gaugeport_merge_a": str(a_dir), "gaugeport_source": str(b_dir)}
    with atomic_path(Path(out_dir), force, inputs=(Path(a_dir), Path(b_dir)), kind="directory") as tmp:
        rewrite_checkpoint(ca, tmp, lambda n, ta: merge_tensors(ta, tf_b(n, cb.tensor(n)), alpha, method), stamp,
                           desc="merge", progress=progress)
    return full


def estimate_full_gauge_from_activations(model_a: torch.nn.Module, model_b: torch.nn.Module, batches: list[Any],
                                         residual: SignedPermutation | None = None) -> FullGauge:
    """Residual from activations (unless given), MLP units from their activation correlations, heads from
    their weights: the estimate for independently trained runs, whose weights share no basis to match on."""
    from gaugeport.core.fullgauge import LayerGauge
    from gaugeport.estimate.align import align_models
    from gaugeport.estimate.hidden import match_mlp_units_from_moments, mlp_unit_moments

    res = residual if residual is not None else align_models(model_a, model_b, batches, progress=False).gauge
    weights_gauge, _ = estimate_full_gauge(model_a, model_b, residual=res)
    hspec = get_hidden_spec(spec_for_config(model_a.config.to_dict()).model_type)
    ids = [bt.input_ids if hasattr(bt, "input_ids") else bt for bt in batches]
    corrs = mlp_unit_moments(model_a, model_b, ids, down_name="mlp.down_proj")
    if len(corrs) != len(weights_gauge.layers):
        return weights_gauge  # MLP modules not found by name: keep the weight estimate
    layers = tuple(LayerGauge(match_mlp_units_from_moments(c, hspec.mlp_signs).gauge, lg.heads, lg.n_kv_heads)
                   for c, lg in zip(corrs, weights_gauge.layers, strict=True))
    return FullGauge(res, layers)
