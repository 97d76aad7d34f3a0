"""Sparse autoencoders and transcoders in SAELens' on-disk format (docs/transport.md).

An SAE reads the stream with ``W_enc`` (d_in x d_sae: residual axis 0) and writes it with ``W_dec``
(d_sae x d_out: residual axis 1) and ``b_dec`` (d_out), so ``encode(G x) = encode(x)`` and
``decode`` lands in G's coordinates when all three are signed-permuted. Feature-side tensors
(``b_enc``, thresholds, gates) index features, not coordinates, and stay as they are.
Transcoders read one site and write another (both stream-shaped): ``W_enc`` is the d_in side,
``W_dec``/``b_dec`` the d_out side, and a skip transcoder's ``W_skip`` (d_out x d_in) has both.

A directory is ``cfg.json`` + ``sae_weights.safetensors`` (+ ``sparsity.safetensors``, copied; a
training checkpoint adds ``trainer_state.pt`` with Adam moments, transformed like the weights, and
``activation_scaler.json`` + ``activation_whitening.safetensors``). While whitening is not yet
folded, the SAE reads whitened activations ``z = (x - mean) @ M``, whose axes are eigen-directions,
not coordinates: then only the whitening statistics' coordinate axes move (``mean``, ``M`` axis 0,
``M^-1`` axis 1) and the SAE's weights and moments stay as they are.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gaugeport.core.checkpoint import WEIGHT_SUFFIXES
from gaugeport.core.errors import ArtifactError, CheckpointError, GaugeGroupError
from gaugeport.core.fileio import atomic_path, read_safetensors
from gaugeport.core.gauge import SignedPermutation
from gaugeport.transport._common import (
    as_applied,
    check_finite,
    check_width,
    load_torch,
    provenance,
)
from gaugeport.transport.rules import tensor_rules
from gaugeport.transport.sites import hook_to_site, stream_hook_status

SAE_CFG, SAE_WEIGHTS, SPARSITY = "cfg.json", "sae_weights.safetensors", "sparsity.safetensors"
TRAINER_STATE, SCALER_CFG, WHITENING = "trainer_state.pt", "activation_scaler.json", "activation_whitening.safetensors"

# which SAE tensors carry residual coordinates, on which stored axes: rows of transport/rules.json
UNSUPPORTED = {"temporal": "its attention layers mix the stream across positions in learned heads "
                           "(not yet described by a transport rule)"}
COPIED_FILES = {SPARSITY, SCALER_CFG}


# ------------------------------------------------------------------------------------- in memory
def transport_sae_state(state: Mapping[str, torch.Tensor], cfg: Mapping[str, Any] | None, gauge: SignedPermutation,
                        perm_only: bool = False, *, whitened: bool = False) -> dict[str, torch.Tensor]:
    """A new SAELens state dict in the gauge's target coordinates.

    ``cfg`` (the ``cfg.json`` dict, or ``None`` for a plain SAE) is checked for what a gauge cannot
    go through: off-stream hooks, ``hook_z`` reshaping, LayerNorm activation normalisation with
    per-coordinate signs. ``whitened``: the weights read unfolded whitened activations (see the
    module docstring), so they stay as they are.
    """
    g = as_applied(gauge, perm_only)
    check_sae_cfg(dict(cfg or {}), g)
    for name in state:  # an unknown tensor is named first
        sae_tensor_axes(name)
    check_sae_shapes(dict(cfg or {}), state)
    out = {}
    for name, t in state.items():
        check_finite(t, f"SAE tensor {name}")
        axes = sae_tensor_axes(name)
        out[name] = t if whitened else _move(t, axes, g, f"SAE tensor {name}")
    return out


_SHAPE_FIELDS = {"W_enc": ("d_in", "d_sae"), "W_dec": ("d_sae", "d_out"), "b_enc": ("d_sae",), "b_dec": ("d_out",)}


def check_sae_shapes(cfg: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> None:
    """``cfg.json``'s widths (d_in, d_sae, d_out) agree with the weights' shapes."""
    want = {"d_in": cfg.get("d_in"), "d_sae": cfg.get("d_sae"), "d_out": cfg.get("d_out", cfg.get("d_in"))}
    for key, val in want.items():
        if val is not None and (isinstance(val, bool) or not isinstance(val, int) or val <= 0):
            raise ArtifactError(f"cfg.json: {key} = {val!r} is not a positive integer",
                                hint="the SAE config is corrupt or hand-edited")
    missing = [n for n in ("W_dec", "b_dec") if n not in state]
    if missing:
        raise ArtifactError(f"the SAE lacks {', '.join(missing)} (every SAELens SAE writes the stream with W_dec "
                            "and b_dec)",
                            hint="the SAE is incomplete; save it again with SAE.save_model")
    for name, fields in _SHAPE_FIELDS.items():
        t = state.get(name)
        if t is None:
            continue
        if t.ndim != len(fields):
            raise ArtifactError(f"SAE tensor {name} has shape {tuple(t.shape)}, expected {len(fields)} axes "
                                f"({' x '.join(fields)})", hint="the SAE weights are corrupt")
        for axis, key in enumerate(fields):
            if want[key] is not None and t.shape[axis] != want[key]:
                raise ArtifactError(
                    f"cfg.json says {key}={want[key]} but {name} has shape {tuple(t.shape)}",
                    hint="the config and the weights disagree: the SAE directory is corrupt or mixed from two SAEs")


def sae_tensor_axes(name: str) -> tuple[int, ...]:
    """The stored axes of SAE tensor ``name`` that carry residual coordinates (``()``: feature side)."""
    rules = tensor_rules("sae")
    if name in rules:
        return rules[name].axes
    residual = sorted(n for n, r in rules.items() if r.axes)
    feature = sorted(n for n, r in rules.items() if not r.axes)
    raise ArtifactError(
        f"SAE tensor {name!r} is not one gaugeport knows how to transform",
        hint=f"known: residual-side {residual}, feature-side {feature}; "
        "an unknown tensor is never passed through untransformed",
    )


def _move(t: torch.Tensor, axes: tuple[int, ...], g: SignedPermutation, what: str) -> torch.Tensor:
    for axis in axes:
        if axis >= t.ndim:
            raise ArtifactError(f"{what} has shape {tuple(t.shape)}; expected a residual axis {axis}")
        check_width(t.shape[axis], g, f"{what} (shape {tuple(t.shape)}, axis {axis})")
        t = g.apply(t, axis=axis)
    return t


def check_sae_cfg(cfg: Mapping[str, Any], g: SignedPermutation) -> None:
    """Refuse what the gauge cannot go through, with the reason."""
    arch = cfg.get("architecture", "standard")
    if arch in UNSUPPORTED:
        raise ArtifactError(f"SAE architecture {arch!r} is not supported: {UNSUPPORTED[arch]}")
    if cfg.get("reshape_activations") == "hook_z":
        raise ArtifactError("this SAE reads attention head outputs (hook_z), which are not the residual stream",
                            hint="gaugeport transports SAEs on residual-stream sites; hook_z lives on head axes")
    for key in ("hook_name", "hook_name_out"):
        hook = sae_hook_name(cfg, key)
        if stream_hook_status(hook) == "off-stream":
            raise ArtifactError(f"the SAE's {key} {hook!r} is not a residual-stream site",
                                hint="a residual gauge says nothing about MLP-hidden, head or attention-pattern axes")
    if cfg.get("normalize_activations") == "layer_norm" and not g.is_global_sign:
        raise GaugeGroupError(
            "this SAE normalises its input with a LayerNorm (normalize_activations='layer_norm'), which "
            "subtracts the mean over coordinates: flipping single coordinates changes that mean",
            hint="the SAE's gauge group is permutations plus one global sign, as for LayerNorm models; "
            "use --perm-only or a gauge whose signs are all equal",
        )


def sae_hook_name(cfg: Mapping[str, Any], key: str = "hook_name") -> str | None:
    """SAELens >= 6 keeps the hook under ``metadata``; older configs at the top level (or ``hook_point``)."""
    meta = cfg.get("metadata") or {}
    name = meta.get(key) or cfg.get(key)
    if name is None and key == "hook_name":
        name = cfg.get("hook_point")
    return name


def sae_site(cfg: Mapping[str, Any]) -> str | None:
    """gaugeport's site name for the SAE's hook (``resid_post.3`` for ``blocks.3.hook_resid_post``)."""
    hook = sae_hook_name(cfg)
    return hook_to_site(hook) if hook else None


# ------------------------------------------------------------------------------------- directories
def transport_sae_dir(src_dir: str | Path, gauge: SignedPermutation, out_dir: str | Path, perm_only: bool = False,
                      force: bool = False) -> Path:
    """Transport an SAELens SAE directory; ``out_dir`` loads with ``SAE.load_from_disk`` as before."""
    src, out = Path(src_dir), Path(out_dir)
    cfg = _read_cfg(src)
    g = as_applied(gauge, perm_only)
    whitened = _has_unfolded_whitening(src)
    if whitened and "d_out" in cfg:
        raise ArtifactError("a transcoder with unfolded whitening: its output side is not covered by the whitening "
                            "statistics", hint="fold the whitening into the weights first (SAELens does at the end "
                            "of training), then transport")
    weights, weights_meta = read_safetensors(src / SAE_WEIGHTS, what="SAE weights")
    moved = transport_sae_state(weights, cfg, g, whitened=whitened)
    extra = _plan_other_files(src)
    stamp = provenance(gauge, src, perm_only, "sae")
    site = sae_site(cfg)
    if site:
        stamp["gaugeport_site"] = site
    trainer_state = _transport_trainer_state(src / TRAINER_STATE, cfg, g, whitened) if TRAINER_STATE in extra else None
    # statistics on disk always carry coordinates on their x-side axes, folded or not
    whitening = _transport_whitening(src / WHITENING, g) if WHITENING in extra else None
    from safetensors.torch import save_file

    with atomic_path(out, force, inputs=(src,), kind="directory") as tmp:
        tmp.mkdir()
        save_file({k: v.contiguous() for k, v in moved.items()}, str(tmp / SAE_WEIGHTS),
                  metadata={**weights_meta, **stamp})
        # metadata is free-form in SAELens (SAEMetadata keeps unknown keys), so provenance survives a load/save
        out_cfg = {**cfg, "metadata": {**(cfg.get("metadata") or {}), "gaugeport": stamp}}
        (tmp / SAE_CFG).write_text(json.dumps(out_cfg, indent=2))
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_STATE)
        if whitening is not None:
            save_file(whitening, str(tmp / WHITENING), metadata=stamp)
        for name in extra - {TRAINER_STATE, WHITENING}:
            shutil.copy2(src / name, tmp / name)
    return out


def _read_cfg(src: Path) -> dict[str, Any]:
    if not src.is_dir():
        raise CheckpointError(f"SAE directory not found: {src}")
    if not (src / SAE_CFG).is_file() or not (src / SAE_WEIGHTS).is_file():
        raise ArtifactError(f"{src} is not an SAELens SAE directory (needs {SAE_CFG} and {SAE_WEIGHTS})")
    try:
        cfg = json.loads((src / SAE_CFG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{src / SAE_CFG} is not valid JSON ({exc})",
                              hint="the file is truncated or corrupt") from exc
    if not isinstance(cfg, dict):
        raise ArtifactError(f"{src / SAE_CFG} is not a JSON object")
    return cfg


def _plan_other_files(src: Path) -> set[str]:
    """Files besides cfg and weights: known ones are handled, unknown non-weight files copied, the rest refused."""
    names = set()
    for p in src.iterdir():
        if p.name in (SAE_CFG, SAE_WEIGHTS):
            continue
        known = p.name in COPIED_FILES | {TRAINER_STATE, WHITENING}
        if p.is_dir() or (not known and p.suffix in WEIGHT_SUFFIXES):
            raise ArtifactError(f"{src} contains {p.name}, which gaugeport does not know how to transport",
                                hint="copying it untransformed would leave stale coordinates behind; "
                                "move it out of the SAE directory first")
        names.add(p.name)
    return names


def _has_unfolded_whitening(src: Path) -> bool:
    if not (src / WHITENING).is_file():
        return False
    if (src / SCALER_CFG).is_file():
        try:
            return bool(json.loads((src / SCALER_CFG).read_text()).get("has_whitening", True))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{src / SCALER_CFG} is not valid JSON ({exc})") from exc
    return True


def _transport_whitening(path: Path, g: SignedPermutation) -> dict[str, torch.Tensor]:
    tensors, _ = read_safetensors(path, what="whitening statistics")
    rules = tensor_rules("sae_whitening")
    if set(tensors) != set(rules):
        raise ArtifactError(f"{path} holds {sorted(tensors)}; expected {sorted(rules)}")
    for name, t in tensors.items():
        check_finite(t, f"whitening {name}")
    return {name: _move(t, rules[name].axes, g, f"whitening {name}") for name, t in tensors.items()}


def _transport_trainer_state(path: Path, cfg: dict[str, Any], g: SignedPermutation, whitened: bool) -> Any:
    """SAELens ``trainer_state.pt``: Adam moments follow their parameters (in ``sae.parameters()`` order)."""
    from gaugeport.transport.adamw import transport_param_state

    state = load_torch(path, "SAELens trainer state")
    if whitened:  # weights (and so their moments) live in whitened coordinates
        return state
    opt = state.get("optimizer") if isinstance(state, dict) else None
    if not isinstance(opt, dict) or "param_groups" not in opt:
        raise ArtifactError(f"{path} has no optimizer state dict under 'optimizer'")
    shapes = _sae_param_shapes(cfg)
    ids = [i for group in opt["param_groups"] for i in group["params"]]
    if len(ids) != len(shapes):
        raise ArtifactError(f"{path}: the optimizer holds {len(ids)} parameters, the SAE has {len(shapes)}",
                            hint="a custom optimizer layout; gaugeport maps Adam state by sae.parameters() order")
    new_state = dict(opt["state"])
    for i, (name, shape) in zip(ids, shapes.items(), strict=True):
        if i in new_state:
            new_state[i] = transport_param_state(new_state[i], shape, sae_tensor_axes(name), "signed", g, name)
    return {**state, "optimizer": {**opt, "state": new_state}}


def _sae_param_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes in the order SAELens' trainer hands them to Adam."""
    from gaugeport.core.errors import require

    registry: Any = require("sae_lens.registry", "sae", "the optimizer state of a SAELens trainer checkpoint "
                            "(its parameter order)", package="sae_lens")
    get_sae_training_class = registry.get_sae_training_class

    arch = cfg.get("architecture", "standard")
    try:
        cls, cfg_cls = get_sae_training_class(arch)
    except KeyError as exc:
        raise ArtifactError(f"SAELens has no training class for architecture {arch!r}") from exc
    sae_cfg = cfg_cls.from_dict({**cfg, "device": "meta"})
    sae = cls(sae_cfg)
    return {n: tuple(p.shape) for n, p in sae.named_parameters()}
