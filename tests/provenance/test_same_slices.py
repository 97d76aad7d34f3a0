"""``same``'s check of the tensors outside the layers reads a large embedding or output head in row slices.

Whole, in float32 on both sides, a ``[vocab, d]`` matrix would be the verb's peak at large vocabularies
(4 x 4.2 GB at Llama-3-70B's shapes); sliced, the figure must be the one the whole tensors give.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from gaugeport.core.checkpoint import Checkpoint
from gaugeport.core.fullgauge import apply_full_gauge_to_checkpoint, random_full_gauge_for
from gaugeport.models.tiny import save_tiny
from gaugeport.provenance import same as S

BIG = ("model.embed_tokens.weight", "lm_head.weight")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("slices")
    a = save_tiny("llama", root / "a", seed=0)
    gauged = root / "gauged"
    apply_full_gauge_to_checkpoint(a, random_full_gauge_for(a, 5), gauged, progress=False)
    b = root / "b"  # the gauged copy with its embedding and head edited: the check must see it
    b.mkdir()
    state = load_file(gauged / "model.safetensors")
    g = torch.Generator().manual_seed(1)
    for name in BIG:
        state[name] = state[name] + 0.05 * torch.randn(state[name].shape, generator=g)
    save_file(state, b / "model.safetensors")
    (b / "config.json").write_text((gauged / "config.json").read_text())
    return a, gauged, b


@pytest.mark.parametrize("name", BIG)
def test_the_sliced_figure_is_the_whole_tensors_figure(pair, monkeypatch, name, folded_getters):
    get_a, get_b, rules, residual = folded_getters(pair[0], pair[2])
    ta, tb = S._read_layer([name], get_a, get_b, rules, residual, None)
    whole = S._rel_diff(ta[name], tb[name])
    monkeypatch.setattr(S, "SLICE_ELEMENTS", 100)  # the tiny [96, 32] matrix in slices of 3 rows
    sliced = S._sliced_rel_diff(name, get_a, get_b, rules, residual)
    assert whole > 1e-2  # the edit is there to be seen
    assert sliced == pytest.approx(whole, rel=1e-6)


def test_small_tensors_are_left_to_the_whole_comparison(pair, folded_getters):
    get_a, get_b, rules, residual = folded_getters(pair[0], pair[2])
    assert S._sliced_rel_diff("lm_head.weight", get_a, get_b, rules, residual) is None  # 3072 values


def test_a_gauged_copy_stays_identical_and_an_edited_one_does_not_when_sliced(pair, monkeypatch, general_path):
    monkeypatch.setattr(S, "SLICE_ELEMENTS", 100)
    a, gauged, edited = pair
    assert S.same(a, gauged).verdict == "identical"
    res = S.same(a, edited)
    assert res.verdict == "derived"
    assert res.identical_check["worst_tensor"] in BIG and res.identical_check["max_rel_weight_diff"] > 1e-2


def test_a_slice_of_a_file_truncated_after_it_was_opened_is_a_checkpoint_error(tmp_path):
    import os

    from gaugeport.core.errors import CheckpointError

    ckpt = Checkpoint.open(save_tiny("llama", tmp_path / "a", seed=0))
    assert ckpt.tensor_rows("model.embed_tokens.weight", 3, 7).shape == (4, 32)
    f = tmp_path / "a" / "model.safetensors"
    os.truncate(f, f.stat().st_size - 4000)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ckpt.tensor_rows("model.embed_tokens.weight", 0, 96)
