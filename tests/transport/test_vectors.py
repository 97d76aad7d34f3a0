"""Steering vectors and probe directions: v' = G v, in memory and in every file format."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import gguf
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from gaugeport.core.apply import apply_gauge_to_model
from gaugeport.core.gauge import SignedPermutation, save_gauge
from gaugeport.models.tiny import probe_ids, tiny_model
from gaugeport.study.evaluate import logit_change, sign_reversal, steering_effect, steering_preserved
from gaugeport.transport import transport_vector, transport_vector_file
from gaugeport.transport.gguf_vectors import read_control_vector_gguf

D = 32
STEER_TOL = 1e-5  # max |logit change on B - logit change on A|, relative to the largest change (float32)


@pytest.fixture(scope="module")
def pair():
    """Tiny Llama A, a random signed gauge G, and B = G applied to A (an exact gauge)."""
    a = tiny_model("llama", seed=0)
    g = SignedPermutation.random(D, seed=1)
    return a, g, apply_gauge_to_model(copy.deepcopy(a), g)


@pytest.fixture(scope="module")
def ids():
    return probe_ids(96, n_seq=2, seq_len=12)


def _vec(seed: int, shape: tuple[int, ...] = (D,)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2


# --------------------------------------------------------------------------------- algebra
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), layers=st.integers(1, 4))
def test_transport_then_inverse_is_identity(seed: int, layers: int) -> None:
    g = SignedPermutation.random(8, seed=seed)
    v = np.random.default_rng(seed).normal(size=(layers, 8))
    np.testing.assert_array_equal(transport_vector(transport_vector(v, g), g.inverse()), v)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_transport_is_the_dense_matrix_product(seed: int) -> None:
    g = SignedPermutation.random(8, seed=seed)
    v = torch.randn(8, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(transport_vector(v, g), g.to_matrix() @ v)


def test_perm_only_drops_exactly_the_signs() -> None:
    g = SignedPermutation.random(D, seed=4)
    v = _vec(0)
    torch.testing.assert_close(transport_vector(v, g, perm_only=True), g.perm_only().apply(v))
    assert not torch.allclose(transport_vector(v, g, perm_only=True), transport_vector(v, g))


def test_dict_keys_and_numpy_types_are_kept() -> None:
    g = SignedPermutation.random(D, seed=4)
    v = {3: _vec(0).numpy(), "5": _vec(1).numpy()}
    out = transport_vector(v, g)
    assert set(out) == {3, "5"} and isinstance(out[3], np.ndarray)
    np.testing.assert_array_equal(out["5"], g.apply(v["5"]))


# --------------------------------------------------------------------------------- steering
def test_transported_vector_steers_b_like_the_original_steers_a(pair, ids) -> None:
    a, g, b = pair
    v = _vec(0)
    da = logit_change(a, v, ids, layer=0)
    db = logit_change(b, transport_vector(v, g), ids, layer=0)
    assert float((db - da).abs().max()) <= STEER_TOL * float(da.abs().max())


def test_perm_only_transport_loses_most_of_the_steering_effect(pair, ids) -> None:
    a, g, b = pair
    v = _vec(0)
    signed = steering_preserved(a, v, b, transport_vector(v, g), ids, layer=0)
    perm = steering_preserved(a, v, b, transport_vector(v, g, perm_only=True), ids, layer=0)
    assert abs(signed - 1) < 1e-4
    assert perm < 0.8  # measured: about 0.24 for this seed


def test_sign_reversal_is_detected_on_a_probe_metric(pair, ids) -> None:
    """A metric on two tokens whose logits the vector moves apart; -v on B must read as reversed."""
    a, g, b = pair
    v = _vec(0)
    change = logit_change(a, v, ids, layer=0).mean((0, 1))
    up, down = [int(change.argmax())], [int(change.argmin())]

    def metric(lg: torch.Tensor) -> torch.Tensor:
        return lg[..., up].mean() - lg[..., down].mean()

    ea = steering_effect(a, v, ids, metric, layer=0)
    eb_signed = steering_effect(b, transport_vector(v, g), ids, metric, layer=0)
    eb_flipped = steering_effect(b, -transport_vector(v, g), ids, metric, layer=0)
    assert not sign_reversal(ea, eb_signed)
    assert sign_reversal(ea, eb_flipped)


# --------------------------------------------------------------------------------- library objects (duck-typed)
@dataclass
class SteeringVector:  # the fields of steering_vectors.SteeringVector (0.12)
    layer_activations: dict[int, torch.Tensor]
    layer_type: str = "decoder_block"


@dataclass
class ControlVector:  # the fields of repeng.ControlVector (0.4)
    model_type: str
    directions: dict[int, np.ndarray] = field(default_factory=dict)


def test_steering_vectors_object_is_transported_and_steers_b(pair, ids) -> None:
    a, g, b = pair
    sv = SteeringVector({0: _vec(0), 1: _vec(1)})
    out = transport_vector(sv, g)
    assert isinstance(out, SteeringVector) and out.layer_type == "decoder_block"
    da, db = logit_change(a, sv, ids), logit_change(b, out, ids)
    assert float((db - da).abs().max()) <= STEER_TOL * float(da.abs().max())


def test_repeng_control_vector_is_transported_with_its_model_type(pair, ids) -> None:
    a, g, b = pair
    cv = ControlVector("llama", {1: _vec(2).numpy()})
    out = transport_vector(cv, g)
    assert isinstance(out, ControlVector) and out.model_type == "llama"
    assert isinstance(out.directions[1], np.ndarray)
    da, db = logit_change(a, cv, ids), logit_change(b, out, ids)
    assert float((db - da).abs().max()) <= STEER_TOL * float(da.abs().max())


# --------------------------------------------------------------------------------- files
@pytest.fixture
def gauge_file(tmp_path):
    g = SignedPermutation.random(D, seed=1)
    return g, save_gauge(g, tmp_path / "g.safetensors")


def test_pt_dict_round_trip(tmp_path, gauge_file) -> None:
    g, _ = gauge_file
    v = {0: _vec(0), 1: _vec(1)}
    torch.save(v, tmp_path / "v.pt")
    transport_vector_file(tmp_path / "v.pt", g, tmp_path / "o.pt")
    out = torch.load(tmp_path / "o.pt", weights_only=True)
    torch.testing.assert_close(out[1], g.apply(v[1]), rtol=0, atol=0)


def test_npy_layers_by_d_round_trip(tmp_path, gauge_file) -> None:
    g, _ = gauge_file
    v = _vec(3, (2, D)).numpy()
    np.save(tmp_path / "v.npy", v)
    transport_vector_file(tmp_path / "v.npy", g, tmp_path / "o.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), g.apply(v))


def test_safetensors_records_provenance_in_metadata(tmp_path, gauge_file) -> None:
    g, _ = gauge_file
    save_file({"layer.4": _vec(0)}, str(tmp_path / "v.safetensors"), metadata={"author": "me"})
    transport_vector_file(tmp_path / "v.safetensors", g, tmp_path / "o.safetensors")
    with safe_open(str(tmp_path / "o.safetensors"), framework="pt") as f:
        meta = f.metadata()
        torch.testing.assert_close(f.get_tensor("layer.4"), g.apply(_vec(0)))
    assert meta["author"] == "me" and meta["gaugeport_gauge"] == g.fingerprint()
    assert meta["gaugeport_source"].endswith("v.safetensors")


def _export_gguf(path, model_hint: str, directions: dict[int, np.ndarray]) -> None:
    """What repeng's ControlVector.export_gguf writes (same calls, same order)."""
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", model_hint)
    writer.add_uint32("controlvector.layer_count", len(directions))
    for layer, v in directions.items():
        writer.add_tensor(f"direction.{layer}", v)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_control_vector_round_trip_keeps_fields_and_adds_provenance(tmp_path, gauge_file) -> None:
    g, _ = gauge_file
    dirs = {1: _vec(0).numpy(), 2: _vec(1).numpy()}
    _export_gguf(tmp_path / "cv.gguf", "llama", dirs)
    transport_vector_file(tmp_path / "cv.gguf", g, tmp_path / "o.gguf")
    reader = gguf.GGUFReader(tmp_path / "o.gguf")  # as repeng's import_gguf reads it
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "llama"
    assert reader.get_field("controlvector.layer_count").contents() == 2
    assert reader.get_field("gaugeport.gauge").contents() == g.fingerprint()
    got = {int(t.name.split(".")[1]): np.array(t.data) for t in reader.tensors}
    np.testing.assert_array_equal(got[2], g.apply(dirs[2]))
    assert read_control_vector_gguf(tmp_path / "o.gguf").directions.keys() == dirs.keys()


def test_cli_transports_a_vector_file(tmp_path, gauge_file, cli) -> None:
    g, gpath = gauge_file
    torch.save(_vec(0), tmp_path / "v.pt")
    code, out, _ = cli("transport", tmp_path / "v.pt", "--gauge", gpath, "--out", tmp_path / "o.pt", "--perm-only")
    assert code == 0 and "vector" in out
    torch.testing.assert_close(torch.load(tmp_path / "o.pt", weights_only=True), g.perm_only().apply(_vec(0)))
