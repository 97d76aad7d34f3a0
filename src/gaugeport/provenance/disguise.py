"""Disguises that keep a checkpoint's function (the catalogue :data:`DISGUISES`).

With every RMSNorm gain folded into the readers that follow it (``W' = W diag(g)``, gain set to
one), the residual stream has the whole orthogonal group as a symmetry: writers become ``Q W``,
readers ``W Q^T``, for any orthogonal ``Q``; ``same`` undoes it with an orthogonal Procrustes fit.
Inside each attention head, value/output maps and query/key maps that commute with RoPE keep the
function too (:mod:`gaugeport.provenance.heads`). Every disguise reads the architecture table (roles,
hidden segments, fold plan, attention section), never tensor names, and refuses with a reason on a
family where it does not apply.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from gaugeport.core.archspec import ArchSpec
from gaugeport.core.errors import ArchitectureError
from gaugeport.core.gauge import SignedPermutation
from gaugeport.core.hidden import get_hidden_spec
from gaugeport.provenance.heads import Slot, attention_slots, attention_spec, pair_index, read_block, write_block

StateDict = dict[str, torch.Tensor]


def fold_gains(state: Mapping[str, torch.Tensor], spec: ArchSpec) -> dict[str, torch.Tensor]:
    """A new state dict with every norm gain folded into its readers (gains become one)."""
    if spec.norm != "rms":
        raise ArchitectureError(f"{spec.model_type} uses LayerNorm: folding gains needs RMSNorm")
    hspec = get_hidden_spec(spec.model_type)
    if not hspec.folds:
        raise ArchitectureError(f"the {spec.model_type!r} table names no gain folds",
                                hint=f"add \"folds\" to the hidden section of {spec.model_type}.json")
    out = {n: t.clone() for n, t in state.items()}
    gains = [n for n, rule in spec.classify_all(list(state)).items() if rule.role == "gain"]
    readers, missing = hspec.fold_plan(gains, out)
    if missing:
        name, absent = next(iter(missing.items()))
        raise ArchitectureError(f"cannot fold {name}: {', '.join(absent)} absent (tied embeddings?)",
                                hint="folding the final norm needs an untied lm_head")
    for name, targets in readers.items():
        g = state[name].double() + spec.gain_offset
        for t in targets:
            out[t] = (out[t].double() * g).to(out[t].dtype)  # readers: residual axis is the last (in_features)
        out[name] = torch.full_like(state[name], 1.0 - spec.gain_offset)
    return out


def random_orthogonal(d: int, seed: int = 0) -> np.ndarray:
    """A Haar-random orthogonal matrix (QR of a Gaussian, signs fixed)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def rotate_residual(state: Mapping[str, torch.Tensor], spec: ArchSpec, q: np.ndarray) -> dict[str, torch.Tensor]:
    """``x_B = Q x_A`` on every residual axis (gains must be uniform: fold them first)."""
    rules = spec.classify_all(list(state))
    qt = torch.from_numpy(np.asarray(q, dtype=np.float64))
    out = {}
    for name, t in state.items():
        rule = rules[name]
        if rule.role == "gain":
            if not bool((t == t.reshape(-1)[0]).all()):
                raise ArchitectureError(f"{name}: a rotation needs uniform gains; fold them first")
            out[name] = t.clone()
            continue
        x = t.double()
        for ax in rule.axes if rule.mode == "signed" else ():
            x = torch.movedim(torch.movedim(x, ax, -1) @ qt.T, -1, ax)  # t'[..i..] = sum_j Q[i, j] t[..j..]
        out[name] = x.to(t.dtype)
    return out


# ----------------------------------------------------------------------------- the disguise catalogue
# Every disguise below maps a state dict to a new one with the same function (the model's own logits;
# tests/provenance/test_disguise.py checks each). ``config`` is the model's config dict.
State = Mapping[str, torch.Tensor]


def residual_signed_permutation(state: State, spec: ArchSpec, config: Mapping[str, Any], seed: int) -> StateDict:
    """A random signed permutation of the residual stream (norm gains permuted, never signed)."""
    from gaugeport.core.fullgauge import FullGauge, apply_full_gauge_to_state_dict, model_d

    g = FullGauge(SignedPermutation.random(model_d(config), seed=seed))
    return apply_full_gauge_to_state_dict(state, g, spec, config)


def full_gauge(state: State, spec: ArchSpec, config: Mapping[str, Any], seed: int) -> StateDict:
    """A random full-network gauge: residual signed permutation, MLP units (signed where the block
    allows), attention heads (query heads inside their key/value group, groups permuted)."""
    from gaugeport.core.fullgauge import FullGauge, apply_full_gauge_to_state_dict, hidden_dims_for, model_d

    hspec = get_hidden_spec(spec.model_type)
    g = FullGauge.random(model_d(config), hidden_dims_for(config, spec.model_type), seed,
                         mlp_signs=hspec.mlp_signs)
    return apply_full_gauge_to_state_dict(state, g, spec, config)


def fold(state: State, spec: ArchSpec, config: Mapping[str, Any], seed: int) -> StateDict:
    """Every norm gain folded into its readers (``seed`` unused)."""
    del config, seed
    return fold_gains(state, spec)


def rotation(state: State, spec: ArchSpec, config: Mapping[str, Any], seed: int) -> StateDict:
    """Fold the gains, then rotate the residual stream by a Haar-random orthogonal matrix."""
    from gaugeport.core.fullgauge import model_d

    return rotate_residual(fold_gains(state, spec), spec, random_orthogonal(model_d(config), seed))


def reintroduced_gains(state: State, spec: ArchSpec, config: Mapping[str, Any], seed: int) -> StateDict:
    """Give every foldable norm a random positive gain ``r`` (log-uniform in [1/3, 3]) times its
    present one, and divide its readers' residual columns by ``r``: ``W diag(g r) / r = W diag(g)``."""
    del config
    hspec = get_hidden_spec(spec.model_type)
    if spec.norm != "rms" or not hspec.folds:
        raise ArchitectureError(f"{spec.model_type} has no RMSNorm gains to fold: re-introduced gains need them",
                                hint="a LayerNorm gain also scales its bias; this disguise is for RMSNorm families "
                                "whose table names \"folds\"")
    rng = np.random.default_rng(seed)
    out = dict(state)
    for name, rule in spec.classify_all(list(state)).items():
        targets = hspec.fold_targets(name) if rule.role == "gain" else None
        if not targets or any(t not in state for t in targets):
            continue
        g = state[name].double() + spec.gain_offset
        r = torch.from_numpy(np.exp(rng.uniform(np.log(1 / 3), np.log(3), g.shape[0])))
        out[name] = (g * r - spec.gain_offset).to(state[name].dtype)
        for t in targets:
            out[t] = (state[t].double() / r).to(state[t].dtype)
    return out


def rescaled_units(state: State, spec: ArchSpec, config: Mapping[str, Any], seed: int, *,
                   via: str = "up", degree: float = 1.0) -> StateDict:
    """Scale each MLP unit's ``via`` row by a random ``c > 0`` and its down column by ``c ** -degree``.

    ``via="up"`` (gated blocks, ``act(g) * u`` is linear in ``u``: any activation, ``degree`` 1);
    ``via="gate"`` needs a positively homogeneous activation of that degree (ReLU: 1, ReLU^2: 2).
    The tensors come from the table (hidden rows with MLP segments; Phi-3's fused ``gate_up_proj`` too).
    """
    from gaugeport.core.fullgauge import hidden_dims_for

    hspec = get_hidden_spec(spec.model_type)
    dims = hidden_dims_for(config, spec.model_type)
    rng = np.random.default_rng(seed)
    out = dict(state)
    for layer, kinds in sorted(_mlp_table_slices(state, spec, hspec, dims).items()):
        if via not in kinds or "down" not in kinds:
            raise ArchitectureError(f"layer {layer} has no MLP {via!r} reader and writer in the "
                                    f"{spec.model_type!r} table",
                                    hint="via='up' needs a gated MLP (a signed reader); an ungated MLP with a "
                                    "positively homogeneous activation takes via='gate'")
        c = torch.from_numpy(np.exp(rng.uniform(np.log(1 / 3), np.log(3), dims.mlp)))
        for sl in kinds[via]:
            out[sl.name] = _scale_units(out[sl.name], sl, c)
        for sl in kinds["down"]:
            out[sl.name] = _scale_units(out[sl.name], sl, c ** -degree)
    return out


def _mlp_table_slices(state: State, spec: ArchSpec, hspec: Any, dims: Any) -> dict[int, dict[str, list[Slot]]]:
    """Per layer, the slices holding MLP units by kind (see :func:`rescaled_units`)."""
    out: dict[int, dict[str, list[Slot]]] = {}
    for name in state:
        hit = hspec.match(name)
        if hit is None:
            continue
        rule, layer = hit
        role = spec.classify(name).role
        start = 0
        for seg in rule.segments:
            n = seg.size(dims)
            if seg.kind == "mlp":
                kind = "down" if role == "write" else "up" if seg.mode == "signed" else "gate"
                out.setdefault(layer, {}).setdefault(kind, []).append(Slot(name, rule.axis, start, start + n))
            start += n
    return out


def _scale_units(t: torch.Tensor, sl: Slot, c: torch.Tensor) -> torch.Tensor:
    moved = torch.movedim(t.double(), sl.axis, 0).clone()
    moved[sl.start:sl.stop] *= c.reshape(-1, *([1] * (moved.ndim - 1)))
    return torch.movedim(moved, 0, sl.axis).to(t.dtype)


def _head_layers(state: State, spec: ArchSpec, config: Mapping[str, Any]) -> tuple[Any, Any, list[dict]]:
    """The dims, the table's attention section and, per layer, the slices holding q/k/v/o heads."""
    from gaugeport.core.fullgauge import hidden_dims_for

    hspec = get_hidden_spec(spec.model_type)
    attn = attention_spec(spec, hspec)
    stop = attn.head_maps_stopped_by(dict(config))
    if stop is not None:
        raise ArchitectureError(f"{spec.model_type}: config.json sets {stop}, which acts on the queries, keys and "
                                "values coordinate by coordinate, so no map inside a head keeps the function",
                                hint="the residual and full-gauge disguises still apply")
    dims = hidden_dims_for(config, spec.model_type)
    return dims, attn, [attention_slots(list(state), spec, hspec, dims, layer) for layer in range(dims.n_layers)]


def _random_invertible(n: int, rng: np.random.Generator, scale: bool) -> torch.Tensor:
    """A Haar-random orthogonal matrix; with ``scale``, times positive scales (log-uniform in [1/2, 2])
    times another one: a well-conditioned invertible map that is not orthogonal."""
    r = random_orthogonal(n, int(rng.integers(2**31)))
    if scale:
        r = r @ np.diag(np.exp(rng.uniform(np.log(0.5), np.log(2), n))) @ random_orthogonal(n, int(rng.integers(2**31)))
    return torch.from_numpy(r)


def _map_heads(out: StateDict, slots: list[Slot], n: int, hd: int, mats: torch.Tensor) -> None:
    for sl in slots:
        out[sl.name] = write_block(out[sl.name], sl, mats @ read_block(out[sl.name], sl, n, hd))


def head_vo_rotation(state: State, spec: ArchSpec, config: Mapping[str, Any], seed: int, *,
                     scale: bool = False) -> StateDict:
    """Per key/value group, a random orthogonal ``R`` (head_dim x head_dim; with ``scale``, any
    well-conditioned invertible one): the group's value rows (and bias) become ``R V``, the output
    columns of every query head in the group ``O R^-1``. Tensors from the table's attention section."""
    dims, _, layers = _head_layers(state, spec, config)
    rng = np.random.default_rng(seed)
    out = dict(state)
    group = torch.arange(dims.n_heads) // dims.group_size
    for slots in layers:
        r = torch.stack([_random_invertible(dims.head_dim, rng, scale) for _ in range(dims.n_kv_heads)])
        _map_heads(out, slots["v"], dims.n_kv_heads, dims.head_dim, r)
        _map_heads(out, slots["o"], dims.n_heads, dims.head_dim, torch.linalg.inv(r).transpose(1, 2)[group])
    return out


def head_qk_rope_rotation(state: State, spec: ArchSpec, config: Mapping[str, Any], seed: int, *,
                          scale: bool = False) -> StateDict:
    """Per key/value group, a random 2 x 2 rotation inside every RoPE frequency pair (dims ``i`` and
    ``i + r / 2`` of the ``r`` rotary dims in the rotate-half layout, ``2i`` and ``2i + 1`` interleaved),
    applied to the group's key rows and to the query rows of every head in the group (a random orthogonal
    map on the dims RoPE leaves alone, partial rotary); with ``scale``, keys times ``s`` and queries over
    ``s`` per pair. It commutes with RoPE, so ``q . k`` is unchanged. Refused where a q/k-norm with
    per-dimension gains sits next to RoPE (before it or after it)."""
    dims, attn, layers = _head_layers(state, spec, config)
    if attn.rope == "none":
        raise ArchitectureError(f"{spec.model_type} has no rotary embedding: this disguise rotates RoPE pairs")
    stops = [n for n in state for c in spec.canonical_names(n) for t in attn.stops_qk_maps
             if re.fullmatch(re.escape(t).replace(re.escape("{layer}"), r"\d+"), c)]
    if stops:
        raise ArchitectureError(f"{spec.model_type}: {stops[0]} normalises each head's queries or keys "
                                "(before RoPE, or after it), so a map inside the query/key pairs changes the function",
                                hint="the value/output map (head_vo_rotation) still applies")
    rng = np.random.default_rng(seed)
    hd = dims.head_dim
    rot = attn.rotary_dims(dict(config), hd)
    lo, hi = pair_index(rot, attn.rope)
    group = torch.arange(dims.n_heads) // dims.group_size
    out = dict(state)
    for slots in layers:
        key = torch.eye(hd, dtype=torch.float64).repeat(dims.n_kv_heads, 1, 1)
        for g in range(dims.n_kv_heads):
            theta = rng.uniform(0, 2 * np.pi, lo.size)
            s = np.exp(rng.uniform(np.log(0.5), np.log(2), lo.size)) if scale else np.ones(lo.size)
            key[g, lo, lo], key[g, hi, hi] = torch.from_numpy(s * np.cos(theta)), torch.from_numpy(s * np.cos(theta))
            key[g, lo, hi], key[g, hi, lo] = torch.from_numpy(-s * np.sin(theta)), torch.from_numpy(s * np.sin(theta))
            if rot < hd:
                key[g, rot:, rot:] = torch.from_numpy(random_orthogonal(hd - rot, int(rng.integers(2**31))))
        _map_heads(out, slots["k"], dims.n_kv_heads, hd, key)
        _map_heads(out, slots["q"], dims.n_heads, hd, torch.linalg.inv(key).transpose(1, 2)[group])
    return out


DISGUISES: dict[str, Callable[..., StateDict]] = {
    "signed_permutation": residual_signed_permutation,
    "full_gauge": full_gauge,
    "fold": fold,
    "rotation": rotation,
    "reintroduced_gains": reintroduced_gains,
    "rescaled_units": rescaled_units,
    "head_vo_rotation": head_vo_rotation,
    "head_qk_rope_rotation": head_qk_rope_rotation,
}
