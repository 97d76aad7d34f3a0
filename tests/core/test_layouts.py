"""Layouts as published: heads verified as users consume them, bare base models, multimodal wrappers,
optional biases and buffers. Tolerance: 1e-5 relative (float32 tiny models, as in test_architectures).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from gaugeport.core.apply import apply_gauge_to_model, apply_gauge_to_state_dict
from gaugeport.core.archspec import get_spec
from gaugeport.core.errors import CheckpointError
from gaugeport.core.facts import ModelFacts
from gaugeport.core.gauge import SignedPermutation, save_gauge
from gaugeport.core.verify import compare_models, load_model, verify_checkpoints
from gaugeport.models.tiny import probe_ids, tiny_config, tiny_model

REL_TOL = 1e-5


def global_minus_one(d: int = 32, seed: int = 3) -> SignedPermutation:
    return SignedPermutation.random(d, seed=seed, positive_fraction=0.0)


# ----------------------------------------------------------------------------- BERT's MLM head
def test_bert_mlm_logits_survive_a_global_minus_one_gauge():
    model = tiny_model("bert")
    assert type(model).__name__ == "BertForMaskedLM"
    gauge = global_minus_one()
    res = compare_models(model, apply_gauge_to_model(copy.deepcopy(model), gauge), probe_ids(96), gauge)
    assert res.output == "logits" and res.max_rel_diff <= REL_TOL, res


def test_signing_the_mlm_transform_output_would_change_the_logits():
    """The old row (both axes of transform.dense signed) breaks: GELU is not odd. The test can fail."""
    spec = get_spec("bert")
    old = {"cls.predictions.transform.dense.weight": ("read_write", (0, 1)),
           "cls.predictions.transform.dense.bias": ("write_bias", (0,)),
           "cls.predictions.transform.LayerNorm.weight": ("gain", (0,))}
    rules = tuple(type(r)(r.template, old[r.template][0], old[r.template][1], r.optional, r.pattern)
                  if r.template in old else r for r in spec.rules)
    broken = type(spec)(**{**spec.__dict__, "rules": rules})
    model = tiny_model("bert")
    gauge = global_minus_one()
    wrong = copy.deepcopy(model)
    wrong.load_state_dict(apply_gauge_to_state_dict(model.state_dict(), gauge, broken))
    assert compare_models(model, wrong, probe_ids(96), gauge).max_rel_diff > 1e-2


def test_cli_verify_compares_mlm_logits_of_the_checkpoints_own_class(tiny_dir, tmp_path, cli):
    src = tiny_dir("bert")
    code, _, err = cli("apply", src, "--random-seed", "5", "--positive-fraction", "0", "--quiet",
                       "--save-gauge", tmp_path / "g.safetensors", "--out", tmp_path / "b")
    assert code == 0, err
    code, out, err = cli("verify", src, tmp_path / "b", "--gauge", tmp_path / "g.safetensors", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["output"] == "logits" and res["ok"] and res["max_rel_diff"] <= REL_TOL


def test_verify_refuses_to_compare_through_randomly_initialised_weights(tiny_dir, tmp_path):
    """A BertModel checkpoint whose config claims BertForMaskedLM: the head would be random."""
    base = transformers.BertModel(tiny_config("bert"))
    base.save_pretrained(tmp_path / "base")
    cfg = json.loads((tmp_path / "base" / "config.json").read_text())
    cfg["architectures"] = ["BertForMaskedLM"]
    (tmp_path / "base" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="randomly initialise"):
        load_model(tmp_path / "base")


# ----------------------------------------------------------------------------- bare base models
def _rename(src: Path, dest: Path, rename, drop=()) -> Path:
    dest.mkdir()
    sd = load_file(src / "model.safetensors")
    save_file({rename(k): v.contiguous() for k, v in sd.items() if k not in drop}, dest / "model.safetensors",
              metadata={"format": "pt"})
    for side in src.iterdir():
        if side.suffix == ".json":
            (dest / side.name).write_bytes(side.read_bytes())
    return dest


def test_gpt2_as_published_without_prefix_or_lm_head(tiny_dir, tmp_path, cli):
    """openai-community/gpt2 stores `h.0.attn.c_attn.weight`, `wte.weight`, ... and no lm_head (tied)."""
    src = _rename(tiny_dir("gpt2"), tmp_path / "a", lambda k: k.removeprefix("transformer."), drop=("lm_head.weight",))
    assert not any(k.startswith("transformer.") for k in load_file(src / "model.safetensors"))
    code, _, err = cli("apply", src, "--random-seed", "2", "--perm-only", "--quiet",
                       "--save-gauge", tmp_path / "g.safetensors", "--out", tmp_path / "b")
    assert code == 0, err
    res = verify_checkpoints(src, tmp_path / "b", SignedPermutation.random(32, seed=2).perm_only())
    assert res.ok and res.output == "logits", res


@pytest.mark.parametrize("model_type", ["llama", "qwen3", "gemma2", "gpt_neox"])
def test_bare_base_model_in_memory_and_on_disk(model_type, tmp_path):
    cfg = tiny_config(model_type)
    torch.manual_seed(0)
    full = tiny_model(model_type)
    base = transformers.AutoModel.from_config(cfg)
    base.load_state_dict(full.base_model.state_dict())
    base.eval()
    assert not any(n.startswith(("model.", "gpt_neox.")) for n in base.state_dict())
    gauge = SignedPermutation.random(32, seed=1)
    gauge = gauge if get_spec(model_type).allows_coordinate_signs else gauge.perm_only()
    res = compare_models(base, apply_gauge_to_model(copy.deepcopy(base), gauge), probe_ids(96), gauge)
    assert res.output == "last_hidden_state" and res.max_rel_diff <= REL_TOL, res
    base.save_pretrained(tmp_path / "a")
    from gaugeport.core.apply import apply_gauge_to_checkpoint

    apply_gauge_to_checkpoint(tmp_path / "a", gauge, tmp_path / "b", progress=False)
    assert verify_checkpoints(tmp_path / "a", tmp_path / "b", gauge, tol=REL_TOL).ok


# ----------------------------------------------------------------------------- multimodal wrapper
def _image_batch(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    cfg = model.config
    ids = probe_ids(93, n_seq=2, seq_len=12)  # text tokens below the image markers (93, 94, 95)
    img = torch.full((2, cfg.mm_tokens_per_image), cfg.image_token_index)
    ids = torch.cat([ids[:, :3], torch.full((2, 1), cfg.boi_token_index), img,
                     torch.full((2, 1), cfg.eoi_token_index), ids[:, 3:]], dim=1)
    g = torch.Generator().manual_seed(0)
    size = cfg.vision_config.image_size
    return {"input_ids": ids, "pixel_values": torch.randn(2, 3, size, size, generator=g)}


@torch.no_grad()
def test_gemma3_multimodal_with_an_image_in_memory():
    model = tiny_model("gemma3")
    names = list(model.state_dict())
    assert any(n.startswith("model.language_model.") for n in names)
    assert any(n.startswith("model.vision_tower.") for n in names)
    gauge = SignedPermutation.random(32, seed=1)
    gauged = apply_gauge_to_model(copy.deepcopy(model), gauge)
    for n, t in model.state_dict().items():  # the vision tower is declared untouched: not one value moves
        if ".vision_tower." in n:
            assert torch.equal(t, gauged.state_dict()[n]), n
    batch = _image_batch(model)
    la, lb = model(**batch).logits, gauged(**batch).logits
    assert ((la - lb).abs().max() / la.abs().max()).item() <= REL_TOL
    # the projector writes the stream: leaving it out changes the function (so the image path is tested)
    skip = copy.deepcopy(gauged)
    skip.model.multi_modal_projector.mm_input_projection_weight.copy_(
        model.model.multi_modal_projector.mm_input_projection_weight)
    assert ((la - skip(**batch).logits).abs().max() / la.abs().max()).item() > 1e-3


def test_gemma3_multimodal_checkpoint_on_disk(tiny_dir, tmp_path):
    """save_pretrained writes `language_model.model.*`; the facts come from `text_config`."""
    src = tiny_dir("gemma3")
    names = load_file(src / "model.safetensors")
    assert any(k.startswith("language_model.model.") for k in names)
    facts = ModelFacts.from_config(json.loads((src / "config.json").read_text()))
    assert (facts.d_model, facts.n_layers, facts.vocab_size) == (32, 2, 96)
    gauge = SignedPermutation.random(32, seed=4)
    from gaugeport.core.apply import apply_gauge_to_checkpoint

    apply_gauge_to_checkpoint(src, gauge, tmp_path / "b", progress=False)
    res = verify_checkpoints(src, tmp_path / "b", gauge, tol=REL_TOL)
    assert res.ok and res.output == "logits", res


# ----------------------------------------------------------------------------- optional biases / buffers
@pytest.mark.parametrize(("model_type", "switches", "tensor", "present"), [
    ("llama", {"mlp_bias": True, "attention_bias": True}, "model.layers.0.mlp.up_proj.bias", True),
    ("llama", {"attention_bias": True}, "model.layers.0.self_attn.o_proj.bias", True),
    ("qwen3", {"attention_bias": True}, "model.layers.0.self_attn.o_proj.bias", True),
    ("olmo2", {"attention_bias": True}, "model.layers.0.self_attn.o_proj.bias", True),
    ("gpt_neox", {"attention_bias": False}, "gpt_neox.layers.0.attention.dense.bias", False),
])
def test_config_switched_biases(model_type, switches, tensor, present):
    model = tiny_model(model_type, **switches)
    assert (tensor in model.state_dict()) == present
    gauge = SignedPermutation.random(32, seed=1)
    gauge = gauge if get_spec(model_type).allows_coordinate_signs else gauge.perm_only()
    res = compare_models(model, apply_gauge_to_model(copy.deepcopy(model), gauge), probe_ids(96), gauge)
    assert res.max_rel_diff <= REL_TOL, res


def test_pythia_rotary_buffers_on_disk_are_claimed(tiny_dir, tmp_path):
    src = tiny_dir("gpt_neox")
    sd = load_file(src / "model.safetensors")
    inv = torch.rand(4)
    sd.update({f"gpt_neox.layers.{i}.attention.rotary_emb.inv_freq": inv.clone() for i in range(2)})
    (tmp_path / "a").mkdir()
    save_file(sd, tmp_path / "a" / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "a" / "config.json").write_bytes((src / "config.json").read_bytes())
    gauge = SignedPermutation.random(32, seed=1).perm_only()
    save_gauge(gauge, tmp_path / "g.safetensors")
    from gaugeport.core.apply import apply_gauge_to_checkpoint

    apply_gauge_to_checkpoint(tmp_path / "a", gauge, tmp_path / "b", progress=False)
    out = load_file(tmp_path / "b" / "model.safetensors")
    assert torch.equal(out["gpt_neox.layers.1.attention.rotary_emb.inv_freq"], inv)
