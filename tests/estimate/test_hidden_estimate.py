"""Hidden-unit estimation: data-free (weights) and from activations, with per-unit confidence."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from gaugeport.core.fullgauge import apply_full_gauge_to_model, hidden_dims_for
from gaugeport.core.hidden import get_hidden_spec
from gaugeport.estimate.hidden import match_mlp_units_from_moments, mlp_unit_moments
from gaugeport.models.tiny import probe_ids, tiny_model


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_activation_moments_recover_the_mlp_units(model_type):
    from gaugeport.core.fullgauge import FullGauge

    model = tiny_model(model_type)
    spec_signs = get_hidden_spec(model_type).mlp_signs
    dims = hidden_dims_for(model.config.to_dict())
    truth = FullGauge.random(32, dims, 6, residual_signs=model_type == "llama", mlp_signs=spec_signs)
    gauged = apply_full_gauge_to_model(copy.deepcopy(model), truth)
    down = "mlp.down_proj" if model_type == "llama" else "mlp.c_proj"
    corrs = mlp_unit_moments(model, gauged, list(probe_ids(96, n_seq=8, seq_len=32).split(4)), down_name=down)
    assert len(corrs) == dims.n_layers
    for c, lg in zip(corrs, truth.layers, strict=True):
        m = match_mlp_units_from_moments(c, spec_signs)
        assert m.gauge == lg.mlp  # permutation and (gated blocks only) signs
        np.testing.assert_allclose(m.confidence, 1.0, atol=1e-6)
        assert m.margin.min() > 0
