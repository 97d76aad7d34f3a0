"""The small importable API mirrors the verbs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import gaugeport
from gaugeport import SignedPermutation, apply_gauge
from gaugeport.core.errors import DataError, GaugeportError
from gaugeport.core.verify import compare_models, verify_checkpoints
from gaugeport.models.tiny import probe_ids, tiny_model


def test_apply_gauge_on_a_module_is_in_place_and_preserves_logits():
    model = tiny_model("qwen2")
    original = copy.deepcopy(model)
    g = SignedPermutation.random(32, seed=3)
    assert apply_gauge(model, g) is model
    assert compare_models(original, model, probe_ids(96), g).max_rel_diff < 1e-5


def test_apply_gauge_on_a_state_dict_returns_a_new_dict():
    model = tiny_model("llama")
    sd = model.state_dict()
    before = {k: v.clone() for k, v in sd.items()}
    out = apply_gauge(sd, SignedPermutation.random(32, seed=1), model_type="llama")
    assert all(torch.equal(sd[k], before[k]) for k in sd)
    assert not torch.equal(out["model.norm.weight"], sd["model.norm.weight"])
    with pytest.raises(GaugeportError, match="model_type"):
        apply_gauge(sd, SignedPermutation.random(32, seed=1))


def test_apply_gauge_on_a_path_needs_an_output(tiny_dir, tmp_path):
    with pytest.raises(GaugeportError, match="out="):
        apply_gauge(tiny_dir("llama"), SignedPermutation.random(32, seed=1))
    out = apply_gauge(tiny_dir("llama"), SignedPermutation.random(32, seed=1), out=tmp_path / "b")
    assert (out / "model.safetensors").exists()


def test_inspect_accepts_a_model_or_a_path(tiny_dir):
    assert gaugeport.inspect(tiny_model("phi3")).group == "B_d"
    assert gaugeport.inspect(tiny_dir("phi3")).model_type == "phi3"


def test_verify_reads_user_token_ids(tiny_dir, tmp_path):
    ids = np.arange(3, 3 + 2 * 16).reshape(2, 16) % 96
    np.save(tmp_path / "ids.npy", ids)
    res = verify_checkpoints(tiny_dir("llama"), tiny_dir("llama"), data=tmp_path / "ids.npy")
    assert res.n_tokens == 32 and res.max_abs_diff == 0.0
    np.save(tmp_path / "bad.npy", ids + 1000)
    with pytest.raises(DataError, match="token ids must lie"):
        verify_checkpoints(tiny_dir("llama"), tiny_dir("llama"), data=tmp_path / "bad.npy")
