"""Mixture-of-experts layouts and DeepSeek/GLM multi-token prediction.

Experts exist in two layouts: one 2-D tensor per expert in published files
(``block_sparse_moe.experts.0.w1.weight``) and fused 3-D tensors in transformers-5 memory
(``mlp.experts.gate_up_proj`` ``[E, 2I, d]``). ``save_pretrained`` writes the published layout
and ``from_pretrained`` fuses it, so gauging the file and gauging the model must land on the same
weights, bit for bit. The MTP layer's ``eh_proj`` reads two residual vectors concatenated; it is
checked on transformers' own MTP computation. Tolerances: float32, relative to the largest
magnitude, as in test_architectures.py.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from gaugeport.core.apply import (
    apply_gauge_to_checkpoint,
    apply_gauge_to_model,
    apply_gauge_to_state_dict,
    transform_tensor,
)
from gaugeport.core.archspec import get_spec
from gaugeport.core.checkpoint import Checkpoint
from gaugeport.core.errors import GaugeError
from gaugeport.core.gauge import SignedPermutation
from gaugeport.core.verify import load_model
from gaugeport.models.mtp import mtp_outputs, save_tiny_with_mtp
from gaugeport.models.tiny import probe_ids, tiny_model

REL_TOL = 1e-5
# family -> is the published layout one tensor per expert (else: fused 3-D tensors on disk too)
MOE = {"mixtral": True, "qwen2_moe": True, "qwen3_moe": True, "olmoe": True, "deepseek_v3": True,
       "glm4_moe": True, "granitemoe": False, "llama4_text": False, "gpt_oss": False}


@pytest.mark.parametrize("model_type", sorted(MOE))
def test_published_and_in_memory_expert_layouts_gauge_to_the_same_model(model_type, tiny_dir, tmp_path):
    src = tiny_dir(model_type)
    on_disk = Checkpoint.open(src).names
    in_memory = tiny_model(model_type).state_dict()
    assert any(".experts.0." in n for n in on_disk) == MOE[model_type]
    assert any(t.ndim == 3 and ".experts." in n for n, t in in_memory.items())  # fused in memory
    g = SignedPermutation.random(32, seed=9)
    apply_gauge_to_checkpoint(src, g, tmp_path / "b", progress=False)
    via_disk = load_model(tmp_path / "b").state_dict()
    via_memory = apply_gauge_to_model(tiny_model(model_type), g).state_dict()
    assert via_disk.keys() == via_memory.keys()
    for name, t in via_memory.items():
        assert torch.equal(t, via_disk[name]), name


def test_concatenated_residual_blocks_are_gauged_block_by_block():
    """The MTP check, stated: eh_proj' applied to [G e; G h] equals G (eh_proj [e; h])."""
    rule = next(r for r in get_spec("deepseek_v3").rules if r.template.endswith("eh_proj.weight"))
    assert rule.axes == (0, 1) and rule.blocks == (1, 2)
    d = 32
    torch.manual_seed(0)
    w, e, h = torch.randn(d, 2 * d), torch.randn(5, d), torch.randn(5, d)
    g = SignedPermutation.random(d, seed=4)
    w_b = transform_tensor("eh_proj.weight", w, rule, g)
    got = torch.cat([g.apply(e, -1), g.apply(h, -1)], -1) @ w_b.T
    want = g.apply(torch.cat([e, h], -1) @ w.T, -1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    with pytest.raises(GaugeError, match="2 x 32"):  # a width that is not two residual vectors
        transform_tensor("eh_proj.weight", w[:, :40], rule, g)


@pytest.mark.parametrize("model_type", ["deepseek_v3", "glm4_moe"])
def test_multi_token_prediction_layer_keeps_its_function(model_type, tmp_path):
    src = save_tiny_with_mtp(model_type, tmp_path / "a")
    names = Checkpoint.open(src).names
    assert "model.layers.2.eh_proj.weight" in names and "model.layers.2.mlp.experts.3.up_proj.weight" in names
    g = SignedPermutation.random(32, seed=6)
    apply_gauge_to_checkpoint(src, g, tmp_path / "b", progress=False)
    ids = probe_ids(96, 2, 12)
    h_a, y_a = mtp_outputs(src, ids)
    h_b, y_b = mtp_outputs(tmp_path / "b", ids)
    scale = y_a.abs().max()
    assert (y_a - y_b).abs().max() <= REL_TOL * scale
    assert (g.apply(h_a, -1) - h_b).abs().max() <= REL_TOL * h_a.abs().max()
    # control: leave eh_proj ungauged and the MTP logits move, so this check can fail
    spec = get_spec(model_type)
    rules = tuple(type(r)(r.template, "untouched", (), True, r.pattern) if "eh_proj" in r.template else r
                  for r in spec.rules)
    broken = type(spec)(**{**spec.__dict__, "rules": rules})
    (tmp_path / "c").mkdir()
    tensors = apply_gauge_to_state_dict(load_file(str(src / "model.safetensors")), g, broken)
    save_file(tensors, str(tmp_path / "c" / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "c" / "config.json").write_text((src / "config.json").read_text())
    _, y_c = mtp_outputs(tmp_path / "c", ids)
    assert (y_a - y_c).abs().max() > 1e-2 * scale
