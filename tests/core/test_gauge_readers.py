"""Both gauge-file readers validate a version-2 file whole: the residual reader (load_gauge) refuses a
file whose per-layer part is damaged, as the full reader does."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from gaugeport.core.errors import GaugeError
from gaugeport.core.fullgauge import FullGauge, LayerGauge, load_full_gauge, save_full_gauge
from gaugeport.core.gauge import SignedPermutation, load_gauge


def _full_gauge_file(path):
    layer = LayerGauge(SignedPermutation.random(12, seed=1), SignedPermutation(np.array([2, 0, 3, 1]), np.ones(4)), 4)
    g = FullGauge(SignedPermutation.random(8, seed=0), (layer, layer.inverse()))
    save_full_gauge(g, path)
    return g


def _damage(path, name):
    with safe_open(str(path), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118
    t = tensors[name].clone()
    t[0] = t[1]  # a repeated index: not a permutation
    tensors[name] = t
    save_file(tensors, str(path), metadata=meta)


def test_an_intact_version_2_file_reads_the_same_through_both_readers(tmp_path):
    g = _full_gauge_file(tmp_path / "g.safetensors")
    assert load_full_gauge(tmp_path / "g.safetensors") == g
    assert load_gauge(tmp_path / "g.safetensors") == g.residual


@pytest.mark.parametrize("name", ["layers.1.mlp.perm", "layers.0.heads.perm"])
def test_a_damaged_layer_is_refused_by_both_readers(tmp_path, name):
    _full_gauge_file(tmp_path / "g.safetensors")
    _damage(tmp_path / "g.safetensors", name)
    for read in (load_full_gauge, load_gauge):
        with pytest.raises(GaugeError, match="layer"):
            read(tmp_path / "g.safetensors")
