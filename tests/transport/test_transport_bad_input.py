"""Bad inputs to `gaugeport transport`: a clear error (exit 2, what and what to do) and no output at all."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from gaugeport.core.gauge import SignedPermutation, save_gauge
from gaugeport.models.tiny import save_tiny

D = 16


@pytest.fixture
def g16(tmp_path) -> Path:
    return save_gauge(SignedPermutation.random(D, seed=0), tmp_path / "g16.safetensors")


@pytest.fixture
def g32(tmp_path) -> Path:
    return save_gauge(SignedPermutation.random(32, seed=0), tmp_path / "g32.safetensors")


def _sae_dir(path: Path, d_in: int = D, w_enc: torch.Tensor | None = None, **cfg) -> Path:
    path.mkdir()
    w = {"W_enc": torch.randn(d_in, 8) if w_enc is None else w_enc, "b_enc": torch.zeros(8),
         "W_dec": torch.randn(8, d_in), "b_dec": torch.zeros(d_in)}
    save_file(w, str(path / "sae_weights.safetensors"))
    (path / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": d_in, "d_sae": 8, **cfg}))
    return path


def _fails(cli, *args: object, match: str) -> str:
    code, _, err = cli("transport", *args)
    assert code == 2, err
    assert "error:" in err and match in err
    return err


def test_wrong_kind_is_refused(cli, tmp_path, g16) -> None:
    torch.save(torch.randn(D), tmp_path / "v.pt")
    _fails(cli, tmp_path / "v.pt", "--gauge", g16, "--out", tmp_path / "o", "--kind", "sae",
           match="looks like a vector")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("make", ["vector", "sae", "coordinates"])
def test_width_mismatch_is_refused(cli, tmp_path, g32, make) -> None:
    if make == "vector":
        src, out = tmp_path / "v.npy", tmp_path / "o.npy"
        np.save(src, np.ones((2, D), dtype=np.float32))
    elif make == "sae":
        src, out = _sae_dir(tmp_path / "sae"), tmp_path / "o"
    else:
        src, out = tmp_path / "c.json", tmp_path / "o.json"
        src.write_text("[40]")
        g32 = save_gauge(SignedPermutation.random(D, seed=0), tmp_path / "small.safetensors")
    _fails(cli, src, "--gauge", g32, "--out", out, match="width" if make != "coordinates" else "out of range")
    assert not out.exists()


def test_trainer_checkpoint_width_mismatch_is_refused(cli, tmp_path, g16) -> None:
    ckpt = save_tiny("llama", tmp_path / "ckpt")  # d_model = 32
    torch.save({"state": {}, "param_groups": []}, ckpt / "optimizer.pt")
    _fails(cli, ckpt, "--gauge", g16, "--out", tmp_path / "o", match="width mismatch")
    assert not (tmp_path / "o").exists()


def test_nan_in_a_vector_is_refused(cli, tmp_path, g16) -> None:
    v = torch.randn(D)
    v[3] = float("nan")
    torch.save(v, tmp_path / "v.pt")
    _fails(cli, tmp_path / "v.pt", "--gauge", g16, "--out", tmp_path / "o.pt", match="NaN")
    assert not (tmp_path / "o.pt").exists()


def test_nan_in_sae_weights_is_refused(cli, tmp_path, g16) -> None:
    w = torch.randn(D, 8)
    w[0, 0] = float("inf")
    src = _sae_dir(tmp_path / "sae", w_enc=w)
    _fails(cli, src, "--gauge", g16, "--out", tmp_path / "o", match="NaN")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".npy", ".gguf"])
def test_corrupt_vector_file_is_refused(cli, tmp_path, g16, suffix) -> None:
    src = tmp_path / f"v{suffix}"
    save_file({"v": torch.randn(D)}, str(tmp_path / "good.safetensors"))
    src.write_bytes((tmp_path / "good.safetensors").read_bytes()[:40])  # truncated
    _fails(cli, src, "--gauge", g16, "--out", tmp_path / f"o{suffix}", match="cannot read")
    assert not (tmp_path / f"o{suffix}").exists()


def test_corrupt_sae_config_is_refused(cli, tmp_path, g16) -> None:
    src = _sae_dir(tmp_path / "sae")
    (src / "cfg.json").write_text('{"architecture": "standard", "d_in"')
    _fails(cli, src, "--gauge", g16, "--out", tmp_path / "o", match="not valid JSON")
    assert not (tmp_path / "o").exists()


class _Payload:
    """Unpickling this would create a marker file: weights_only=True must refuse before that happens."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_that_weights_only_refuses_is_not_executed(cli, tmp_path, g16) -> None:
    marker = tmp_path / "pwned"
    torch.save({"layer_activations": {0: torch.randn(D)}, "obj": _Payload(str(marker))}, tmp_path / "v.pt")
    err = _fails(cli, tmp_path / "v.pt", "--gauge", g16, "--out", tmp_path / "o.pt",
                 match="refuses to load it, for safety")
    assert "hint:" in err and "weights_only=False" not in err and "corrupt" not in err
    assert not marker.exists() and not (tmp_path / "o.pt").exists()


def test_model_gguf_is_not_a_control_vector(cli, tmp_path, g16) -> None:
    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, D), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    _fails(cli, tmp_path / "m.gguf", "--gauge", g16, "--out", tmp_path / "o.gguf", match="not a control vector")


def test_model_checkpoint_points_to_apply(cli, tmp_path, g16) -> None:
    ckpt = save_tiny("llama", tmp_path / "ckpt")
    err = _fails(cli, ckpt, "--gauge", g16, "--out", tmp_path / "o", match="without optimizer state")
    assert "gaugeport apply" in err


def test_gauge_file_given_as_artifact_is_refused(cli, tmp_path, g16) -> None:
    _fails(cli, g16, "--gauge", g16, "--out", tmp_path / "o.safetensors", match="gauge file")


def test_temporal_sae_is_refused_with_the_reason(cli, tmp_path, g16) -> None:
    src = _sae_dir(tmp_path / "sae", architecture="temporal")
    _fails(cli, src, "--gauge", g16, "--out", tmp_path / "o", match="temporal")


def test_existing_output_needs_force_and_input_is_never_overwritten(cli, tmp_path, g16) -> None:
    v = torch.randn(D)
    torch.save(v, tmp_path / "v.pt")
    torch.save(torch.zeros(D), tmp_path / "o.pt")
    _fails(cli, tmp_path / "v.pt", "--gauge", g16, "--out", tmp_path / "o.pt", match="already exists")
    assert torch.equal(torch.load(tmp_path / "o.pt", weights_only=True), torch.zeros(D))
    assert cli("transport", tmp_path / "v.pt", "--gauge", g16, "--out", tmp_path / "o.pt", "--force")[0] == 0
    _fails(cli, tmp_path / "v.pt", "--gauge", g16, "--out", tmp_path / "v.pt", "--force", match="overlaps the input")
    assert torch.equal(torch.load(tmp_path / "v.pt", weights_only=True), v)


def test_output_format_must_match_input(cli, tmp_path, g16) -> None:
    torch.save(torch.randn(D), tmp_path / "v.pt")
    _fails(cli, tmp_path / "v.pt", "--gauge", g16, "--out", tmp_path / "o.npy", match="input's format")
