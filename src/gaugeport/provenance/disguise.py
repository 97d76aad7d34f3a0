"""Disguises that keep a checkpoint's function: fold the norm gains, then rotate the residual stream.

With every RMSNorm gain folded into the readers that follow it (``W' = W diag(g)``, gain set to
one), the residual stream has the whole orthogonal group as a symmetry: writers become ``Q W``,
readers ``W Q^T``, for any orthogonal ``Q``. This is the strongest function-preserving disguise
a copier can apply to a checkpoint (weight hashes, cosine similarity and permutation matchers all
miss it); ``same`` undoes it with an orthogonal Procrustes fit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from gaugeport.core.archspec import ArchSpec
from gaugeport.core.errors import ArchitectureError
from gaugeport.core.gauge import SignedPermutation
from gaugeport.core.hidden import get_hidden_spec

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


def _mlp_tensors(state: State, spec: ArchSpec) -> dict[int, dict[str, str]]:
    """Per layer, the MLP tensors the table names: ``gate`` (a reader whose units are permuted only),
    ``up`` (a reader whose units carry signs), ``down`` (the writer)."""
    hspec = get_hidden_spec(spec.model_type)
    out: dict[int, dict[str, str]] = {}
    for name in state:
        hit = hspec.match(name)
        if hit is None or not name.endswith("weight") or [s.kind for s in hit[0].segments] != ["mlp"]:
            continue
        role = spec.classify(name).role
        kind = "down" if role == "write" else "up" if hit[0].segments[0].mode == "signed" else "gate"
        out.setdefault(hit[1], {})[kind] = name
    return out


def rescaled_units(state: State, spec: ArchSpec, config: Mapping[str, Any], seed: int, *,
                   via: str = "up", degree: float = 1.0) -> StateDict:
    """Scale each MLP unit's ``via`` row by a random ``c > 0`` and its down column by ``c ** -degree``.

    ``via="up"`` (gated blocks, ``act(g) * u`` is linear in ``u``: any activation, ``degree`` 1);
    ``via="gate"`` needs a positively homogeneous activation of that degree (ReLU: 1, ReLU^2: 2).
    """
    del config
    rng = np.random.default_rng(seed)
    out = dict(state)
    for layer in sorted(mlp := _mlp_tensors(state, spec)):
        names = mlp[layer]
        if via not in names or "down" not in names:
            raise ArchitectureError(f"layer {layer} has no MLP {via!r} reader and writer in the "
                                    f"{spec.model_type!r} table")
        w = state[names[via]]
        c = torch.from_numpy(np.exp(rng.uniform(np.log(1 / 3), np.log(3), w.shape[0])))
        out[names[via]] = (w.double() * c[:, None]).to(w.dtype)
        down = state[names["down"]]
        out[names["down"]] = (down.double() * c[None, :] ** -degree).to(down.dtype)
    return out


def _attn(state: State, layer: int, proj: str) -> str:
    return f"model.layers.{layer}.self_attn.{proj}.weight"


def head_vo_rotation(state: State, spec: ArchSpec, config: Mapping[str, Any], seed: int) -> StateDict:
    """Per key/value group, a random orthogonal ``R`` (head_dim x head_dim): the group's value rows
    become ``R V`` and the output columns of every query head in the group ``O R^T`` (Llama-style
    q/k/v/o_proj names; grouped-query attention respected)."""
    from gaugeport.core.fullgauge import hidden_dims_for

    dims = hidden_dims_for(config, spec.model_type)
    rng = np.random.default_rng(seed)
    out = dict(state)
    hd, gs = dims.head_dim, dims.group_size
    for layer in range(dims.n_layers):
        v, o = state[_attn(state, layer, "v_proj")].double(), state[_attn(state, layer, "o_proj")].double().clone()
        v = v.clone()
        for g in range(dims.n_kv_heads):
            r = torch.from_numpy(random_orthogonal(hd, int(rng.integers(2**31))))
            v[g * hd:(g + 1) * hd] = r @ v[g * hd:(g + 1) * hd]
            for h in range(g * gs, (g + 1) * gs):
                o[:, h * hd:(h + 1) * hd] = o[:, h * hd:(h + 1) * hd] @ r.T
        out[_attn(state, layer, "v_proj")] = v.to(state[_attn(state, layer, "v_proj")].dtype)
        out[_attn(state, layer, "o_proj")] = o.to(state[_attn(state, layer, "o_proj")].dtype)
    return out


def head_qk_rope_rotation(state: State, spec: ArchSpec, config: Mapping[str, Any], seed: int) -> StateDict:
    """Per key/value group, a random 2 x 2 rotation inside every RoPE frequency pair (coordinates
    ``i`` and ``i + head_dim / 2``, the rotate-half layout), applied to the group's key rows and to
    the query rows of every head in the group: it commutes with RoPE, so ``q . k`` is unchanged."""
    from gaugeport.core.fullgauge import hidden_dims_for

    dims = hidden_dims_for(config, spec.model_type)
    rng = np.random.default_rng(seed)
    out = dict(state)
    hd, gs, half = dims.head_dim, dims.group_size, dims.head_dim // 2
    for layer in range(dims.n_layers):
        q = state[_attn(state, layer, "q_proj")].double().clone()
        k = state[_attn(state, layer, "k_proj")].double().clone()
        for g in range(dims.n_kv_heads):
            theta = torch.from_numpy(rng.uniform(0, 2 * np.pi, half))
            cs = (torch.cos(theta)[:, None], torch.sin(theta)[:, None])
            k[g * hd:(g + 1) * hd] = _rotate_pairs(k[g * hd:(g + 1) * hd], *cs)
            for h in range(g * gs, (g + 1) * gs):
                q[h * hd:(h + 1) * hd] = _rotate_pairs(q[h * hd:(h + 1) * hd], *cs)
        out[_attn(state, layer, "q_proj")] = q.to(state[_attn(state, layer, "q_proj")].dtype)
        out[_attn(state, layer, "k_proj")] = k.to(state[_attn(state, layer, "k_proj")].dtype)
    return out


def _rotate_pairs(block: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = block.shape[0] // 2
    x, y = block[:half], block[half:]
    return torch.cat([cos * x - sin * y, sin * x + cos * y])


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
