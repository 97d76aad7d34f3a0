"""HuRef-style invariants (Zeng et al., "HuRef: HUman-REadable Fingerprint for Large Language Models",
NeurIPS 2024): products of weights that every residual rotation and every permutation of heads and MLP
units leaves unchanged, compared by cosine.

Followed: github.com/salzhu/model-tracing, ``experiments/huref.py`` (the three invariants of layer 0 as
Zhu et al. re-implemented them) and the HuRef paper's Section 3 (the invariant terms): on a set of token
rows ``E`` (here: up to 512 tokens shared by both vocabularies, a seeded sample),

    M_1 = E W_q^T W_k E^T,   M_2 = E W_v^T W_o^T E^T,   M_3 = E W_up^T W_down^T E^T,

are token x token matrices (so they exist for models of different widths, too). The score is the mean
cosine between A's and B's flattened invariants, over the invariants and the layers (layers paired
directly when the depths agree, else each of B's layers takes its most similar layer of A). ``M_2``
needs ``W_v`` and ``W_o`` of matching head layout: with grouped-query attention the value heads are
repeated to the query heads first. Norm gains are not folded in (as in the re-implementation
followed), so the invariants are exact under signed permutations and head/unit permutations, not under
rotations of an RMSNorm model with generic gains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._common import Weights, shared_tokens

N_TOKENS = 512


def _cos(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x.reshape(-1), y.reshape(-1)
    return float(x @ y / max(np.linalg.norm(x) * np.linalg.norm(y), 1e-30))


def _invariants(w: Weights, e: np.ndarray, layer: int) -> list[np.ndarray]:
    wq, wk = w(w.role("q", layer)), w(w.role("k", layer))
    wv, wo = w(w.role("v", layer)), w(w.role("o", layer))
    group = wq.shape[0] // wk.shape[0]
    hd = wq.shape[0] // max(1, int(w.ckpt.config.get("num_attention_heads", 1)))
    if group > 1:  # grouped-query attention: repeat each key/value head for its query heads
        wk = np.repeat(wk.reshape(-1, hd, wk.shape[1]), group, axis=0).reshape(-1, wk.shape[1])
        wv = np.repeat(wv.reshape(-1, hd, wv.shape[1]), group, axis=0).reshape(-1, wv.shape[1])
    out = [e @ wq.T @ (wk @ e.T), e @ wv.T @ (wo.T @ e.T)]
    if w.has(w.role("up", layer)):
        out.append(e @ w(w.role("up", layer)).T @ (w(w.role("down", layer)).T @ e.T))
    return out


def statistic(path_a: str | Path, path_b: str | Path) -> dict[str, Any]:
    a, b = Weights(path_a), Weights(path_b)
    ia, ib = shared_tokens(a, b)
    if len(ia) > N_TOKENS:
        pick = np.sort(np.random.default_rng(0).choice(len(ia), N_TOKENS, replace=False))
        ia, ib = ia[pick], ib[pick]
    ea, eb = a(a.role("emb"))[ia], b(b.role("emb"))[ib]
    inv_a = [_invariants(a, ea, i) for i in range(a.n_layers)]
    inv_b = [_invariants(b, eb, j) for j in range(b.n_layers)]

    def sim(i: int, j: int) -> float:
        return float(np.mean([_cos(x, y) for x, y in zip(inv_a[i], inv_b[j], strict=False)]))

    if a.n_layers == b.n_layers:
        per_layer = [sim(i, i) for i in range(a.n_layers)]
    else:
        per_layer = [max(sim(i, j) for i in range(a.n_layers)) for j in range(b.n_layers)]
    return {"score": float(np.mean(per_layer)), "per_layer": per_layer}
