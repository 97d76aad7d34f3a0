"""Coordinate-preserving merges (docs/transport.md): bring B into A's gauge first, then average.

Averaging two checkpoints coordinate by coordinate only makes sense when coordinate ``i`` means the
same thing in both. The gauge ``G`` maps A's coordinates to B's (as ``gaugeport align A B`` writes
it), so ``G^-1`` applied to B gives B in A's coordinates; the merge then interpolates every tensor
(``linear``: ``(1 - alpha) A + alpha B``; ``slerp``: spherical, per tensor, as mergekit does).
``perm_only`` aligns with the permutation alone (the S_d baseline): on an RMSNorm model half the
coordinates are then averaged against their own negatives.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch

from gaugeport.core.apply import (
    apply_gauge_to_checkpoint,
    apply_gauge_to_state_dict,
    check_gauge_fits,
    rewrite_checkpoint,
    transform_tensor,
)
from gaugeport.core.archspec import spec_for_config
from gaugeport.core.checkpoint import Checkpoint, shard_layout
from gaugeport.core.errors import ArtifactError, GaugeError
from gaugeport.core.fileio import atomic_path
from gaugeport.core.gauge import SignedPermutation
from gaugeport.transport._common import as_applied, provenance

Method = Literal["linear", "slerp"]
METHODS = ("linear", "slerp")
MERGEKIT_CONFIG = "mergekit.yml"
ALIGNED_DIR = "b_aligned"
_COLINEAR = 0.9995  # mergekit's threshold: nearly parallel tensors fall back to linear interpolation


# ------------------------------------------------------------------------------------- tensors
def merge_tensors(a: torch.Tensor, b: torch.Tensor, alpha: float = 0.5, method: Method = "linear") -> torch.Tensor:
    """Interpolate two tensors of one shape (computed in float32, returned in ``a``'s dtype)."""
    if a.shape != b.shape:
        raise ArtifactError(f"cannot merge tensors of shapes {tuple(a.shape)} and {tuple(b.shape)}",
                            hint="merges need two checkpoints of one architecture and size")
    x, y = a.float(), b.float()
    if method == "linear":
        out = (1 - alpha) * x + alpha * y
    elif method == "slerp":
        out = _slerp(x, y, alpha)
    else:
        raise ArtifactError(f"unknown merge method {method!r}", hint=f"methods: {', '.join(METHODS)}")
    return out.to(a.dtype)


def _slerp(x: torch.Tensor, y: torch.Tensor, t: float) -> torch.Tensor:
    nx, ny = x.norm(), y.norm()
    if nx == 0 or ny == 0:
        return (1 - t) * x + t * y
    dot = float((x / nx * (y / ny)).sum().clamp(-1, 1))
    if abs(dot) > _COLINEAR:
        return (1 - t) * x + t * y
    theta = torch.tensor(dot).acos()
    s0 = torch.sin((1 - t) * theta) / torch.sin(theta)
    s1 = torch.sin(t * theta) / torch.sin(theta)
    return s0 * x + s1 * y


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ArtifactError(f"alpha must lie in [0, 1], got {alpha}", hint="alpha is B's weight; 0 gives A, 1 gives B")


# ------------------------------------------------------------------------------------- models
@torch.no_grad()
def merge_models(model_a: torch.nn.Module, model_b: torch.nn.Module, gauge: SignedPermutation, alpha: float = 0.5,
                 method: Method = "linear", perm_only: bool = False) -> torch.nn.Module:
    """A new model in A's coordinates: ``merge(A, G^-1 B)``; neither input is modified."""
    _check_alpha(alpha)
    spec = spec_for_config(model_a.config)
    if spec_for_config(model_b.config).model_type != spec.model_type:
        raise ArtifactError(f"cannot merge a {spec.model_type} model with a {model_b.config.model_type} model",
                            hint="merges need two checkpoints of one architecture and size")
    inv = as_applied(gauge, perm_only).inverse()
    sd_a, sd_b = model_a.state_dict(), model_b.state_dict()
    _check_same_layout({k: tuple(v.shape) for k, v in sd_a.items()}, {k: tuple(v.shape) for k, v in sd_b.items()})
    aligned = apply_gauge_to_state_dict(sd_b, inv, spec)
    merged = {n: merge_tensors(t, aligned[n], alpha, method) for n, t in sd_a.items()}
    out = copy.deepcopy(model_a)
    out.load_state_dict(merged)
    return out


def _check_same_layout(a: Mapping[str, tuple[int, ...]], b: Mapping[str, tuple[int, ...]]) -> None:
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))
        raise ArtifactError(f"A and B hold different tensors ({len(only)} differ, e.g. {only[:3]})",
                            hint="merges need two checkpoints of one architecture and size")
    bad = [n for n in a if a[n] != b[n]]
    if bad:
        raise ArtifactError(f"A and B differ in shape at {bad[0]}: {a[bad[0]]} vs {b[bad[0]]}",
                            hint="merges need two checkpoints of one architecture and size")


# ------------------------------------------------------------------------------------- checkpoints
def merge_checkpoints(a_dir: str | Path, b_dir: str | Path, gauge: SignedPermutation, out_dir: str | Path,
                      alpha: float = 0.5, method: Method = "linear", perm_only: bool = False, force: bool = False,
                      emit_mergekit: bool = False, progress: bool = False) -> Path:
    """Merge two checkpoints tensor by tensor into a normal HF checkpoint in A's coordinates.

    ``emit_mergekit``: instead write ``out_dir/b_aligned/`` (B in A's coordinates) and
    ``out_dir/mergekit.yml`` for users who merge with mergekit.
    """
    _check_alpha(alpha)
    if method not in METHODS:
        raise ArtifactError(f"unknown merge method {method!r}", hint=f"methods: {', '.join(METHODS)}")
    a_dir, b_dir, out = Path(a_dir), Path(b_dir), Path(out_dir)
    ckpt_a, ckpt_b = Checkpoint.open(a_dir), Checkpoint.open(b_dir)
    if ckpt_a.model_type != ckpt_b.model_type:
        raise ArtifactError(f"cannot merge a {ckpt_a.model_type} checkpoint with a {ckpt_b.model_type} one",
                            hint="merges need two checkpoints of one architecture and size")
    spec = ckpt_a.spec
    inv = as_applied(gauge, perm_only).inverse()
    check_gauge_fits(spec, inv, ckpt_a.d_model)
    if ckpt_b.d_model != ckpt_a.d_model:
        raise GaugeError(f"width mismatch: A has d_model={ckpt_a.d_model}, B has {ckpt_b.d_model}")
    _check_same_layout(_layout(ckpt_a), _layout(ckpt_b))
    ckpt_a.check_widths(spec)
    ckpt_b.check_widths(spec)
    stamp = {**provenance(gauge, b_dir, perm_only, "merge"), "gaugeport_merge": f"{method} alpha={alpha}",
             "gaugeport_merge_a": str(a_dir)}
    with atomic_path(out, force, inputs=(a_dir, b_dir), kind="directory") as tmp:
        if emit_mergekit:
            tmp.mkdir()
            apply_gauge_to_checkpoint(b_dir, inv, tmp / ALIGNED_DIR, progress=progress, provenance=stamp)
            (tmp / MERGEKIT_CONFIG).write_text(mergekit_config(a_dir, out / ALIGNED_DIR, alpha, method, ckpt_a.config,
                                                               stamp))
        else:
            _stream_merge(ckpt_a, ckpt_b, inv, tmp, alpha, method, stamp, progress)
    return out


def _layout(ckpt: Checkpoint) -> dict[str, tuple[int, ...]]:
    return {n: shape for shard in ckpt.shards for n, (_, shape) in shard_layout(ckpt, shard).items()}


def _stream_merge(ckpt_a: Checkpoint, ckpt_b: Checkpoint, inv: SignedPermutation, tmp: Path, alpha: float,
                  method: Method, stamp: dict[str, str], progress: bool) -> None:
    rules = ckpt_a.spec.classify_all(ckpt_a.names)

    def merged(name: str, ta: torch.Tensor) -> torch.Tensor:
        return merge_tensors(ta, transform_tensor(name, ckpt_b.tensor(name), rules[name], inv), alpha, method)

    rewrite_checkpoint(ckpt_a, tmp, merged, stamp, desc="merge", progress=progress)


def mergekit_config(a_dir: Path, b_aligned: Path, alpha: float, method: Method, config: Mapping[str, object],
                    stamp: Mapping[str, str]) -> str:
    """A mergekit YAML config merging A with the aligned B (strings JSON-quoted: valid YAML)."""
    a, b = json.dumps(str(Path(a_dir).resolve())), json.dumps(str(Path(b_aligned).resolve()))
    dtype = json.dumps(str(config.get("dtype") or config.get("torch_dtype") or "float32"))
    head = ["# written by gaugeport: B was brought into A's coordinates first "
            f"(gauge {stamp['gaugeport_gauge']}, {stamp['gaugeport_transport']})"]
    if method == "linear":
        body = ["merge_method: linear", "models:", f"  - model: {a}", "    parameters:", f"      weight: {1 - alpha}",
                f"  - model: {b}", "    parameters:", f"      weight: {alpha}"]
    else:
        body = ["merge_method: slerp", f"base_model: {a}", "models:", f"  - model: {a}", f"  - model: {b}",
                "parameters:", f"  t: {alpha}"]
    return "\n".join([*head, *body, f"dtype: {dtype}", ""])
