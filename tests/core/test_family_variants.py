"""Config switches that change which tensors a family has: every variant's tensors are claimed and kept exact.

The parametrized tests in test_architectures.py build one tiny config per family; published
checkpoints of the same ``model_type`` differ (Falcon-7B's single LayerNorm and multi-query
attention vs Falcon-40B's two LayerNorms, DeepSeek's q-LoRA or plain q_proj, MoE families with
dense blocks or none). Each variant here switches tensors on or off; optional table rows must cover
them. Tolerance as in test_architectures.py (float32, relative to the largest logit).
"""

from __future__ import annotations

import copy

import pytest

from gaugeport.core.apply import apply_gauge_to_model
from gaugeport.core.archspec import get_spec
from gaugeport.core.gauge import SignedPermutation
from gaugeport.core.verify import compare_models
from gaugeport.models.tiny import probe_ids, tiny_model

REL_TOL = 1e-5
VARIANTS = [
    ("falcon", {"new_decoder_architecture": False, "multi_query": True, "parallel_attn": True, "bias": False}),
    ("falcon", {"new_decoder_architecture": False, "multi_query": False, "num_kv_heads": 4,
                "parallel_attn": False, "bias": True, "alibi": True}),  # falcon-rw: sequential, post-attention LN
    ("falcon", {"new_decoder_architecture": True, "num_ln_in_parallel_attn": 1, "bias": False}),  # Falcon2-11B
    ("stablelm", {"use_parallel_residual": True, "qk_layernorm": False}),
    ("phi", {"qk_layernorm": False}),
    ("starcoder2", {"use_bias": False}),
    ("cohere", {"use_qk_norm": False}),
    ("olmo", {"attention_bias": True, "clip_qkv": 3.0}),
    ("deepseek_v3", {"q_lora_rank": None, "attention_bias": True}),
    ("glm4_moe", {"use_qk_norm": False, "attention_bias": True}),
    ("qwen2_moe", {"mlp_only_layers": []}),
    ("llama4_text", {"interleave_moe_layer_step": 1}),
    ("seed_oss", {"attention_bias": False, "attention_out_bias": False}),
    ("arcee", {"attention_bias": True, "mlp_bias": True}),
]


@pytest.mark.parametrize(("model_type", "overrides"), VARIANTS, ids=lambda v: v if isinstance(v, str) else "")
def test_config_variant_is_claimed_and_keeps_the_function(model_type, overrides):
    model = tiny_model(model_type, **overrides)
    default = set(tiny_model(model_type).state_dict())
    assert set(model.state_dict()) != default  # the switch really changes the tensors
    gauge = SignedPermutation.random(32, seed=1)
    gauge = gauge if get_spec(model_type).allows_coordinate_signs else gauge.perm_only()
    res = compare_models(model, apply_gauge_to_model(copy.deepcopy(model), gauge), probe_ids(96), gauge)
    assert res.max_rel_diff <= REL_TOL, res
    assert res.hidden_max_rel_diff <= REL_TOL, res
