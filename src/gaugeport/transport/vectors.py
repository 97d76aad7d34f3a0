"""Steering vectors and probe directions: ``v' = G v`` on the last axis (docs/transport.md).

In memory: a tensor or array of shape ``(d,)`` or ``(layers, d)``, a mapping layer -> vector, a
mapping with a ``layer_activations`` entry, or (duck-typed, so neither library has to share our
environment) a ``steering_vectors.SteeringVector`` (``layer_activations``, ``layer_type``) or a repeng
``ControlVector`` (``model_type``, ``directions``). On disk: ``.pt`` (read with
``weights_only=True``), ``.safetensors``, ``.npy`` and repeng's control-vector ``.gguf``
(:mod:`gaugeport.transport.gguf_vectors`). Layer keys are never changed: a gauge acts on the
residual coordinates, not on which layer a vector is added to.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaugeport.core.errors import ArtifactError, CheckpointError
from gaugeport.core.fileio import atomic_path, read_safetensors
from gaugeport.core.gauge import SignedPermutation
from gaugeport.transport._common import (
    as_applied,
    check_finite,
    check_width,
    load_torch,
    provenance,
)

VECTOR_SUFFIXES = (".pt", ".pth", ".safetensors", ".npy", ".gguf")


# ------------------------------------------------------------------------------------- in memory
def transport_vector(v: Any, gauge: SignedPermutation, perm_only: bool = False) -> Any:
    """``v`` in the gauge's target coordinates, of the same type and structure (``v`` is not modified)."""
    return _transport(v, as_applied(gauge, perm_only), "vector")


def _transport(v: Any, g: SignedPermutation, what: str) -> Any:
    if isinstance(v, torch.Tensor | np.ndarray):
        return _transport_array(v, g, what)
    if isinstance(v, Mapping):
        if "layer_activations" in v:  # e.g. dataclasses.asdict(SteeringVector)
            return {**v, "layer_activations": _transport(v["layer_activations"], g, f"{what}.layer_activations")}
        if not v:
            raise ArtifactError(f"{what} is an empty mapping: nothing to transport")
        return {k: _transport_array(x, g, f"{what}[{k!r}]") for k, x in v.items()}
    if hasattr(v, "layer_activations") and hasattr(v, "layer_type"):  # steering_vectors.SteeringVector
        return _rebuild(v, layer_activations=_transport(dict(v.layer_activations), g, what))
    if hasattr(v, "directions") and hasattr(v, "model_type"):  # repeng.ControlVector
        return _rebuild(v, directions=_transport(dict(v.directions), g, what))
    raise ArtifactError(
        f"cannot transport a {type(v).__name__} as a steering vector",
        hint="give a tensor/array of shape (d,) or (layers, d), a dict layer -> vector, a "
        "steering_vectors.SteeringVector or a repeng ControlVector",
    )


def _transport_array(x: Any, g: SignedPermutation, what: str) -> torch.Tensor | np.ndarray:
    if not isinstance(x, torch.Tensor | np.ndarray):
        raise ArtifactError(f"{what} is a {type(x).__name__}, not a tensor or array")
    is_float = x.is_floating_point() if isinstance(x, torch.Tensor) else np.asarray(x).dtype.kind == "f"
    if not is_float:
        raise ArtifactError(f"{what} has dtype {x.dtype}; steering vectors and directions are floating point")
    if x.ndim not in (1, 2):
        raise ArtifactError(f"{what} has shape {tuple(x.shape)}; expected (d,) or (layers, d)")
    check_width(x.shape[-1], g, f"{what} (shape {tuple(x.shape)})")
    check_finite(x, what)
    return g.apply(x, axis=-1)


def _rebuild(obj: Any, **fields: Any) -> Any:
    """A new object of ``obj``'s own class with ``fields`` replaced (dataclasses or plain objects)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **fields)
    out = copy.copy(obj)
    for name, value in fields.items():
        setattr(out, name, value)
    return out


# ------------------------------------------------------------------------------------- files
def transport_vector_file(src: str | Path, gauge: SignedPermutation, out: str | Path, perm_only: bool = False,
                          force: bool = False) -> Path:
    """Read a vector file, transport it, write ``out`` (same format as ``src``) atomically."""
    src, out = Path(src), Path(out)
    suffix = vector_suffix(src)
    if vector_suffix(out) != suffix:
        raise ArtifactError(f"output {out.name} must have the input's format ({suffix})",
                            hint=f"name the output like OUT{suffix}")
    g = as_applied(gauge, perm_only)
    meta = provenance(gauge, src, perm_only, "vector")
    if suffix == ".gguf":
        _transport_gguf(src, g, meta, out, force)
    elif suffix == ".npy":
        arr = _transport(read_npy(src), g, src.name)
        with atomic_path(out, force, inputs=(src,), kind="file") as tmp, open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
    elif suffix == ".safetensors":
        tensors, metadata = read_safetensors(src, what="vector file")
        if metadata.get("format") == "gaugeport.signed_permutation":
            raise ArtifactError(f"{src} is a gauge file, not a vector", hint="pass the artifact first, then --gauge")
        moved = {k: _transport_array(t, g, f"{src.name}:{k}") for k, t in tensors.items()}
        if not moved:
            raise ArtifactError(f"{src} holds no tensors")
        from safetensors.torch import save_file

        with atomic_path(out, force, inputs=(src,), kind="file") as tmp:
            save_file({k: t.contiguous() for k, t in moved.items()}, str(tmp), metadata={**metadata, **meta})
    else:
        obj = _transport(read_pt(src), g, src.name)
        with atomic_path(out, force, inputs=(src,), kind="file") as tmp:
            torch.save(obj, tmp)
    return out


def _transport_gguf(src: Path, g: SignedPermutation, meta: dict[str, str], out: Path, force: bool) -> None:
    """A repeng control vector: every direction moved, every other field kept, ``gaugeport.*`` fields added."""
    import gguf

    from gaugeport.transport.gguf_vectors import ControlVectorFile, read_control_vector_gguf, write_control_vector_gguf

    cv = read_control_vector_gguf(src)
    fields = dict(cv.fields)
    for key, value in meta.items():
        fields[f"gaugeport.{key.removeprefix('gaugeport_')}"] = (value, gguf.GGUFValueType.STRING, None)
    moved = ControlVectorFile(cv.model_hint, _transport(cv.directions, g, "vector"), fields)
    write_control_vector_gguf(moved, out, force=force, inputs=(src,))


def vector_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in VECTOR_SUFFIXES:
        raise ArtifactError(f"{path.name}: not a vector file format",
                            hint=f"vector files: {', '.join(VECTOR_SUFFIXES)}")
    return ".pt" if suffix == ".pth" else suffix


def read_pt(path: Path) -> Any:
    return load_torch(path, "vector file", hint="save only the tensors, e.g. torch.save(steering_vector."
                      "layer_activations, path) or torch.save(control_vector.directions, path)")


def read_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise CheckpointError(f"vector file not found: {path}")
    with open(path, "rb") as f:
        is_npy = f.read(6) == b"\x93NUMPY"
    if not is_npy:  # np.load would otherwise try to unpickle it and say so
        raise CheckpointError(f"cannot read {path}: not a .npy file (bad magic)", hint="the file is corrupt")
    from gaugeport.core.fileio import check_npy_size

    check_npy_size(path)
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):
            raise ArtifactError(f"{path} is an object array (pickled); refusing to unpickle it",
                                hint="save a plain float array: np.save(path, v.astype(np.float32))") from exc
        raise CheckpointError(f"cannot read {path}: {exc}", hint="the file is truncated or not a .npy") from exc
    except (OSError, EOFError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}", hint="the file is truncated or not a .npy") from exc
