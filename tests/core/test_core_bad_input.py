"""Bad input: a clear message, a non-zero exit, no partial output, the input untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gaugeport.core.apply import apply_gauge_to_checkpoint
from gaugeport.core.archspec import get_spec
from gaugeport.core.errors import ArchitectureError, CheckpointError, GaugeError
from gaugeport.core.gauge import SignedPermutation, save_gauge


def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def leftovers(parent: Path) -> list[str]:
    from gaugeport.core.fileio import TMP_DIR_NAME

    return [p.name for p in parent.iterdir() if p.name == TMP_DIR_NAME or ".tmp-" in p.name or ".old-" in p.name]


def copy_ckpt(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_unknown_architecture_names_the_supported_ones(tiny_dir, tmp_path, cli):
    ckpt = copy_ckpt(tiny_dir("llama"), tmp_path / "a")
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "model_type": "mamba"}))
    code, _, err = cli("apply", ckpt, "--random-seed", "0", "--out", tmp_path / "b")
    assert code == 2 and "unsupported architecture 'mamba'" in err and "llama" in err
    assert not (tmp_path / "b").exists()


def test_unclassified_parameter_is_named_not_skipped(tiny_dir, tmp_path):
    ckpt = copy_ckpt(tiny_dir("llama"), tmp_path / "a")
    tensors = load_file(str(ckpt / "model.safetensors"))
    tensors["model.layers.0.mystery_adapter.weight"] = torch.zeros(32)
    save_file(tensors, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ArchitectureError, match="llama.*mystery_adapter"):
        apply_gauge_to_checkpoint(ckpt, SignedPermutation.random(32, seed=0), tmp_path / "b", progress=False)
    assert not (tmp_path / "b").exists() and not leftovers(tmp_path)


def test_table_validation_rejects_unknown_keys():
    from gaugeport.core import archspec

    with pytest.raises(ArchitectureError, match="unknown key"):
        archspec._check_keys({"name": "x", "role": "read", "axis": 1, "inputs": "old"}, archspec._ROW_KEYS, "row")


def test_every_shipped_table_loads():
    for model_type in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2",
                       "gpt2", "gpt_neox", "bert"):
        assert get_spec(model_type).rules


def test_gauge_width_mismatch(tiny_dir, tmp_path, cli):
    save_gauge(SignedPermutation.random(48, seed=0), tmp_path / "g.safetensors")
    code, _, err = cli("apply", tiny_dir("llama"), "--gauge", tmp_path / "g.safetensors", "--out", tmp_path / "b")
    assert code == 2 and "width mismatch" in err and "d=48" in err and "d_model=32" in err
    assert not (tmp_path / "b").exists()


def test_layernorm_model_refuses_coordinate_signs_with_an_explanation(tiny_dir, tmp_path, cli):
    code, _, err = cli("apply", tiny_dir("gpt2"), "--random-seed", "0", "--out", tmp_path / "b")
    assert code == 2 and "LayerNorm" in err and "--perm-only" in err
    assert cli("apply", tiny_dir("gpt2"), "--random-seed", "0", "--perm-only", "--out", tmp_path / "b",
               "--quiet")[0] == 0


def test_truncated_checkpoint_gives_clear_error_and_no_output(tiny_dir, tmp_path, cli):
    ckpt = copy_ckpt(tiny_dir("llama"), tmp_path / "a")
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, _, err = cli("apply", ckpt, "--random-seed", "0", "--out", tmp_path / "b")
    assert code == 2 and "truncated or corrupt" in err
    assert not (tmp_path / "b").exists() and not leftovers(tmp_path)


def test_missing_shard_is_reported(tiny_dir, tmp_path):
    from gaugeport.models.tiny import tiny_model

    tiny_model("llama").save_pretrained(str(tmp_path / "a"), max_shard_size="20KB")
    next((tmp_path / "a").glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        apply_gauge_to_checkpoint(tmp_path / "a", SignedPermutation.random(32, seed=0), tmp_path / "b")


def test_existing_output_is_refused_without_force_and_input_untouched(tiny_dir, tmp_path, cli):
    src = tiny_dir("llama")
    before = tree_digest(src)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("mine")
    code, _, err = cli("apply", src, "--random-seed", "0", "--out", tmp_path / "b")
    assert code == 2 and "already exists" in err and "--force" in err
    assert (tmp_path / "b" / "keep.txt").read_text() == "mine"
    assert cli("apply", src, "--random-seed", "0", "--out", tmp_path / "b", "--force", "--quiet")[0] == 0
    assert not (tmp_path / "b" / "keep.txt").exists() and (tmp_path / "b" / "model.safetensors").exists()
    assert tree_digest(src) == before and not leftovers(tmp_path)


def test_output_inside_or_equal_to_the_input_is_refused(tiny_dir, cli):
    src = tiny_dir("llama")
    before = tree_digest(src)
    for out in (src, src / "sub"):
        code, _, err = cli("apply", src, "--random-seed", "0", "--out", out, "--force")
        assert code == 2 and "overlaps the input" in err
    assert tree_digest(src) == before


def test_failure_mid_write_leaves_no_partial_output(tiny_dir, tmp_path, monkeypatch):
    import gaugeport.core.apply as apply_mod

    calls = {"n": 0}
    real = apply_mod.gather_rows_cols  # the per-chunk step of apply's data path

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(apply_mod, "gather_rows_cols", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        apply_gauge_to_checkpoint(tiny_dir("llama"), SignedPermutation.random(32, seed=0), tmp_path / "b",
                                  progress=False)
    assert not (tmp_path / "b").exists() and not leftovers(tmp_path)


def test_pytorch_bin_only_checkpoint_gets_a_hint(tmp_path):
    from gaugeport.core.checkpoint import Checkpoint

    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="pytorch_model.bin") as exc:
        Checkpoint.open(tmp_path)
    assert "save_pretrained" in str(exc.value)


def test_corrupt_config_json(tiny_dir, tmp_path):
    from gaugeport.core.checkpoint import Checkpoint

    ckpt = copy_ckpt(tiny_dir("llama"), tmp_path / "a")
    (ckpt / "config.json").write_text('{"model_type": "lla')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Checkpoint.open(ckpt)


def test_apply_needs_exactly_one_gauge_source(tiny_dir, tmp_path, cli):
    code, _, err = cli("apply", tiny_dir("llama"), "--out", tmp_path / "b")
    assert code == 2 and "exactly one" in err


def test_gauge_width_mismatch_in_verify(tiny_dir, tmp_path, cli):
    save_gauge(SignedPermutation.random(16, seed=0), tmp_path / "g.safetensors")
    code, _, err = cli("verify", tiny_dir("llama"), tiny_dir("llama"), "--gauge", tmp_path / "g.safetensors")
    assert code == 2 and "width mismatch" in err


def test_nan_in_gauge_is_refused_before_any_work(tmp_path):
    with pytest.raises(GaugeError, match="NaN"):
        SignedPermutation(torch.tensor([0.0, float("nan")]).numpy(), torch.tensor([1, 1]).numpy())
