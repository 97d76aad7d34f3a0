"""Top-k coordinate sets and signed attributions: indices mapped through P, scores and signs through D."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gaugeport.core.errors import ArtifactError, GaugeError
from gaugeport.core.gauge import SignedPermutation, load_gauge, save_gauge
from gaugeport.transport import transport_attributions, transport_coordinates, transport_vector
from gaugeport.transport.coordinates import transport_coordinates_file

D = 16


@pytest.fixture
def gauge() -> SignedPermutation:
    return SignedPermutation.random(D, seed=2)


def _dense(idx: np.ndarray, vals: np.ndarray) -> np.ndarray:
    out = np.zeros(D)
    out[idx] = vals
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, D))
def test_attributions_transport_like_the_dense_vector_they_describe(seed: int, k: int) -> None:
    """An attribution list is a sparse stream-space vector: its transport must agree with v' = G v."""
    g = SignedPermutation.random(D, seed=seed)
    rng = np.random.default_rng(seed)
    idx, scores = rng.permutation(D)[:k], rng.normal(size=k)
    new_idx, new_scores = transport_attributions(idx, scores, g)
    np.testing.assert_allclose(_dense(new_idx, new_scores), transport_vector(_dense(idx, scores), g))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_coordinate_set_round_trips_through_the_inverse_gauge(seed: int) -> None:
    g = SignedPermutation.random(D, seed=seed)
    idx = np.random.default_rng(seed).permutation(D)[:5]
    new_idx, signs = transport_coordinates(idx, g)
    back_idx, back_signs = transport_coordinates(new_idx, g.inverse(), signs)
    np.testing.assert_array_equal(back_idx, idx)
    np.testing.assert_array_equal(back_signs, np.ones(5))


def test_perm_only_keeps_every_sign_positive(gauge) -> None:
    _, signs = transport_coordinates([0, 1, 2, 3], gauge, perm_only=True)
    assert np.all(signs == 1)
    _, signed = transport_coordinates([0, 1, 2, 3], gauge)
    np.testing.assert_array_equal(signed, gauge.signs[:4])


@pytest.fixture
def gpath(tmp_path, gauge):
    return save_gauge(gauge, tmp_path / "g.safetensors")


def _run(tmp_path, gpath, name: str, content: str, **kw):
    (tmp_path / name).write_text(content)
    out = tmp_path / f"out{(tmp_path / name).suffix}"
    transport_coordinates_file(tmp_path / name, load_gauge(gpath), out, **kw)
    return out.read_text()


def test_json_top_k_list_gains_the_sign_flips(tmp_path, gauge, gpath) -> None:
    out = json.loads(_run(tmp_path, gpath, "top.json", "[3, 7, 11]"))
    assert out["coordinates"] == gauge.perm[[3, 7, 11]].tolist()
    assert out["signs"] == gauge.signs[[3, 7, 11]].tolist()
    assert out["gaugeport"]["gaugeport_gauge"] == gauge.fingerprint()


def test_json_records_map_index_and_sign_score_and_keep_other_fields(tmp_path, gauge, gpath) -> None:
    rows = [{"coordinate": 5, "score": 0.75, "site": "resid_post.1", "label": "polarity"}]
    (out,) = json.loads(_run(tmp_path, gpath, "attr.json", json.dumps(rows)))
    assert out == {"coordinate": int(gauge.perm[5]), "score": 0.75 * int(gauge.signs[5]), "site": "resid_post.1",
                   "label": "polarity"}


def test_json_pairs_stay_pairs(tmp_path, gauge, gpath) -> None:
    out = json.loads(_run(tmp_path, gpath, "pairs.json", "[[1, -0.5], [2, 2.0]]"))
    assert out == [[int(gauge.perm[1]), -0.5 * int(gauge.signs[1])], [int(gauge.perm[2]), 2.0 * int(gauge.signs[2])]]


def test_csv_attributions_keep_columns_and_site(tmp_path, gauge, gpath) -> None:
    text = _run(tmp_path, gpath, "a.csv", "coordinate,score,site\n4,1.5,resid_post.0\n9,-2,resid_mid.1\n")
    lines = text.strip().splitlines()
    assert lines[0] == "coordinate,score,site"
    assert lines[2] == f"{gauge.perm[9]},{-2.0 * gauge.signs[9]},resid_mid.1"


def test_csv_coordinate_set_gains_a_sign_column(tmp_path, gauge, gpath) -> None:
    text = _run(tmp_path, gpath, "c.csv", "coordinate,site\n4,resid_post.0\n")
    assert text.splitlines() == ["coordinate,site,sign", f"{gauge.perm[4]},resid_post.0,{gauge.signs[4]}"]


def test_unsigned_scores_are_kept_when_asked(tmp_path, gauge, gpath) -> None:
    neg = int(np.flatnonzero(gauge.signs < 0)[0])
    text = _run(tmp_path, gpath, "m.csv", f"coordinate,score\n{neg},3.0\n", kind="coordinates", unsigned_scores=True)
    assert text.splitlines()[1] == f"{gauge.perm[neg]},3.0,-1"


def test_out_of_range_coordinate_is_a_width_error(gauge) -> None:
    with pytest.raises(GaugeError, match="out of range"):
        transport_coordinates([3, D], gauge)


@pytest.mark.parametrize("content", ['[{"coordinate": 1, "score": NaN}]', '[{"coordinate": 1.5}]', '{"x": 1}'])
def test_bad_tables_are_refused_without_output(tmp_path, gpath, content) -> None:
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(ArtifactError):
        transport_coordinates_file(tmp_path / "bad.json", load_gauge(gpath), tmp_path / "o.json")
    assert not (tmp_path / "o.json").exists()
