"""The gauge file format: safetensors with perm/signs and self-describing metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gaugeport.core.errors import CheckpointError, GaugeError
from gaugeport.core.gauge import CONVENTION, SignedPermutation, load_gauge, read_gauge_file, save_gauge


def test_round_trip_keeps_gauge_provenance_and_extras(tmp_path):
    g = SignedPermutation.random(16, seed=3)
    conf = np.linspace(0, 1, 16, dtype=np.float32)
    save_gauge(g, tmp_path / "g.safetensors", provenance={"method": "signed"}, extras={"confidence": conf})
    f = read_gauge_file(tmp_path / "g.safetensors")
    assert f.gauge == g
    assert f.provenance == {"method": "signed"}
    np.testing.assert_array_equal(f.extras["confidence"], conf)


def test_file_stores_int64_perm_int8_signs_and_the_convention(tmp_path):
    save_gauge(SignedPermutation.random(8, seed=0), tmp_path / "g.safetensors")
    with safe_open(str(tmp_path / "g.safetensors"), "pt") as f:
        meta = f.metadata()
        assert f.get_tensor("perm").dtype == torch.int64
        assert f.get_tensor("signs").dtype == torch.int8
    assert meta["format"] == "gaugeport.signed_permutation" and meta["d"] == "8"
    assert meta["convention"] == CONVENTION
    json.loads(meta["provenance"])


def test_existing_gauge_file_is_not_overwritten(tmp_path):
    path = tmp_path / "g.safetensors"
    save_gauge(SignedPermutation.identity(4), path)
    with pytest.raises(CheckpointError, match="already exists"):
        save_gauge(SignedPermutation.random(4, seed=1), path)
    assert load_gauge(path) == SignedPermutation.identity(4)


def test_nan_signs_are_rejected(tmp_path):
    save_file({"perm": torch.arange(4), "signs": torch.tensor([1.0, float("nan"), 1.0, -1.0])},
              str(tmp_path / "g.safetensors"),
              metadata={"format": "gaugeport.signed_permutation", "version": "1", "d": "4"})
    with pytest.raises(GaugeError, match="NaN"):
        load_gauge(tmp_path / "g.safetensors")


def test_not_a_permutation_is_rejected():
    with pytest.raises(GaugeError, match="not a permutation"):
        SignedPermutation(np.array([0, 0, 1]), np.array([1, 1, 1]))


def test_truncated_gauge_file_gives_clear_error(tmp_path):
    path = tmp_path / "g.safetensors"
    save_gauge(SignedPermutation.random(64, seed=0), path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(CheckpointError, match="truncated"):
        load_gauge(path)


def test_other_safetensors_file_is_not_taken_for_a_gauge(tmp_path):
    save_file({"perm": torch.arange(4), "signs": torch.ones(4, dtype=torch.int8)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(GaugeError, match="not a gaugeport gauge file"):
        load_gauge(tmp_path / "x.safetensors")


def test_width_mismatch_on_apply_is_an_error():
    with pytest.raises(GaugeError, match="width mismatch"):
        SignedPermutation.identity(4).apply(np.zeros((2, 5)))
