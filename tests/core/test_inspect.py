"""Gauge-group detection from norm gains."""

from __future__ import annotations

import torch

from gaugeport.core.inspection import inspect_model
from gaugeport.models.tiny import tiny_model


def test_generic_rms_gains_give_signed_permutations():
    info = inspect_model(tiny_model("llama"))
    assert info.group == "B_d" and info.gain_min_gap > 0 and not info.warnings


def test_uniform_rms_gains_give_all_rotations_and_a_warning():
    info = inspect_model(tiny_model("llama", randomize=False))  # HF initialises RMSNorm gains to 1
    assert info.group == "O(d)"
    assert any("uniform" in w for w in info.warnings)


def test_gemma_zero_stored_gains_mean_uniform_effective_gains():
    info = inspect_model(tiny_model("gemma", randomize=False))  # stored w = 0, gain = 1 + w
    assert info.gain_offset == 1.0 and info.group == "O(d)"


def test_two_coordinates_with_equal_gains_everywhere_form_a_tied_block():
    model = tiny_model("qwen3")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p[1] = p[0]
    info = inspect_model(model)
    assert info.tied_coordinate_blocks == 1 and info.gain_min_gap == 0.0 and info.warnings


def test_layernorm_models_have_permutations_and_a_global_sign():
    assert inspect_model(tiny_model("gpt_neox")).group == "S_d x {+-1}"


def test_residual_tensor_count_excludes_untouched_tensors():
    model = tiny_model("qwen3")
    head_dim_norms = [n for n in model.state_dict() if n.endswith(("q_norm.weight", "k_norm.weight"))]
    assert len(head_dim_norms) == 2 * model.config.num_hidden_layers  # act over head_dim, not the stream
    info = inspect_model(model)
    assert info.n_residual_tensors == info.n_tensors - len(head_dim_norms)
