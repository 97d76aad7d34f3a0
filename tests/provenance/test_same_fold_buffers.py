"""Folded layer tensors written into buffers reused layer after layer: the same values, one buffer per tensor."""

from __future__ import annotations

import pytest
import torch

from gaugeport.core.fullgauge import apply_full_gauge_to_checkpoint, random_full_gauge_for
from gaugeport.models.tiny import save_tiny
from gaugeport.provenance import same as S


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("fold_buffers")
    a = save_tiny("llama", root / "a", seed=0)
    apply_full_gauge_to_checkpoint(a, random_full_gauge_for(a, 5), root / "b", progress=False)
    return a, root / "b"


def test_folded_tensors_in_buffers_equal_the_freshly_folded_ones(pair, folded_getters):
    get_a, get_b, rules, residual = folded_getters(*pair)
    layer = sorted(n for n in rules if n.startswith("model.layers.0."))
    ta, tb = S._read_layer(layer, get_a, get_b, rules, residual, None)
    fa, fb = S._read_layer(layer, get_a, get_b, rules, residual, None, (S._FoldBuffers(), S._FoldBuffers()))
    folded = [n for n in layer if n in get_a.gain_of]
    assert folded  # the layer has readers of a norm
    for n in layer:
        assert torch.equal(ta[n], fa[n]) and torch.equal(tb[n], fb[n]), n


def test_a_tensor_of_every_layer_shares_one_buffer_and_each_tensor_has_its_own():
    buf = S._FoldBuffers()
    up0 = buf.get("model.layers.0.mlp.up_proj.weight", (8, 4))
    assert buf.get("model.layers.7.mlp.up_proj.weight", (8, 4)) is up0
    assert buf.get("model.layers.7.mlp.gate_proj.weight", (8, 4)) is not up0
    assert buf.get("model.layers.7.mlp.up_proj.weight", (4, 8)) is not up0
    assert up0.dtype == torch.float32
