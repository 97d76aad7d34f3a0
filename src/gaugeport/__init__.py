"""gaugeport: the coordinate gauge of transformer checkpoints, and artifacts carried through it.

The residual stream's coordinates are not fixed by the function a model computes: an RMSNorm model
keeps its function under any signed permutation of them (``B_d``), a LayerNorm model under any
permutation with one global sign (``S_d x {+-1}``: LayerNorm's mean subtraction forbids per-coordinate
signs); inside each block, MLP units and attention heads can be permuted too (the full-network gauge).
gaugeport detects the group of a checkpoint, applies a gauge and verifies the function, estimates the
gauge between two checkpoints, carries artifacts through it, and tells whether one checkpoint derives
from another.

The public API (everything else lives in its own module; each name is imported on first use)::

    from gaugeport import SignedPermutation, load_gauge, save_gauge, apply_gauge, inspect
    g = SignedPermutation.random(4096, seed=0)          # y[perm[i]] = signs[i] * x[i]
    apply_gauge("ckpt_a/", g, out="ckpt_b/")            # a checkpoint dir, a state dict or an nn.Module
    match_coordinates(C, method="signed")               # estimate a gauge from a d x d correlation
    align_checkpoints("ckpt_a/", "ckpt_b/", DataOptions("corpus.txt")).save("g.safetensors")
    transport_vector(v, g)                              # a steering vector in B's coordinates

    # provenance: the full-network gauge (residual, MLP units, heads)
    same("ckpt_a/", "ckpt_b/").verdict                  # "identical", "derived" or "independent"
    canonicalize("ckpt_b/", "canon/")                   # the gauge orbit's canonical representative
    fingerprint("ckpt_b/")                              # equal for every gauged copy
    FullGauge, load_full_gauge, save_full_gauge         # the full gauge and its file
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gaugeport.core.errors import GaugeportError

if TYPE_CHECKING:
    from gaugeport.core.fullgauge import FullGauge, load_full_gauge, save_full_gauge  # noqa: F401
    from gaugeport.core.gauge import SignedPermutation, compose, load_gauge, read_gauge_file, save_gauge  # noqa: F401
    from gaugeport.provenance.canonical import canonicalize, fingerprint  # noqa: F401
    from gaugeport.provenance.same import SameResult, same  # noqa: F401

__version__ = "0.1.0"

# Public names provided by other modules, imported on first use (keeps `import gaugeport` light).
_LAZY = {
    "SignedPermutation": "gaugeport.core.gauge",
    "compose": "gaugeport.core.gauge",
    "load_gauge": "gaugeport.core.gauge",
    "save_gauge": "gaugeport.core.gauge",
    "read_gauge_file": "gaugeport.core.gauge",
    "get_spec": "gaugeport.core.archspec",
    "supported_architectures": "gaugeport.core.archspec",
    "verify_checkpoints": "gaugeport.core.verify",
    "compare_models": "gaugeport.core.verify",
    "match_coordinates": "gaugeport.estimate.matching",
    "match_with_confidence": "gaugeport.estimate.matching",
    "align_models": "gaugeport.estimate.align",
    "align_by_weights": "gaugeport.estimate.align",
    "MomentSet": "gaugeport.estimate.moments",
    "collect_moments": "gaugeport.estimate.activations",
    "align_chain": "gaugeport.estimate.trajectory",
    "DataOptions": "gaugeport.estimate.pipeline",
    "align_checkpoints": "gaugeport.estimate.pipeline",
    "collect_checkpoints": "gaugeport.estimate.pipeline",
    "audit_claims": "gaugeport.transport.audit",
    "transport_vector": "gaugeport.transport",
    "FullGauge": "gaugeport.core.fullgauge",
    "load_full_gauge": "gaugeport.core.fullgauge",
    "save_full_gauge": "gaugeport.core.fullgauge",
    "same": "gaugeport.provenance.same",
    "SameResult": "gaugeport.provenance.same",
    "canonicalize": "gaugeport.provenance.canonical",
    "fingerprint": "gaugeport.provenance.canonical",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gaugeport' has no attribute {name!r}")


def apply_gauge(target: Any, gauge: SignedPermutation, *, out: str | Path | None = None,
                model_type: str | None = None, force: bool = False) -> Any:
    """Apply ``gauge`` to an ``nn.Module`` (in place, returned), a state dict (a new dict is returned;
    give ``model_type``) or a checkpoint directory (written to ``out``, whose path is returned)."""
    import torch

    from gaugeport.core import apply as _apply
    from gaugeport.core.archspec import get_spec

    if isinstance(target, torch.nn.Module):
        return _apply.apply_gauge_to_model(target, gauge)
    if isinstance(target, Mapping):
        if model_type is None:
            raise GaugeportError("apply_gauge on a state dict needs model_type=... (e.g. 'llama')")
        return _apply.apply_gauge_to_state_dict(target, gauge, get_spec(model_type))
    if isinstance(target, str | Path):
        if out is None:
            raise GaugeportError("apply_gauge on a checkpoint directory needs out=... (inputs are never overwritten)")
        return _apply.apply_gauge_to_checkpoint(target, gauge, out, force=force)
    raise GaugeportError(f"apply_gauge: unsupported target of type {type(target).__name__}")


def inspect(target: Any) -> Any:
    """Inspect a checkpoint directory or a transformers model: norm kind, gauge group, gain genericity."""
    import torch

    from gaugeport.core.inspection import inspect_checkpoint, inspect_model

    return inspect_model(target) if isinstance(target, torch.nn.Module) else inspect_checkpoint(target)


__all__ = ["apply_gauge", "inspect", "GaugeportError", *_LAZY]
