"""``same --data``'s activation moments: both models layer-streamed in lockstep, one layer's cross-moments
at a time, equal to the whole-model float64 computation."""

from __future__ import annotations

import numpy as np
import pytest

from gaugeport.core.archspec import get_spec
from gaugeport.core.hidden import get_hidden_spec
from gaugeport.core.verify import load_model
from gaugeport.estimate.hidden import mlp_unit_moments, streamed_mlp_moments
from gaugeport.models.tiny import probe_ids, save_tiny
from gaugeport.provenance.same import down_projection_modules

# float32 centred products over chunks of tokens, float64 accumulation, against float64 activations:
# correlations agree to float32 rounding of the activations themselves (measured: 1e-7 on both)
CORR_ATOL = 1e-6


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_streamed_correlations_equal_the_whole_model_ones_layer_by_layer(model_type, tmp_path):
    a = save_tiny(model_type, tmp_path / "a", seed=1)
    b = save_tiny(model_type, tmp_path / "b", seed=2)
    ids = probe_ids(96, n_seq=6, seq_len=24)
    paths = down_projection_modules(load_model(a), get_spec(model_type), get_hidden_spec(model_type))
    whole = mlp_unit_moments(load_model(a), load_model(b), list(ids.split(3)), module_paths=paths)
    seen: list[int] = []

    def on_layer(i, moments):
        seen.append(i)
        assert moments.count == ids.numel()
        np.testing.assert_allclose(moments.correlation(), whole[i], atol=CORR_ATOL)

    # chunk=50: several float32 chunks per layer, merged in float64
    n = streamed_mlp_moments(a, b, list(ids.split(3)), paths, on_layer, chunk=50)
    assert n == ids.numel()
    assert seen == list(range(len(whole)))  # every layer, in order, each once


def test_a_failing_layer_stops_both_forwards_with_its_error(tmp_path):
    a = save_tiny("llama", tmp_path / "a", seed=1)
    paths = down_projection_modules(load_model(a), get_spec("llama"), get_hidden_spec("llama"))

    def on_layer(i, moments):
        raise ValueError(f"stop at {i}")

    with pytest.raises(ValueError, match="stop at 0"):
        streamed_mlp_moments(a, a, [probe_ids(96, n_seq=2, seq_len=8)], paths, on_layer)
