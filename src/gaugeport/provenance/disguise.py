"""Disguises that keep a checkpoint's function: fold the norm gains, then rotate the residual stream.

With every RMSNorm gain folded into the readers that follow it (``W' = W diag(g)``, gain set to
one), the residual stream has the whole orthogonal group as a symmetry: writers become ``Q W``,
readers ``W Q^T``, for any orthogonal ``Q``. This is the strongest function-preserving disguise
a copier can apply to a checkpoint (weight hashes, cosine similarity and permutation matchers all
miss it); ``same`` undoes it with an orthogonal Procrustes fit.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from gaugeport.core.archspec import ArchSpec
from gaugeport.core.errors import ArchitectureError
from gaugeport.core.hidden import get_hidden_spec


def fold_gains(state: Mapping[str, torch.Tensor], spec: ArchSpec) -> dict[str, torch.Tensor]:
    """A new state dict with every norm gain folded into its readers (gains become one)."""
    if spec.norm != "rms":
        raise ArchitectureError(f"{spec.model_type} uses LayerNorm: folding gains needs RMSNorm")
    hspec = get_hidden_spec(spec.model_type)
    if not hspec.folds:
        raise ArchitectureError(f"the {spec.model_type!r} table names no gain folds",
                                hint=f"add \"folds\" to the hidden section of {spec.model_type}.json")
    out = {n: t.clone() for n, t in state.items()}
    rules = spec.classify_all(list(state))
    for name, rule in rules.items():
        if rule.role != "gain":
            continue
        targets = hspec.fold_targets(name)
        if targets is None:
            raise ArchitectureError(f"the {spec.model_type!r} table says nothing about folding {name}")
        missing = [t for t in targets if t not in out]
        if missing:
            raise ArchitectureError(f"cannot fold {name}: {', '.join(missing)} absent (tied embeddings?)",
                                    hint="folding the final norm needs an untied lm_head")
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
