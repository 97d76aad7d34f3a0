"""Gauge-sweep audits: bare index claims are index-bound, claims stated relative to a gauge survive."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gaugeport.core.errors import ArtifactError
from gaugeport.core.gauge import SignedPermutation, save_gauge
from gaugeport.transport.audit import (
    COVARIANT,
    INDEX_BOUND,
    Claim,
    Evidence,
    audit_claims,
    gauge_sweep,
    load_claims,
)

D = 12


def claim(**kw) -> Claim:
    return Claim.from_dict({"name": "c", "site": "resid_post.0", **kw})


def verdict(c: Claim, **kw) -> str:
    return audit_claims([c], gauge_sweep(D, n_random=6, seed=1), **kw).verdicts[0].verdict


def labelled_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Coordinate 3 carries the label (+), coordinate 7 carries it negatively; the rest is noise."""
    rng = np.random.default_rng(seed)
    y = rng.random(400) < 0.5
    x = rng.normal(size=(400, D))
    x[:, 3] += 2.0 * np.where(y, 1, -1)
    x[:, 7] -= 1.5 * np.where(y, 1, -1)
    return x, y


def test_a_bare_coordinate_claim_is_index_bound():
    assert verdict(claim(kind="coordinates", indices=[3], signs=[1])) == INDEX_BOUND


def test_the_same_claim_stated_relative_to_an_explicit_gauge_survives():
    assert verdict(claim(kind="coordinates", indices=[3], signs=[1], frame="base")) == COVARIANT


def test_a_bare_claim_about_every_coordinate_regardless_of_sign_survives():
    """The verdict comes from the sweep, not from the form: an index set closed under the group survives."""
    assert verdict(claim(kind="coordinates", indices=list(range(D)))) == COVARIANT


@pytest.mark.parametrize("kind, fields", [
    ("direction", {"vector": list(np.linspace(-1, 1, D))}),
    ("attribution", {"attributions": [[3, 0.9], [7, -0.5], [1, 0.1]]}),
])
def test_bare_directions_and_attributions_are_index_bound_and_framed_ones_survive(kind, fields):
    assert verdict(claim(kind=kind, **fields)) == INDEX_BOUND
    assert verdict(claim(kind=kind, frame="base", **fields)) == COVARIANT


def test_with_data_the_evidence_is_the_claims_effect_size_in_each_gauge():
    x, y = labelled_data()
    ev = {"resid_post.0": Evidence(x, y)}
    bare = claim(kind="coordinates", indices=[3, 7], signs=[1, -1])
    framed = claim(kind="coordinates", indices=[3, 7], signs=[1, -1], frame="base")
    report = audit_claims([bare, framed], gauge_sweep(D, n_random=6, seed=2), evidence=ev)
    assert [v.verdict for v in report.verdicts] == [INDEX_BOUND, COVARIANT]
    assert report.verdicts[0].method == "data"
    identity_row = report.verdicts[0].evidence[0]
    assert identity_row["gauge"] == "identity" and identity_row["agreement"] == pytest.approx(1.0)
    assert all(e["reexpressed_agreement"] == pytest.approx(1.0) for e in report.verdicts[1].evidence)


def test_a_framed_claim_fails_under_a_gauge_with_wrong_signs():
    """Carrying a claim through a permutation-only estimate of a signed gauge flips coordinate signs."""
    x, y = labelled_data(1)
    truth = SignedPermutation(np.arange(D), np.where(np.arange(D) % 2, -1, 1))  # flips odd coordinates (3, 7)
    ev = {"resid_post.0": Evidence(x, y, in_gauge={"estimated": truth.apply(x, axis=1)})}
    c = claim(kind="coordinates", indices=[3, 7], signs=[1, -1], frame="base")
    sweep = {"estimated": truth.perm_only()}
    assert audit_claims([c], sweep, evidence=ev).verdicts[0].verdict == INDEX_BOUND
    assert audit_claims([c], {"estimated": truth}, evidence=ev).verdicts[0].verdict == COVARIANT


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**16), idx=st.lists(st.integers(0, D - 1), min_size=1, max_size=D, unique=True))
def test_reexpressing_through_a_gauge_and_back_is_the_identity(seed, idx):
    g = SignedPermutation.random(D, seed=seed)
    rng = np.random.default_rng(seed)
    c = claim(kind="attribution", attributions=[[i, float(rng.normal())] for i in idx])
    back = c.reexpress(g).reexpress(g.inverse())
    assert np.array_equal(back.indices, c.indices) and np.allclose(back.values, c.values)


@pytest.mark.parametrize("raw, error", [
    ({"name": "x", "site": "s"}, ArtifactError),
    ({"name": "x", "site": "s", "kind": "neuron", "indices": [1]}, ArtifactError),
    ({"name": "x", "site": "s", "kind": "coordinates", "indices": [1.5]}, ArtifactError),
    ({"name": "x", "site": "s", "kind": "coordinates", "indices": [1], "signs": [2]}, ArtifactError),
    ({"name": "x", "site": "s", "kind": "direction", "vector": [0, 0]}, ArtifactError),
    ({"name": "x", "site": "s", "kind": "attribution", "attributions": [[1]]}, ArtifactError),
])
def test_malformed_claims_are_refused(raw, error):
    with pytest.raises(error):
        Claim.from_dict(raw)


def test_a_claim_outside_the_sweeps_width_is_refused():
    with pytest.raises(ArtifactError, match=r"indices must lie in \[0, "):
        audit_claims([claim(kind="coordinates", indices=[D])], gauge_sweep(D, 2))


def test_audit_cli_writes_json_and_markdown_with_a_verdict_per_claim(cli, tmp_path):
    claims = {"claims": [{"name": "neuron", "site": "resid_post.0", "kind": "coordinates", "indices": [2]},
                         {"name": "framed", "site": "resid_post.0", "kind": "direction",
                          "vector": list(range(1, D + 1)), "frame": "base"}]}
    (tmp_path / "claims.json").write_text(json.dumps(claims))
    save_gauge(SignedPermutation.random(D, seed=9), tmp_path / "est.safetensors")
    code, out, _ = cli("audit", tmp_path / "claims.json", "--gauge", tmp_path / "est.safetensors",
                       "--out", tmp_path / "audit")
    assert code == 0
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert [c["verdict"] for c in report["claims"]] == [INDEX_BOUND, COVARIANT]
    assert "est" in report["gauges"] and "identity" in report["gauges"]
    assert "| neuron |" in (tmp_path / "audit" / "audit.md").read_text()
    assert load_claims(tmp_path / "claims.json")[1].frame == "base"


def test_audit_cli_takes_several_gauges_after_one_flag_and_data_evidence(cli, tmp_path):
    x, y = labelled_data(2)
    np.savez(tmp_path / "ev.npz", **{"resid_post.0.acts": x, "resid_post.0.labels": y})
    (tmp_path / "claims.json").write_text(json.dumps([{"name": "n", "site": "resid_post.0", "kind": "coordinates",
                                                       "indices": [3], "signs": [1], "frame": "base"}]))
    for i in (1, 2):
        save_gauge(SignedPermutation.random(D, seed=i), tmp_path / f"g{i}.safetensors")
    code, out, _ = cli("audit", tmp_path / "claims.json", "--gauge", tmp_path / "g1.safetensors",
                       tmp_path / "g2.safetensors", "--evidence", tmp_path / "ev.npz", "--out", tmp_path / "a")
    assert code == 0, out
    report = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert {"g1", "g2"} <= set(report["gauges"]) and report["claims"][0]["method"] == "data"


def test_audit_cli_needs_a_width_and_reports_bad_claims_as_input_errors(cli, tmp_path):
    (tmp_path / "claims.json").write_text(json.dumps([{"name": "n", "site": "s", "kind": "coordinates",
                                                       "indices": [1]}]))
    assert cli("audit", tmp_path / "claims.json", "--out", tmp_path / "a")[0] == 2
    (tmp_path / "bad.json").write_text("{not json")
    code, _, err = cli("audit", tmp_path / "bad.json", "--d", "8", "--out", tmp_path / "b")
    assert code == 2 and "not valid JSON" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
