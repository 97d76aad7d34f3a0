"""Zhu, Ahmed, Kuditipudi and Liang, "Independence Tests for Language Models" (ICML 2025): the constrained
test and the MATCH test.

Followed: github.com/salzhu/model-tracing, ``tracing/statistics/csu.py`` (``csw_sp``, ``csw_sp_layer``:
the constrained test) and ``tracing/statistics/match.py`` (``statistic``, ``mlp_matching_gate``,
``mlp_matching_up``: MATCH), with ``tracing/utils/llama/matching.py`` (``match_wmats``: LAP on squared
Euclidean distances).

Constrained test: per layer whose ``mlp.up_proj`` exists in both with the same shape, the rows of A's
and B's ``up_proj`` are matched by a linear assignment on their cosine similarity, and the matched
permutation is rank-correlated with the identity (Spearman, as in the paper; the public code calls
``pearsonr``); the layers' p-values are combined by Fisher's method. It assumes the residual stream is
not permuted (rows are compared coordinate by coordinate), which is what a gauge breaks.

MATCH: the same token sequences go through both models; per layer the MLP units' *activations* are
matched twice, once on ``gate_proj`` outputs and once on ``up_proj`` outputs (LAP on squared Euclidean
distance between units' activation vectors), and the two matchings are correlated (Pearson, as in the
code); per-layer p-values combined by Fisher. Robust to any residual transform (it reads activations);
the pairing of layers is direct when the depths agree, else each of B's layers takes its best
(smallest p) layer of A, the search ``statistic_all`` runs. Mixture-of-experts models have no
``gate_proj`` module: MATCH does not apply (score None).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from scipy.optimize import linear_sum_assignment

from ._common import Weights

P_FLOOR = 1e-300


def fisher(pvalues: list[float]) -> float:
    """Fisher's method: ``-2 sum log p`` is chi-square with ``2 n`` degrees of freedom."""
    ps = np.clip(np.asarray(pvalues, dtype=float), P_FLOOR, 1.0)
    return float(stats.chi2.sf(-2 * np.log(ps).sum(), df=2 * len(ps)))


def fisher_statistic(pvalues: list[float]) -> float:
    """``-2 sum log p`` (p floored at 1e-300): the suite's score, finite where the p-value underflows."""
    ps = np.clip(np.asarray(pvalues, dtype=float), P_FLOOR, 1.0)
    return float(-2 * np.log(ps).sum())


def constrained(path_a: str | Path, path_b: str | Path) -> dict[str, Any]:
    a, b = Weights(path_a), Weights(path_b)
    pvals = []
    for i in range(min(a.n_layers, b.n_layers)):
        name = f"model.layers.{i}.mlp.up_proj.weight"
        if not (a.has(name) and b.has(name)):
            continue
        wa, wb = a(name), b(name)
        if wa.shape != wb.shape:
            continue
        na = wa / np.maximum(np.linalg.norm(wa, axis=1, keepdims=True), 1e-12)
        nb = wb / np.maximum(np.linalg.norm(wb, axis=1, keepdims=True), 1e-12)
        _, cols = linear_sum_assignment(-(na @ nb.T))
        rho = stats.spearmanr(cols, np.arange(len(cols)))
        pvals.append(float(rho.pvalue) if np.isfinite(rho.pvalue) else 1.0)
    if not pvals:
        return {"score": None, "p_value": None, "note": "no up_proj of the same shape in both"}
    return {"score": fisher_statistic(pvals), "p_value": fisher(pvals), "per_layer": pvals}


def _lap_sq_euclid(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (units x tokens) matched to rows of ``y``; returns, per row of the smaller, its partner."""
    d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
    r, c = linear_sum_assignment(d)
    return c[np.argsort(r)]


@torch.no_grad()
def _mlp_activations(path: str | Path, ids: torch.Tensor) -> dict[str, list[np.ndarray]] | None:
    from gaugeport.core.verify import load_model

    model = load_model(path)
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or not hasattr(layers[0].mlp, "gate_proj"):
        return None
    acts: dict[str, list[np.ndarray]] = {"gate": [], "up": []}
    hooks = []
    store: dict[tuple[str, int], torch.Tensor] = {}
    for i, layer in enumerate(layers):
        for kind in ("gate", "up"):
            mod = getattr(layer.mlp, f"{kind}_proj")
            hooks.append(mod.register_forward_hook(
                lambda _m, _i, o, k=kind, li=i: store.__setitem__((k, li), o.reshape(-1, o.shape[-1]).double())))
    try:
        model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    for kind in ("gate", "up"):
        acts[kind] = [store[kind, i].numpy().T for i in range(len(layers))]  # units x tokens
    return acts


def match(path_a: str | Path, path_b: str | Path, n_seq: int = 8, seq_len: int = 64, seed: int = 0) -> dict[str, Any]:
    a, b = Weights(path_a), Weights(path_b)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, min(a.vocab, b.vocab), (n_seq, seq_len), generator=g)
    xa, xb = _mlp_activations(path_a, ids), _mlp_activations(path_b, ids)
    if xa is None or xb is None:
        return {"score": None, "p_value": None, "note": "no gate_proj / up_proj modules (mixture of experts)"}

    def layer_p(i: int, j: int) -> float:
        ga, gb, ua, ub = xa["gate"][i], xb["gate"][j], xa["up"][i], xb["up"][j]
        if ga.shape[0] > gb.shape[0]:  # rows: the narrower side's units
            ga, gb, ua, ub = gb, ga, ub, ua
        p_gate, p_up = _lap_sq_euclid(ga, gb), _lap_sq_euclid(ua, ub)
        r = stats.pearsonr(p_gate, p_up)
        return float(r.pvalue) if np.isfinite(r.pvalue) else 1.0

    d = abs(a.n_layers - b.n_layers)
    if d == 0:
        pvals = [layer_p(i, i) for i in range(a.n_layers)]
    elif b.n_layers < a.n_layers:  # unequal depths: the shallower model's block k can only be the deeper one's
        pvals = [min(layer_p(i, j) for i in range(j, j + d + 1)) for j in range(b.n_layers)]  # k .. k + d (the
    else:  # monotone band gaugeport's block map uses; all pairs cost 30 x 24 LAPs at SmolLM2 scale, ~45 minutes)
        pvals = [min(layer_p(i, j) for j in range(i, i + d + 1)) for i in range(a.n_layers)]
    return {"score": fisher_statistic(pvals), "p_value": fisher(pvals), "per_layer": pvals}
