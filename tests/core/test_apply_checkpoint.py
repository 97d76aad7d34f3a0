"""Applying a gauge to checkpoints on disk: streamed, loadable, function-preserving, verified."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors import safe_open

from gaugeport.core.apply import apply_gauge_to_checkpoint
from gaugeport.core.archspec import get_spec, supported_architectures
from gaugeport.core.checkpoint import INDEX_FILE, Checkpoint
from gaugeport.core.gauge import SignedPermutation, load_gauge
from gaugeport.core.verify import load_model, verify_checkpoints, weight_difference
from gaugeport.models.tiny import tiny_model

TOL = 1e-5  # relative logit / hidden-state difference, float32


@pytest.mark.parametrize("model_type", supported_architectures())
def test_applied_checkpoint_loads_and_computes_the_same_function(model_type, tiny_dir, tmp_path):
    src = tiny_dir(model_type)
    g = SignedPermutation.random(32, seed=5)
    g = g if get_spec(model_type).allows_coordinate_signs else g.perm_only()
    apply_gauge_to_checkpoint(src, g, tmp_path / "out", progress=False)
    res = verify_checkpoints(src, tmp_path / "out", g, tol=TOL)
    assert res.ok, res
    assert res.weight_max_abs_diff == 0.0


def test_sharded_checkpoint_keeps_its_shards_and_index(tmp_path):
    model = tiny_model("llama")
    model.save_pretrained(str(tmp_path / "a"), max_shard_size="20KB")
    src = Checkpoint.open(tmp_path / "a")
    assert len(src.shards) > 2
    g = SignedPermutation.random(32, seed=1)
    apply_gauge_to_checkpoint(tmp_path / "a", g, tmp_path / "b", progress=False)
    out = Checkpoint.open(tmp_path / "b")
    assert out.shards == src.shards
    assert json.loads((tmp_path / "b" / INDEX_FILE).read_text())["weight_map"] == src.shard_of
    assert verify_checkpoints(tmp_path / "a", tmp_path / "b", g, tol=TOL).ok


def test_tied_embeddings_are_transformed_once_and_stay_tied(tiny_dir, tmp_path):
    src = tiny_dir("gemma")  # gemma ties lm_head to embed_tokens
    assert "lm_head.weight" not in Checkpoint.open(src).names
    g = SignedPermutation.random(32, seed=2)
    apply_gauge_to_checkpoint(src, g, tmp_path / "out", progress=False)
    model = load_model(tmp_path / "out")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert verify_checkpoints(src, tmp_path / "out", g, tol=TOL).ok


def test_output_keeps_dtype_and_records_the_gauge_fingerprint(tmp_path):
    tiny_model("qwen2").to(torch.bfloat16).save_pretrained(str(tmp_path / "a"))
    g = SignedPermutation.random(32, seed=3)
    apply_gauge_to_checkpoint(tmp_path / "a", g, tmp_path / "b", progress=False)
    with safe_open(str(tmp_path / "b" / "model.safetensors"), "pt") as f:
        assert f.metadata()["gaugeport_gauge"] == g.fingerprint()
        assert f.get_tensor("model.norm.weight").dtype == torch.bfloat16
    assert weight_difference(tmp_path / "a", tmp_path / "b", g)[0] == 0.0


def test_side_files_are_copied(tiny_dir, tmp_path):
    src = tiny_dir("llama")
    apply_gauge_to_checkpoint(src, SignedPermutation.random(32, seed=1), tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "config.json").read_text() == (src / "config.json").read_text()
    assert (tmp_path / "out" / "generation_config.json").exists()
    assert transformers.AutoConfig.from_pretrained(str(tmp_path / "out")).model_type == "llama"


def test_weight_check_detects_a_wrong_gauge(tiny_dir, tmp_path):
    src = tiny_dir("llama")
    g = SignedPermutation.random(32, seed=1)
    apply_gauge_to_checkpoint(src, g, tmp_path / "out", progress=False)
    wrong = g.with_signs(-g.signs)
    assert weight_difference(src, tmp_path / "out", wrong)[0] > 0.01
    assert not verify_checkpoints(src, tmp_path / "out", wrong).ok


def test_cli_apply_then_verify(cli, tiny_dir, tmp_path):
    src = tiny_dir("mistral")
    code, out, _ = cli("apply", src, "--random-seed", "7", "--save-gauge", tmp_path / "g.safetensors",
                       "--out", tmp_path / "b", "--quiet")
    assert code == 0, out
    assert load_gauge(tmp_path / "g.safetensors") == SignedPermutation.random(32, seed=7)
    code, out, _ = cli("verify", src, tmp_path / "b", "--gauge", tmp_path / "g.safetensors")
    assert code == 0 and "PASS" in out


def test_cli_verify_exits_1_when_the_gauge_is_wrong(cli, tiny_dir, tmp_path):
    src = tiny_dir("llama")
    cli("apply", src, "--random-seed", "1", "--out", tmp_path / "b", "--quiet")
    cli("apply", src, "--random-seed", "2", "--save-gauge", tmp_path / "g2.safetensors", "--out", tmp_path / "c",
        "--quiet")
    code, out, _ = cli("verify", src, tmp_path / "b", "--gauge", tmp_path / "g2.safetensors")
    assert code == 1 and "FAIL" in out


def test_cli_verify_exits_1_for_different_functions(cli, tiny_dir):
    code, out, _ = cli("verify", tiny_dir("llama", 0), tiny_dir("llama", 1))
    assert code == 1


def test_cli_inspect_reports_the_gauge_group(cli, tiny_dir):
    code, out, _ = cli("inspect", tiny_dir("llama"), "--json")
    info = json.loads(out)
    assert code == 0 and info["group"] == "B_d" and info["norm"] == "rms" and info["d_model"] == 32
    code, out, _ = cli("inspect", tiny_dir("gpt2"), "--json")
    assert json.loads(out)["group"] == "S_d x {+-1}"
