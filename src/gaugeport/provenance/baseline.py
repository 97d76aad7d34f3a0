"""A permutation-only matcher in the style of the constrained independence tests of Zhu et al.
("Independence Tests for Language Models", ICML 2025), for comparison with ``same``.

Such tests assume the two models share a residual basis up to a permutation: they align the
residual stream with a permutation (signs ignored), match each layer's MLP units on their weights
as stored (cosine of the gate/up rows), and, because under independent training B's unit labels
are uniformly random, test whether the matched permutation looks like the identity (Spearman
correlation, exact null: ``rho * sqrt(n - 1)`` is about N(0, 1)); layers combine by Fisher's method.

The p-value is exact under its null, and the test is powerful on copies whose residual stream was
only permuted; on an RMSNorm checkpoint whose stream carries signs (a B_d gauge), half the residual
coordinates are compared against their own negatives, the unit matching is noise and the test
loses its power. Written from the paper's description; no code of theirs is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from gaugeport.core.checkpoint import Checkpoint
from gaugeport.core.hidden import get_hidden_spec
from gaugeport.estimate.align import align_by_weights
from gaugeport.estimate.hidden import _cosines, layer_features, to_a_coordinates
from gaugeport.estimate.lap import linear_assignment


def permutation_matcher_test(path_a: str | Path, path_b: str | Path) -> dict[str, Any]:
    """p-value of the permutation-only matcher (small: B derived from A), with per-layer statistics."""
    ca, cb = Checkpoint.open(path_a), Checkpoint.open(path_b)
    spec = ca.spec
    hspec = get_hidden_spec(spec.model_type)
    dims = hspec.dims(ca.config, ca.d_model)
    residual = align_by_weights(path_a, path_b).gauge.perm_only()  # the S_d assumption: signs ignored
    rules = spec.classify_all(ca.names)
    fa = layer_features(ca.names, ca.tensor, spec, hspec, dims)
    fb = layer_features(cb.names, lambda n: to_a_coordinates(n, cb.tensor(n), rules[n], residual), spec, hspec, dims)
    layers, log_ps = [], []
    for layer in range(dims.n_layers):
        cs = [c for mode in ("abs", "signed") if (c := _cosines(fa[layer], fb[layer], "mlp", mode, "in")) is not None]
        score = sum(cs) / len(cs)  # raw cosines: a permutation-only matcher compares weights as stored
        cols = linear_assignment(score).cols
        n = cols.size
        rho = float(stats.spearmanr(np.arange(n), cols).statistic) if n > 2 else 0.0
        logp = float(stats.norm.logsf(rho * np.sqrt(max(n - 1, 1))))
        log_ps.append(logp)
        layers.append({"layer": layer, "spearman": rho, "p_value": float(np.exp(logp)),
                       "identity_fraction": float(np.mean(cols == np.arange(n)))})
    x = -2.0 * float(np.sum(log_ps))
    p = float(stats.chi2.sf(x, 2 * len(log_ps)))
    return {"p_value": p, "layers": layers, "residual": "permutation only (signs ignored)"}
