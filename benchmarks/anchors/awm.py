"""AWM's statistic (ICLR 2026): shared-vocabulary embedding alignment by LAP, then unbiased CKA on W_q, W_k.

Followed: AWM's public code, the utilities module whose docstring reads "Utilities for model weight
loading, vocabulary handling, and similarity calculation" (functions ``find_overlapping_vocab``,
``_center_gram``, ``cka_from_features``, ``calculate_attention_cka_similarities``); its repository
could not be resolved offline, so it is cited by module and function.

1. The shared vocabulary: token strings when both tokenizers are present, else ids on the shared range.
2. The residual alignment: a linear assignment on ``|cos|`` between the embedding *columns* (one per
   residual coordinate) over the shared tokens gives, for each coordinate of the narrower model, one
   coordinate of the wider model and a sign (AWM's ``subselect_indices`` and ``subselect_signs``).
3. Per layer, unbiased linear CKA (the U-statistic centring of the Gram matrices) between the aligned
   ``W_q^T`` of A and ``W_q^T`` of B (examples: residual coordinates; features: output rows), and the
   same for ``W_k``; layers are paired directly when the depths agree, else by a linear assignment on
   the mean CKA. The score is the mean over layers of the mean of the two.

AWM has no p-value: it reports the score's z against a pool of unrelated pairs, which the suite
computes (``|z|`` against its negatives).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from ._common import Weights, shared_tokens


def _unbiased_centre(g: np.ndarray) -> np.ndarray:
    n = g.shape[0]
    g = g.copy()
    np.fill_diagonal(g, 0.0)
    means = g.sum(0) / (n - 2)
    means -= means.sum() / (2 * (n - 1))
    g -= means[:, None] + means[None, :]
    np.fill_diagonal(g, 0.0)
    return g


def unbiased_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two feature matrices with the same rows (examples), unbiased HSIC."""
    k, l_ = _unbiased_centre(x @ x.T), _unbiased_centre(y @ y.T)
    hsic, vx, vy = float((k * l_).sum()), float((k * k).sum()), float((l_ * l_).sum())
    return hsic / np.sqrt(vx * vy) if vx > 1e-8 and vy > 1e-8 else 0.0


def align_residual(a: Weights, b: Weights) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(coords of A, coords of B, signs)``: LAP on ``|cos|`` of the embedding columns over shared tokens."""
    ia, ib = shared_tokens(a, b)
    ea, eb = a(a.role("emb"))[ia], b(b.role("emb"))[ib]
    ea = ea / np.maximum(np.linalg.norm(ea, axis=0, keepdims=True), 1e-12)
    eb = eb / np.maximum(np.linalg.norm(eb, axis=0, keepdims=True), 1e-12)
    cos = ea.T @ eb
    r, c = linear_sum_assignment(-np.abs(cos))
    return r, c, np.sign(cos[r, c])


def statistic(path_a: str | Path, path_b: str | Path) -> dict[str, Any]:
    a, b = Weights(path_a), Weights(path_b)
    ra, rb, sg = align_residual(a, b)

    def layer_cka(i: int, j: int) -> float:
        out = []
        for p in ("q", "k"):
            wa = a(a.role(p, i))[:, ra] * sg  # aligned to B's coordinates
            wb = b(b.role(p, j))[:, rb]
            out.append(unbiased_cka(wa.T, wb.T))
        return float(np.mean(out))

    if a.n_layers == b.n_layers:
        per_layer = [layer_cka(i, i) for i in range(a.n_layers)]
    else:
        m = np.array([[layer_cka(i, j) for j in range(b.n_layers)] for i in range(a.n_layers)])
        r, c = linear_sum_assignment(-m)
        per_layer = [float(m[i, j]) for i, j in zip(r, c, strict=True)]
    return {"score": float(np.mean(per_layer)), "per_layer": per_layer}
