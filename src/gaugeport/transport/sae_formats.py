"""SAE and dictionary formats beyond SAELens: EleutherAI sparsify, dictionary_learning, Gemma Scope.

Every format stores the same three kinds of tensor (docs/transport.md): an encoder that *reads* the
stream (its d axis moves), a decoder and decoder bias that *write* it (their d axis moves), and
feature-side tensors (encoder bias, thresholds, gates, ``k``) that stay as they are. Only the names
and axis orders differ, so each format is a table ``tensor name -> residual axes``; a tensor that is
in no table is refused, never passed through.

``sparsify`` (PyPI ``eai-sparsify``; ``SparseCoder.save_to_disk`` / ``load_from_disk``)
    one directory per hookpoint: ``cfg.json`` (``SparseCoderConfig`` + ``d_in``) and
    ``sae.safetensors`` (``safetensors.torch.save_model`` of the module): ``encoder.weight``
    (latents x d_in), ``encoder.bias``, ``W_dec`` (latents x d_in), ``b_dec`` (d_in) and, with a
    skip connection, ``W_skip`` (d_in x d_in). Transcoders (``transcode: true``) have the same
    tensors: both sides are stream-shaped. A training run's root holds one such directory per
    hookpoint (``layers.6``, ``layers.6.mlp``, ``embed_tokens``); each is transported, and its
    name is mapped to a site (:func:`gaugeport.transport.sites.module_to_site`).
``dictionary_learning`` (PyPI ``dictionary-learning``) ``ae.pt``
    a ``torch.save``d state dict (read with ``weights_only=True``): ``AutoEncoder`` (``bias``,
    ``encoder.weight`` dict x d, ``encoder.bias``, ``decoder.weight`` d x dict), ``GatedAutoEncoder``
    (``decoder_bias``, ``r_mag``, ``gate_bias``, ``mag_bias``), ``JumpReluAutoEncoder`` and
    ``MatryoshkaBatchTopKSAE`` (``W_enc`` d x dict, ``b_enc``, ``W_dec`` dict x d, ``b_dec``,
    ``threshold``, ``group_sizes``), ``AutoEncoderTopK`` / ``BatchTopKSAE`` (``encoder.*``,
    ``decoder.weight``, ``b_dec``, ``k``, ``threshold``). A directory with ``ae.pt`` keeps its
    ``config.json``, with a ``gaugeport`` entry added.
Gemma Scope ``params.npz``
    ``W_enc`` (d x f), ``W_dec`` (f x d), ``b_enc``, ``b_dec``, ``threshold`` (JumpReLU).

None of these formats normalises its input by subtracting a mean over coordinates (the one
normalisation a per-coordinate sign cannot go through), so every signed gauge applies; a config
that says otherwise (``normalize_activations: layer_norm``) is refused as for SAELens.

In memory: :func:`transport_sae_object` takes a ``sae_lens.SAE``, a sparsify ``SparseCoder`` or a
dictionary_learning module and returns a new object of the same type.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaugeport.core.checkpoint import WEIGHT_SUFFIXES
from gaugeport.core.errors import ArtifactError, CheckpointError, GaugeGroupError
from gaugeport.core.fileio import atomic_path, read_safetensors
from gaugeport.core.gauge import SignedPermutation
from gaugeport.transport._common import as_applied, check_finite, check_width, load_torch, provenance
from gaugeport.transport.sites import module_to_site, stream_hook_status

SAE_FORMATS = ("saelens", "sparsify", "dictionary-learning", "gemma-scope")

SPARSIFY_CFG, SPARSIFY_WEIGHTS = "cfg.json", "sae.safetensors"
DL_WEIGHTS, DL_CONFIG = "ae.pt", "config.json"
GEMMA_SCOPE_PARAMS = "params.npz"

# tensor -> its residual (stream) axes; () = feature-side, untouched
SPARSIFY_AXES: dict[str, tuple[int, ...]] = {
    "encoder.weight": (1,), "encoder.bias": (), "W_dec": (1,), "b_dec": (0,), "W_skip": (0, 1)}
DICTIONARY_LEARNING_AXES: dict[str, tuple[int, ...]] = {
    # AutoEncoder, AutoEncoderNew, GatedAutoEncoder, AutoEncoderTopK, BatchTopKSAE (nn.Linear: out x in)
    "encoder.weight": (1,), "encoder.bias": (), "decoder.weight": (0,), "decoder.bias": (0,),
    "bias": (0,), "decoder_bias": (0,), "r_mag": (), "gate_bias": (), "mag_bias": (),
    # JumpReluAutoEncoder, MatryoshkaBatchTopKSAE (plain parameters: d x f and f x d)
    "W_enc": (0,), "b_enc": (), "W_dec": (1,), "b_dec": (0,), "threshold": (), "k": (), "group_sizes": (),
}
GEMMA_SCOPE_AXES: dict[str, tuple[int, ...]] = {
    "W_enc": (0,), "W_dec": (1,), "b_enc": (), "b_dec": (0,), "threshold": ()}


# ------------------------------------------------------------------------------------- detection
def detect_sae_format(path: str | Path) -> str | None:
    """The SAE format of ``path`` from its content, or None when it is no SAE gaugeport knows."""
    path = Path(path)
    if path.is_dir():
        names = {p.name for p in path.iterdir()}
        if {"cfg.json", "sae_weights.safetensors"} <= names:
            return "saelens"
        if {SPARSIFY_CFG, SPARSIFY_WEIGHTS} <= names:
            return "sparsify"
        if DL_WEIGHTS in names:
            return "dictionary-learning"
        if GEMMA_SCOPE_PARAMS in names:
            return "gemma-scope"
        subdirs = [p for p in path.iterdir() if p.is_dir()]
        if subdirs and all({SPARSIFY_CFG, SPARSIFY_WEIGHTS} <= {q.name for q in p.iterdir()} for p in subdirs):
            return "sparsify"
        return None
    if path.suffix == ".npz" and _npz_keys(path) >= {"W_enc", "W_dec", "b_dec"}:
        return "gemma-scope"
    if path.suffix in (".pt", ".pth"):
        obj = load_torch(path, "state dict")
        if isinstance(obj, Mapping) and _looks_like_dictionary(obj):
            return "dictionary-learning"
    return None


def _looks_like_dictionary(state: Mapping[Any, Any]) -> bool:
    keys = set(state)
    return bool(keys) and all(isinstance(k, str) for k in keys) and (
        {"encoder.weight", "decoder.weight"} <= keys or {"W_enc", "W_dec"} <= keys)


def _npz_keys(path: Path) -> set[str]:
    try:
        with zipfile.ZipFile(path) as z:
            return {n.removesuffix(".npy") for n in z.namelist()}
    except (zipfile.BadZipFile, OSError):
        return set()


# ------------------------------------------------------------------------------------- state dicts
def transport_state(state: Mapping[str, Any], axes: Mapping[str, tuple[int, ...]], g: SignedPermutation,
                    fmt: str) -> dict[str, Any]:
    """Every tensor (torch or numpy) moved on its residual axes; an unknown name is refused."""
    out: dict[str, Any] = {}
    for name, t in state.items():
        if name not in axes:
            raise ArtifactError(f"{fmt} tensor {name!r} is not one gaugeport knows how to transform",
                                hint=f"known {fmt} tensors: {', '.join(sorted(axes))}; an unknown tensor is "
                                "never passed through untransformed")
        check_finite(t, f"{fmt} tensor {name}")
        moved = t
        for axis in axes[name]:
            if axis >= moved.ndim:
                raise ArtifactError(f"{fmt} tensor {name} has shape {tuple(moved.shape)}; expected a residual "
                                    f"axis {axis}")
            check_width(moved.shape[axis], g, f"{fmt} tensor {name} (shape {tuple(moved.shape)}, axis {axis})")
            moved = g.apply(moved, axis=axis)
        out[name] = moved
    return out


def _check_normalisation(cfg: Mapping[str, Any], g: SignedPermutation, fmt: str) -> None:
    norm = cfg.get("normalize_activations")
    if norm in ("layer_norm", "layernorm") and not g.is_global_sign:
        raise GaugeGroupError(
            f"this {fmt} SAE normalises its input with a LayerNorm ({norm!r}), which subtracts the mean over "
            "coordinates: flipping single coordinates changes that mean",
            hint="its gauge group is permutations plus one global sign; use --perm-only or a gauge whose signs "
            "are all equal")


# ------------------------------------------------------------------------------------- sparsify
def transport_sparsify_dir(src_dir: str | Path, gauge: SignedPermutation, out_dir: str | Path, perm_only: bool = False,
                           force: bool = False) -> Path:
    """A sparsify hookpoint directory, or a run's root with one directory per hookpoint."""
    src, out = Path(src_dir), Path(out_dir)
    g = as_applied(gauge, perm_only)
    stamp = provenance(gauge, src, perm_only, "sae:sparsify")
    single = (src / SPARSIFY_CFG).is_file()
    plan: dict[str, tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, str]]] = {}
    for sub in [src] if single else sorted(p for p in src.iterdir() if p.is_dir()):
        plan["." if single else sub.name] = _sparsify_one(sub, g, stamp, hookpoint=sub.name)
    copied = [] if single else _other_files(src, {p.name for p in src.iterdir() if p.is_dir()})
    from safetensors.torch import save_file

    with atomic_path(out, force, inputs=(src,), kind="directory") as tmp:
        tmp.mkdir()
        for name, (cfg, tensors, meta) in plan.items():
            d = tmp if name == "." else tmp / name
            d.mkdir(exist_ok=True)
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(d / SPARSIFY_WEIGHTS), metadata=meta)
            (d / SPARSIFY_CFG).write_text(json.dumps(cfg))
        for name in copied:
            shutil.copy2(src / name, tmp / name)
    return out


def _sparsify_one(path: Path, g: SignedPermutation, stamp: dict[str, str],
                  hookpoint: str) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, str]]:
    cfg = _read_json(path / SPARSIFY_CFG)
    if not (path / SPARSIFY_WEIGHTS).is_file():
        raise ArtifactError(f"{path} has {SPARSIFY_CFG} but no {SPARSIFY_WEIGHTS}")
    extra = _other_files(path, {SPARSIFY_CFG, SPARSIFY_WEIGHTS})
    if extra:
        raise ArtifactError(f"{path} holds {', '.join(extra)} besides the sparsify SAE",
                            hint="move other files out of the hookpoint directory first")
    status = stream_hook_status(hookpoint)
    if status == "off-stream":
        raise ArtifactError(f"sparsify hookpoint {hookpoint!r} is not stream-shaped",
                            hint="a residual gauge says nothing about MLP-hidden, head or attention axes")
    _check_normalisation(cfg, g, "sparsify")
    tensors, meta = read_safetensors(path / SPARSIFY_WEIGHTS, what="sparsify weights")
    moved = transport_state(tensors, SPARSIFY_AXES, g, "sparsify")  # an unknown tensor is named first
    check_sparsify_shapes(cfg, tensors, path)
    site = module_to_site(hookpoint)
    out_stamp = {**stamp, "gaugeport_hookpoint": hookpoint, **({"gaugeport_site": site} if site else {})}
    # provenance goes into the safetensors metadata: load_from_disk warns about unknown cfg.json keys
    return cfg, moved, {**meta, **out_stamp}


_SPARSIFY_FIELDS = {"encoder.weight": ("num_latents", "d_in"), "encoder.bias": ("num_latents",),
                    "W_dec": ("num_latents", "d_in"), "b_dec": ("d_in",), "W_skip": ("d_in", "d_in")}


def check_sparsify_shapes(cfg: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """A sparsify ``cfg.json`` agrees with its weights: the encoder and decoder bias are there, ``d_in`` and
    ``num_latents`` (0: derived from ``expansion_factor``) match their shapes, ``skip_connection`` matches
    ``W_skip``."""
    hint = "the config and the weights disagree: the SAE directory is corrupt or mixed from two SAEs"
    missing = [n for n in ("encoder.weight", "encoder.bias", "b_dec") if n not in tensors]
    if missing:
        raise ArtifactError(f"{path}: the sparsify SAE lacks {', '.join(missing)}",
                            hint="the SAE is incomplete; save it again with SparseCoder.save_to_disk")
    want: dict[str, int | None] = {}
    for key in ("d_in", "num_latents"):
        val = cfg.get(key)
        if val is not None and (isinstance(val, bool) or not isinstance(val, int) or val < 0):
            raise ArtifactError(f"{path / SPARSIFY_CFG}: {key} = {val!r} is not a non-negative integer", hint=hint)
        want[key] = val or None  # num_latents 0: from expansion_factor, checked through the shapes below
    if want["d_in"] is None:
        raise ArtifactError(f"{path / SPARSIFY_CFG} gives no d_in", hint=hint)
    for name, fields in _SPARSIFY_FIELDS.items():
        t = tensors.get(name)
        if t is None:
            continue
        if t.ndim != len(fields):
            raise ArtifactError(f"{path}: sparsify tensor {name} has shape {tuple(t.shape)}, expected "
                                f"{len(fields)} axes ({' x '.join(fields)})", hint=hint)
        for axis, key in enumerate(fields):
            if want[key] is not None and t.shape[axis] != want[key]:
                raise ArtifactError(f"{path / SPARSIFY_CFG} says {key}={want[key]} but {name} has shape "
                                    f"{tuple(t.shape)}", hint=hint)
            want[key] = int(t.shape[axis])  # later tensors must agree with the first
    if bool(cfg.get("skip_connection", False)) != ("W_skip" in tensors):
        raise ArtifactError(f"{path / SPARSIFY_CFG} says skip_connection={cfg.get('skip_connection', False)!r} but "
                            f"the weights {'lack' if 'W_skip' not in tensors else 'hold'} W_skip", hint=hint)


# ------------------------------------------------------------------------------------- dictionary_learning
def transport_dictionary_learning(src: str | Path, gauge: SignedPermutation, out: str | Path, perm_only: bool = False,
                                  force: bool = False) -> Path:
    """An ``ae.pt`` state dict, or a directory holding one (plus its ``config.json``)."""
    src, out = Path(src), Path(out)
    g = as_applied(gauge, perm_only)
    weights = src / DL_WEIGHTS if src.is_dir() else src
    state = load_torch(weights, "dictionary_learning state dict",
                       hint="save the state dict (torch.save(ae.state_dict(), path)), not the module")
    if not isinstance(state, Mapping) or not _looks_like_dictionary(state):
        raise ArtifactError(f"{weights} is not a dictionary_learning state dict",
                            hint="expected encoder.weight + decoder.weight or W_enc + W_dec")
    moved = transport_state(state, DICTIONARY_LEARNING_AXES, g, "dictionary_learning")
    stamp = provenance(gauge, src, perm_only, "sae:dictionary-learning")
    if not src.is_dir():
        with atomic_path(out, force, inputs=(src,), kind="file") as tmp:
            torch.save(moved, tmp)
        return out
    cfg = _read_json(src / DL_CONFIG) if (src / DL_CONFIG).is_file() else None
    if cfg is not None:
        _check_normalisation(cfg.get("trainer", cfg) if isinstance(cfg.get("trainer"), dict) else cfg, g,
                             "dictionary_learning")
    copied = _other_files(src, {DL_WEIGHTS, DL_CONFIG})
    with atomic_path(out, force, inputs=(src,), kind="directory") as tmp:
        tmp.mkdir()
        torch.save(moved, tmp / DL_WEIGHTS)
        if cfg is not None:
            (tmp / DL_CONFIG).write_text(json.dumps({**cfg, "gaugeport": stamp}, indent=2))
        for name in copied:
            shutil.copy2(src / name, tmp / name)
    return out


# ------------------------------------------------------------------------------------- Gemma Scope
def transport_gemma_scope(src: str | Path, gauge: SignedPermutation, out: str | Path, perm_only: bool = False,
                          force: bool = False) -> Path:
    """A Gemma Scope ``params.npz`` (or a directory holding one); written with the same keys and dtypes."""
    src, out = Path(src), Path(out)
    g = as_applied(gauge, perm_only)
    params = src / GEMMA_SCOPE_PARAMS if src.is_dir() else src
    arrays = _read_npz(params)
    moved = transport_state(arrays, GEMMA_SCOPE_AXES, g, "Gemma Scope")
    if not src.is_dir():
        with atomic_path(out, force, inputs=(src,), kind="file") as tmp:
            _write_npz(tmp, moved)
        return out
    copied = _other_files(src, {GEMMA_SCOPE_PARAMS})
    with atomic_path(out, force, inputs=(src,), kind="directory") as tmp:
        tmp.mkdir()
        _write_npz(tmp / GEMMA_SCOPE_PARAMS, moved)
        for name in copied:
            shutil.copy2(src / name, tmp / name)
    return out


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise CheckpointError(f"Gemma Scope parameters not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}",
                              hint="the file is truncated or corrupt, or holds pickled objects") from exc


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # np.savez on a path would append ".npz" to the temporary name
    path.write_bytes(buf.getvalue())


# ------------------------------------------------------------------------------------- shared
def _read_json(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"not found: {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})", hint="the file is truncated or corrupt") from exc
    if not isinstance(cfg, dict):
        raise ArtifactError(f"{path} is not a JSON object")
    return cfg


def _other_files(src: Path, handled: set[str]) -> list[str]:
    """Files to copy as they are; a weight file or directory gaugeport does not know is refused."""
    out = []
    for p in sorted(src.iterdir()):
        if p.name in handled:
            continue
        if p.is_dir() or p.suffix in (*WEIGHT_SUFFIXES, ".npz", ".npy"):
            raise ArtifactError(f"{src} contains {p.name}, which gaugeport does not know how to transport",
                                hint="copying it untransformed would leave stale coordinates behind; move it out "
                                "of the SAE directory first")
        out.append(p.name)
    return out


def transport_sae_path(src: str | Path, gauge: SignedPermutation, out: str | Path, fmt: str | None = None,
                       perm_only: bool = False, force: bool = False) -> Path:
    """Detect (or take) the SAE format of ``src`` and transport it to ``out`` in the same format."""
    detected = detect_sae_format(src)
    fmt = fmt or detected
    if fmt is None:
        raise ArtifactError(f"{src} is not an SAE in a format gaugeport knows",
                            hint="formats: SAELens dir (cfg.json + sae_weights.safetensors), sparsify dir "
                            "(cfg.json + sae.safetensors), dictionary_learning ae.pt, Gemma Scope params.npz")
    if detected is not None and fmt != detected:
        raise ArtifactError(f"{src} looks like a {detected} SAE, not {fmt}",
                            hint="leave the format out to detect it")
    if fmt == "saelens":
        from gaugeport.transport.sae import transport_sae_dir

        return transport_sae_dir(src, gauge, out, perm_only=perm_only, force=force)
    if fmt == "sparsify":
        return transport_sparsify_dir(src, gauge, out, perm_only=perm_only, force=force)
    if fmt == "dictionary-learning":
        return transport_dictionary_learning(src, gauge, out, perm_only=perm_only, force=force)
    if fmt == "gemma-scope":
        return transport_gemma_scope(src, gauge, out, perm_only=perm_only, force=force)
    raise ArtifactError(f"unknown SAE format {fmt!r}", hint="formats: " + ", ".join(SAE_FORMATS))


# ------------------------------------------------------------------------------------- in memory
def transport_sae_object(sae: Any, gauge: SignedPermutation, perm_only: bool = False) -> Any:
    """A transported copy of an in-memory SAE, of the same type (the input is not modified).

    ``sae_lens.SAE`` (any architecture; its config is checked as for SAELens directories), sparsify
    ``SparseCoder`` / ``Sae``, or a dictionary_learning module.
    """
    g = as_applied(gauge, perm_only)
    if not isinstance(sae, torch.nn.Module):
        raise ArtifactError(f"cannot transport a {type(sae).__name__} as an SAE",
                            hint="give a sae_lens.SAE, a sparsify SparseCoder or a dictionary_learning module")
    module = type(sae).__module__.split(".")[0]
    state = sae.state_dict()
    if module == "sae_lens":
        from gaugeport.transport.sae import transport_sae_state

        cfg = sae.cfg.to_dict() if hasattr(sae.cfg, "to_dict") else dict(vars(sae.cfg))
        new_state = transport_sae_state(state, cfg, g)
    elif module == "sparsify":
        _check_normalisation(vars(sae.cfg) if hasattr(sae, "cfg") else {}, g, "sparsify")
        new_state = transport_state(state, SPARSIFY_AXES, g, "sparsify")
    elif _looks_like_dictionary(state):
        new_state = transport_state(state, DICTIONARY_LEARNING_AXES, g, "dictionary_learning")
    else:
        raise ArtifactError(f"{type(sae).__module__}.{type(sae).__name__} is not an SAE type gaugeport knows",
                            hint="supported: sae_lens.SAE, sparsify SparseCoder, dictionary_learning modules")
    out = copy.deepcopy(sae)
    out.load_state_dict(new_state)
    return out
