"""The full-network gauge: the residual signed permutation plus, per layer, the MLP units and heads.

Convention, as for the residual gauge: unit ``i`` of A is unit ``perm[i]`` of B, multiplied by
``signs[i]``. Per layer ``L``:

``mlp``    a signed permutation of the MLP's hidden units (signs only where the block is gated:
           ``act(gate) * up`` is odd in ``up``; a gate or an ungated GELU/ReLU unit is not)
``heads``  a permutation of the query heads that respects grouped-query attention: query head
           ``h`` of key/value group ``g`` goes to group ``kv[g]``, so heads move in whole groups
           and are reordered inside them; ``kv`` (the groups' permutation) follows from ``heads``

A gauge without hidden parts (``layers=()``) acts on the residual stream only, exactly like a
:class:`~gaugeport.core.gauge.SignedPermutation`. Composition and inverse follow the residual
gauge's rules (``h @ g`` applies ``g`` first).

File format: version 2 of ``gaugeport.signed_permutation``: ``perm`` and ``signs`` as in version
1, plus ``layers.{L}.mlp.perm``, ``layers.{L}.mlp.signs`` and ``layers.{L}.heads.perm`` and the
hidden sizes in the metadata. Version-1 files load as residual-only full gauges; a version-1
reader (``load_gauge``) reads the residual part of a version-2 file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaugeport.core.apply import check_gauge_fits, rewrite_checkpoint, transform_tensor
from gaugeport.core.archspec import ArchSpec, spec_for_config
from gaugeport.core.checkpoint import Checkpoint
from gaugeport.core.errors import CheckpointError, GaugeError, GaugeGroupError
from gaugeport.core.fileio import atomic_path, atomic_save_safetensors
from gaugeport.core.gauge import (  # noqa: F401  (SUPPORTED_VERSIONS and LayerGauge re-exported)
    CONVENTION,
    SUPPORTED_VERSIONS,
    LayerGauge,
    SignedPermutation,
    chain_product,
    gauge_file_metadata,
    read_gauge_tensors,
    read_layer_part,
    read_residual_part,
)
from gaugeport.core.hidden import HiddenDims, HiddenRule, HiddenSpec, get_hidden_spec

FULL_FORMAT_VERSION = "2"


@dataclass(frozen=True, eq=False)
class FullGauge:
    """Residual gauge plus one :class:`LayerGauge` per layer (``layers=()``: residual only)."""

    residual: SignedPermutation
    layers: tuple[LayerGauge, ...] = ()

    # ----------------------------------------------------------------- constructors
    @classmethod
    def identity(cls, d: int, dims: HiddenDims | None = None) -> FullGauge:
        if dims is None:
            return cls(SignedPermutation.identity(d))
        layer = LayerGauge(SignedPermutation.identity(dims.mlp), SignedPermutation.identity(dims.n_heads),
                           dims.n_kv_heads)
        return cls(SignedPermutation.identity(d), (layer,) * dims.n_layers)

    @classmethod
    def random(cls, d: int, dims: HiddenDims, seed: int = 0, *, residual_signs: bool = True,
               mlp_signs: bool = True) -> FullGauge:
        """A uniformly random gauge; signs only where ``residual_signs`` / ``mlp_signs`` allow them."""
        rng = np.random.default_rng(seed)
        res = _random_sp(rng, d, residual_signs)
        layers = []
        gs = dims.group_size
        for _ in range(dims.n_layers):
            mlp = _random_sp(rng, dims.mlp, mlp_signs)
            groups = rng.permutation(dims.n_kv_heads)
            heads = np.concatenate([groups[g] * gs + rng.permutation(gs) for g in range(dims.n_kv_heads)])
            layers.append(LayerGauge(mlp, SignedPermutation(heads, np.ones(dims.n_heads, dtype=np.int8)),
                                     dims.n_kv_heads))
        return cls(res, tuple(layers))

    @classmethod
    def from_residual(cls, g: SignedPermutation) -> FullGauge:
        return cls(g)

    # ----------------------------------------------------------------- properties
    @property
    def d(self) -> int:
        return self.residual.d

    @property
    def is_full(self) -> bool:
        return bool(self.layers)

    def dims(self) -> HiddenDims | None:
        if not self.layers:
            return None
        lg = self.layers[0]
        return HiddenDims(len(self.layers), lg.mlp.d, lg.heads.d, lg.n_kv_heads, 0)

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.residual.perm.tobytes() + self.residual.signs.tobytes())
        for lg in self.layers:
            h.update(lg.mlp.perm.tobytes() + lg.mlp.signs.tobytes() + lg.heads.perm.tobytes())
        return h.hexdigest()[:16]

    # ----------------------------------------------------------------- algebra
    def inverse(self) -> FullGauge:
        return FullGauge(self.residual.inverse(), tuple(lg.inverse() for lg in self.layers))

    def __matmul__(self, other: FullGauge) -> FullGauge:
        """``self @ other``: apply ``other`` first. A residual-only side acts as identity on hidden axes."""
        if not isinstance(other, FullGauge):
            return NotImplemented
        if self.d != other.d:
            raise GaugeError(f"compose: width mismatch between gauges (d={self.d} vs d={other.d})")
        if self.layers and other.layers:
            if len(self.layers) != len(other.layers):
                raise GaugeError(f"compose: {len(other.layers)} layers vs {len(self.layers)}")
            for a, b in zip(self.layers, other.layers, strict=True):
                if a.mlp.d != b.mlp.d or a.heads.d != b.heads.d or a.n_kv_heads != b.n_kv_heads:
                    raise GaugeError("compose: the gauges' hidden sizes differ (MLP units or heads)")
            layers = tuple(a @ b for a, b in zip(self.layers, other.layers, strict=True))
        else:
            layers = self.layers or other.layers
        return FullGauge(self.residual @ other.residual, layers)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FullGauge):
            return NotImplemented
        return self.residual == other.residual and self.layers == other.layers

    def __hash__(self) -> int:
        return hash((self.residual, self.layers))

    def __repr__(self) -> str:
        return f"FullGauge(d={self.d}, layers={len(self.layers)})"

    def accuracy(self, truth: FullGauge) -> dict[str, float]:
        """Fraction right: residual (perm and sign), MLP units (perm and sign), heads (perm)."""
        out = {"residual": truth.residual.accuracy(self.residual)["full"]}
        if self.layers and truth.layers:
            out["mlp"] = float(np.mean([a.mlp.accuracy(b.mlp)["full"] for a, b in
                                        zip(self.layers, truth.layers, strict=True)]))
            out["heads"] = float(np.mean([a.heads.accuracy(b.heads)["perm"] for a, b in
                                          zip(self.layers, truth.layers, strict=True)]))
        return out


def compose_full(*gauges: FullGauge) -> FullGauge:
    """``compose_full(g1, g2, ...)`` applies ``g1`` first (chain order)."""
    return chain_product(gauges)


def _random_sp(rng: np.random.Generator, n: int, signs: bool) -> SignedPermutation:
    perm = rng.permutation(n)
    s = rng.choice(np.array([-1, 1], dtype=np.int8), size=n) if signs else np.ones(n, dtype=np.int8)
    return SignedPermutation(perm, s)


# --------------------------------------------------------------------- fitting a model
def check_full_gauge_fits(spec: ArchSpec, gauge: FullGauge, d_model: int, dims: HiddenDims | None) -> None:
    """Refuse a gauge of the wrong sizes, or outside the architecture's group (signs where none exist)."""
    check_gauge_fits(spec, gauge.residual, d_model)
    if not gauge.layers:
        return
    if dims is None:
        raise GaugeError("internal error: hidden sizes unknown")
    hspec = get_hidden_spec(spec.model_type)
    if len(gauge.layers) != dims.n_layers:
        raise GaugeError(f"the gauge has {len(gauge.layers)} layers, the model {dims.n_layers}",
                         hint="generate or estimate a gauge for this model")
    for i, lg in enumerate(gauge.layers):
        if lg.mlp.d != dims.mlp or lg.heads.d != dims.n_heads or lg.n_kv_heads != dims.n_kv_heads:
            raise GaugeError(
                f"layer {i}: the gauge has {lg.mlp.d} MLP units, {lg.heads.d} heads in {lg.n_kv_heads} groups; "
                f"the model {dims.mlp}, {dims.n_heads} in {dims.n_kv_heads}",
                hint="generate or estimate a gauge for this model")
        if not hspec.mlp_signs and not np.all(lg.mlp.signs == 1):
            raise GaugeGroupError(
                f"{spec.model_type}'s MLP is not gated (GELU/ReLU units are not odd functions): its units can be "
                f"permuted but not sign-flipped, and layer {i} of this gauge flips {int((lg.mlp.signs < 0).sum())}",
                hint="use a gauge whose MLP signs are all +1")


def transform_hidden(name: str, tensor: torch.Tensor, rule: HiddenRule, layer: int, gauge: FullGauge,
                     dims: HiddenDims) -> torch.Tensor:
    """Apply layer ``layer``'s hidden gauge along the hidden axis ``rule`` names."""
    if layer >= len(gauge.layers):
        raise GaugeError(f"{name}: layer {layer} is beyond the gauge's {len(gauge.layers)} layers")
    lg = gauge.layers[layer]
    ax = rule.axis
    sizes = [s.size(dims) for s in rule.segments]
    if ax >= tensor.ndim or tensor.shape[ax] != sum(sizes):
        raise GaugeError(
            f"{name}: expected hidden axis {ax} of size {sum(sizes)} "
            f"({' + '.join(f'{s.kind}*{s.mult}' if s.mult > 1 else s.kind for s in rule.segments)}), "
            f"got shape {tuple(tensor.shape)}",
            hint="config.json's intermediate_size / heads / head_dim do not match the weights, or the hidden "
            "row of the architecture table is wrong")
    parts = torch.split(tensor, sizes, dim=ax)
    out = []
    for seg, part in zip(rule.segments, parts, strict=True):
        if seg.kind == "mlp":
            out.append(lg.mlp.apply(part, axis=ax, mode=seg.mode))
            continue
        g = lg.heads if seg.kind == "q_heads" else lg.kv
        shape = list(part.shape)
        blocked = part.reshape(shape[:ax] + [g.d, shape[ax] // g.d] + shape[ax + 1:])
        out.append(g.apply(blocked, axis=ax, mode="abs").reshape(shape))
    return out[0] if len(out) == 1 else torch.cat(out, dim=ax)


class FullTransform:
    """The per-tensor rewrite of one model under a full gauge (residual rules, then hidden rules)."""

    def __init__(self, spec: ArchSpec, names: list[str], gauge: FullGauge, d_model: int,
                 config: Mapping[str, Any]) -> None:
        self.spec = spec
        self.gauge = gauge
        self.hspec: HiddenSpec | None = get_hidden_spec(spec.model_type) if gauge.layers else None
        self.dims = self.hspec.dims(dict(config), d_model) if self.hspec is not None else None
        check_full_gauge_fits(spec, gauge, d_model, self.dims)
        self.rules = spec.classify_all(names)

    def __call__(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        out = transform_tensor(name, tensor, self.rules[name], self.gauge.residual)
        if self.hspec is not None and self.dims is not None:
            hit = self.hspec.match(name)
            if hit is not None:
                out = transform_hidden(name, out, hit[0], hit[1], self.gauge, self.dims)
        return out


def model_config(model: torch.nn.Module) -> dict[str, Any]:
    cfg = model.config
    return cfg.to_dict()


def model_d(config: Mapping[str, Any]) -> int:
    cfg = config.get("text_config", config)
    for key in ("hidden_size", "n_embd", "d_model"):
        if key in cfg:
            return int(cfg[key])
    raise GaugeError("config names no hidden size (hidden_size / n_embd)")


def hidden_dims_for(config: Mapping[str, Any], model_type: str | None = None) -> HiddenDims:
    """Hidden sizes of a model from its config dict (its table must have hidden rows)."""
    mt = model_type or str(config.get("model_type"))
    return get_hidden_spec(mt).dims(dict(config), model_d(config))


def apply_full_gauge_to_state_dict(state_dict: Mapping[str, torch.Tensor], gauge: FullGauge, spec: ArchSpec,
                                   config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A new state dict in the gauge's target coordinates (the input is not modified)."""
    tf = FullTransform(spec, list(state_dict), gauge, model_d(config), config)
    return {n: tf(n, t) for n, t in state_dict.items()}


@torch.no_grad()
def apply_full_gauge_to_model(model: torch.nn.Module, gauge: FullGauge) -> torch.nn.Module:
    """Rewrite a transformers model's weights in place (tied weights transformed once)."""
    config = model_config(model)
    spec = spec_for_config(config)
    state = model.state_dict(keep_vars=True)
    tf = FullTransform(spec, list(state), gauge, model_d(config), config)
    done: set[int] = set()
    for name, tensor in state.items():
        if id(tensor) in done:
            continue
        done.add(id(tensor))
        tensor.data.copy_(tf(name, tensor.data))
    return model


def apply_full_gauge_to_checkpoint(src: str | Path, gauge: FullGauge, out: str | Path, *, force: bool = False,
                                   progress: bool = True, provenance: Mapping[str, str] | None = None) -> Path:
    """Stream ``src`` into a new checkpoint ``out`` under the full gauge (one tensor in memory at a time)."""
    ckpt = Checkpoint.open(src)
    if gauge.layers:
        checked_hidden_dims(ckpt)
    tf = FullTransform(ckpt.spec, ckpt.names, gauge, ckpt.d_model, ckpt.config)
    stamp = {"gaugeport_gauge": gauge.fingerprint(), "gaugeport_gauge_full": str(gauge.is_full).lower(),
             **(provenance or {})}
    with atomic_path(Path(out), force, inputs=(Path(src),), kind="directory") as tmp:
        rewrite_checkpoint(ckpt, tmp, tf, stamp, desc="apply", progress=progress)
    return Path(out)


def full_weight_difference(path_a: str | Path, path_b: str | Path, gauge: FullGauge,
                           progress: bool = False) -> tuple[float, str, float]:
    """Max |W_B - G(W_A)| over all tensors (streamed), the tensor with the largest relative difference
    (``|W_B - G(W_A)| / max |W_A|``), and that relative difference."""
    from gaugeport.core.verify import open_same_tensors, streamed_weight_difference

    a, b = open_same_tensors(path_a, path_b)
    if gauge.layers:
        checked_hidden_dims(a)
    tf = FullTransform(a.spec, a.names, gauge, a.d_model, a.config)
    return streamed_weight_difference(a, b, tf, progress=progress)


# --------------------------------------------------------------------- file format
def save_full_gauge(gauge: FullGauge, path: str | Path, provenance: Mapping[str, Any] | None = None,
                    extras: Mapping[str, Any] | None = None, *, force: bool = False) -> Path:
    """Write a version-2 gauge file (a residual-only gauge is written as version 1, readable everywhere)."""
    if not gauge.layers:
        from gaugeport.core.gauge import save_gauge

        return save_gauge(gauge.residual, path, provenance, None, force=force)
    tensors: dict[str, torch.Tensor] = {
        "perm": torch.from_numpy(gauge.residual.perm.copy()),
        "signs": torch.from_numpy(gauge.residual.signs.copy()),
    }
    for i, lg in enumerate(gauge.layers):
        tensors[f"layers.{i}.mlp.perm"] = torch.from_numpy(lg.mlp.perm.copy())
        tensors[f"layers.{i}.mlp.signs"] = torch.from_numpy(lg.mlp.signs.copy())
        tensors[f"layers.{i}.heads.perm"] = torch.from_numpy(lg.heads.perm.copy())
    for name, arr in (extras or {}).items():
        if name in tensors or name.startswith("layers.") and not name.endswith(".confidence"):
            raise GaugeError(f"extra tensor name {name!r} is reserved")
        tensors[name] = torch.as_tensor(np.asarray(arr)).contiguous()
    dims = gauge.dims()
    assert dims is not None
    metadata = gauge_file_metadata(
        gauge, FULL_FORMAT_VERSION, CONVENTION + "; per layer, MLP units and query heads follow the same rule",
        provenance, n_layers=str(dims.n_layers), mlp=str(dims.mlp), n_heads=str(dims.n_heads),
        n_kv_heads=str(dims.n_kv_heads))
    return atomic_save_safetensors(tensors, Path(path), metadata, force=force)


@dataclass(frozen=True)
class FullGaugeFile:
    gauge: FullGauge
    version: str
    provenance: dict[str, Any]
    extras: dict[str, np.ndarray]


def read_full_gauge_file(path: str | Path) -> FullGaugeFile:
    """Load a version-1 or version-2 gauge file; every number read is validated. The one reader of gauge
    files: :func:`gaugeport.core.gauge.read_gauge_file` (residual part) goes through it too."""
    tensors, metadata = read_gauge_tensors(path)
    version = metadata["version"]
    part = read_residual_part(path, tensors, metadata)
    layers = read_layer_part(path, tensors, metadata)
    extras = {**part.extras, **{k: v.float().numpy() for k, v in tensors.items()}}
    return FullGaugeFile(FullGauge(part.gauge, layers), version, part.provenance, extras)


def load_full_gauge(path: str | Path) -> FullGauge:
    return read_full_gauge_file(path).gauge


def gauge_file_version(path: str | Path) -> str:
    from safetensors import safe_open

    from gaugeport.core.errors import CheckpointError

    if not Path(path).is_file():
        return "1"  # the reader then reports the missing file
    try:
        with safe_open(str(path), framework="pt") as f:
            return str((f.metadata() or {}).get("version", "1"))
    except Exception as exc:
        raise CheckpointError(f"cannot read gauge file {path}: {exc}",
                              hint="the file is truncated or not a safetensors file") from exc


# --------------------------------------------------------------------- verbs on files
def is_full_gauge_file(path: str | Path) -> bool:
    return gauge_file_version(path) == FULL_FORMAT_VERSION


def compose_full_gauge_files(paths: list[Path], out: str | Path, *, force: bool = False) -> FullGauge:
    """``compose`` when some input is a version-2 file: the first file is applied first."""
    gauges = [load_full_gauge(p) for p in paths]
    for p, g in zip(paths[1:], gauges[1:], strict=True):
        if g.d != gauges[0].d:
            raise GaugeError(f"cannot compose {paths[0]} (d={gauges[0].d}) with {p} (d={g.d}): widths differ",
                             hint="every gauge of a chain must be estimated at the same hidden size")
    composed = compose_full(*gauges)
    provenance = {"composed_from": [str(p) for p in paths], "order": "first file applied first",
                  "fingerprints": [g.fingerprint() for g in gauges]}
    save_full_gauge(composed, out, provenance, force=force)
    return composed


def verify_full(path_a: str | Path, path_b: str | Path, gauge: FullGauge, **kwargs: Any) -> Any:
    """:func:`~gaugeport.core.verify.verify_checkpoints` under a full gauge: logits and hidden states
    through its residual part (the hidden gauges leave the stream unchanged), every weight through all of it."""
    from gaugeport.core.verify import verify_checkpoints

    weights = kwargs.pop("weights", True)
    if gauge.layers:  # both configs checked against their weights before any model is built
        for path in (path_a, path_b):
            checked_hidden_dims(Checkpoint.open(path))
    res = verify_checkpoints(path_a, path_b, gauge.residual, weights=False, **kwargs)
    if weights:
        res.weight_max_abs_diff, res.weight_worst_tensor, res.weight_max_rel_diff = full_weight_difference(
            path_a, path_b, gauge)
    return res


def checked_hidden_dims(ckpt: Checkpoint) -> HiddenDims:
    """The hidden sizes config.json gives, checked against the tensors' headers (no tensor data read)
    before any work is sized by them: the layers the weights hold, and each hidden axis's length."""
    from gaugeport.core.checkpoint import shard_layout

    hspec = get_hidden_spec(ckpt.spec.model_type)
    dims = hspec.dims(dict(ckpt.config), ckpt.d_model)
    hint = ("config.json and the weights disagree (num_hidden_layers, intermediate_size, heads or head_dim): "
            "the checkpoint is corrupt or mixed from two models")
    seen: set[int] = set()
    for shard in ckpt.shards:
        for name, (_, shape) in shard_layout(ckpt, shard).items():
            hit = hspec.match(name)
            if hit is None:
                continue
            rule, layer = hit
            if layer >= dims.n_layers:
                raise CheckpointError(f"{ckpt.path}: tensor {name!r} is in layer {layer}, but config.json says "
                                      f"there are {dims.n_layers} layers", hint=hint)
            seen.add(layer)
            want = sum(seg.size(dims) for seg in rule.segments)
            if rule.axis >= len(shape) or shape[rule.axis] != want:
                raise CheckpointError(f"{ckpt.path}: config.json gives tensor {name!r} a hidden axis {rule.axis} of "
                                      f"length {want}, but its shape is {tuple(shape)}", hint=hint)
    if len(seen) != dims.n_layers:
        raise CheckpointError(f"{ckpt.path}: config.json says there are {dims.n_layers} layers, but the weights "
                              f"hold {len(seen)}", hint=hint)
    return dims


def random_full_gauge_for(ckpt: str | Path, seed: int, *, perm_only: bool = False) -> FullGauge:
    """A random full gauge in the checkpoint's group (signs only where its blocks allow them)."""
    c = Checkpoint.open(ckpt)
    spec = c.spec
    hspec = get_hidden_spec(spec.model_type)
    c.check_widths(spec)
    dims = checked_hidden_dims(c)
    return FullGauge.random(c.d_model, dims, seed, residual_signs=spec.allows_coordinate_signs and not perm_only,
                            mlp_signs=hspec.mlp_signs and not perm_only)
