"""``same`` at widths where a full assignment would be the cost: the p-value on a seeded sample of
units (nearest-neighbour matches), the full gauge recovered only for copies or on request.
The tiny models stand in for wide ones by lowering the sample size to 16 of 64 units."""

from __future__ import annotations

import pytest

from gaugeport.core.fullgauge import apply_full_gauge_to_checkpoint, random_full_gauge_for
from gaugeport.provenance import same as same_mod


@pytest.fixture
def small_sample(monkeypatch):
    monkeypatch.setattr(same_mod, "SAMPLE_UNITS", 16)


def test_an_independent_pair_is_decided_on_the_sample_without_a_gauge(zoo, small_sample):
    res = same_mod.same(zoo["base"], zoo["ind1"])
    assert res.verdict == "independent" and res.p_value > 1e-3
    assert all(lay["mlp_units_sampled"] and lay["mlp_units_tested"] <= 16 for lay in res.layers)
    assert res.gauge is None and res.identical_check["not_run"]


def test_a_gauged_copy_is_still_identical_with_the_exact_gauge(zoo, small_sample, tmp_path, general_path):
    truth = random_full_gauge_for(zoo["base"], 12)
    apply_full_gauge_to_checkpoint(zoo["base"], truth, tmp_path / "copy", progress=False)
    res = same_mod.same(zoo["base"], tmp_path / "copy")
    assert res.verdict == "identical" and res.gauge == truth
    assert all(lay["mlp_units_sampled"] for lay in res.layers)


def test_a_gauged_finetune_is_derived_on_the_sample_without_matching_its_units(zoo, small_sample, monkeypatch):
    calls = []
    real = same_mod.match_layer
    monkeypatch.setattr(same_mod, "match_layer", lambda *a, **k: calls.append(1) or real(*a, **k))
    res = same_mod.same(zoo["base"], zoo["ft"])
    assert res.verdict == "derived" and res.gauge is None  # nothing reads a derived pair's gauge unless asked
    assert calls == [] and all(lay["mlp_mean_confidence"] is None for lay in res.layers)
    assert "is not a copy" in res.identical_check["not_run"]


def test_a_gauged_finetune_gives_its_gauge_when_asked(zoo, small_sample):
    res = same_mod.same(zoo["base"], zoo["ft"], full_gauge=True)
    assert res.verdict == "derived" and res.gauge is not None


def test_the_copy_screen_only_lets_a_copys_input_cosines_through():
    live = {"n": 16, "z": 9.0}
    assert same_mod._may_be_copy({**live, "matched_in_score": 1.0}, 1e-5)
    assert same_mod._may_be_copy({**live, "matched_in_score": 1 - 0.9e-3}, 1e-5)
    assert not same_mod._may_be_copy({**live, "matched_in_score": 1 - 1.1e-3}, 1e-5)
    assert same_mod._may_be_copy({**live, "matched_in_score": 0.5}, 1e-2)  # a loose --tol: no screen
    assert same_mod._may_be_copy({"n": 0, "z": 0.0}, 1e-5)  # nothing tested: maybe


def test_full_gauge_asks_for_the_gauge_of_an_independent_pair(zoo, small_sample):
    res = same_mod.same(zoo["base"], zoo["ind1"], full_gauge=True)
    assert res.verdict == "independent" and res.gauge is not None
    assert not any(lay["mlp_units_sampled"] for lay in res.layers)


def _layer_features(a, b):
    """Each layer's unit features of A and of B (in A's residual coordinates), as ``same`` builds them."""
    from gaugeport.core.checkpoint import Checkpoint
    from gaugeport.core.hidden import get_hidden_spec

    ca, cb = Checkpoint.open(a), Checkpoint.open(b)
    spec, hspec = ca.spec, get_hidden_spec(ca.model_type)
    dims = hspec.dims(ca.config, ca.d_model)
    names = sorted(set(ca.names) & set(cb.names))
    get_a, _ = same_mod._folded(ca, names, spec, hspec)
    get_b, _ = same_mod._folded(cb, names, spec, hspec)
    residual, _ = same_mod._residual_by_fit(ca, get_a, get_b, spec, [])
    rules = spec.classify_all(names)
    out = []
    for layer in range(dims.n_layers):
        lnames = [n for n in names if (hit := hspec.match(n)) is not None and hit[1] == layer]
        ta, tb = same_mod._read_layer(lnames, get_a, get_b, rules, residual, None)
        out.append(same_mod._features(lnames, ta, tb, spec, hspec, dims, layer))
    return out, dims, hspec.mlp_signs


def test_an_exact_copys_units_are_matched_by_their_hashes_with_signs(zoo, tmp_path):
    from gaugeport.estimate.hidden import exact_unit_match

    truth = random_full_gauge_for(zoo["base"], 13)
    apply_full_gauge_to_checkpoint(zoo["base"], truth, tmp_path / "copy", progress=False)
    feats, _, signs = _layer_features(zoo["base"], tmp_path / "copy")
    for (a, b), lg in zip(feats, truth.layers, strict=True):
        m = exact_unit_match(a, b, signs)
        assert m is not None and m.gauge == lg.mlp  # permutation and signs


def test_a_finetune_has_no_exact_match_and_its_candidate_match_is_the_full_assignment(zoo):
    from gaugeport.estimate.hidden import candidate_unit_match, exact_unit_match, match_layer

    feats, dims, signs = _layer_features(zoo["base"], zoo["ft"])
    for a, b in feats:
        assert exact_unit_match(a, b, signs) is None
        full = match_layer(a, b, dims, signs, exhaustive=True)
        fast = candidate_unit_match(a, b, signs)
        assert fast.gauge == full[0].mlp
        assert fast.confidence == pytest.approx(full[1], abs=1e-5)  # the exact scores, not the projected ones


def test_when_the_candidates_collide_the_sparse_matching_still_gives_a_permutation():
    import numpy as np

    from gaugeport.estimate.hidden import _sparse_assignment

    # rows 0 and 1 both prefer column 0; of the two perfect matchings over the candidate edges,
    # (0->0, 1->2, 2->1) scores 1.7 and (0->1, 1->0, 2->2) scores 2.2: the second
    score = np.array([[0.9, 0.5], [0.8, 0.7], [0.9, 0.1]])
    cand = np.array([[0, 1], [0, 2], [2, 1]])
    pick = _sparse_assignment(score, cand, 3)
    assert [int(c) for c in cand[np.arange(3), pick]] == [1, 0, 2]
    assert _sparse_assignment(score, np.array([[0, 1], [0, 1], [0, 1]]), 3) is None  # no perfect matching


def test_the_rotation_residual_without_q_is_the_procrustes_residual():
    import torch

    from gaugeport.provenance.same import rotation_residual

    gen = torch.Generator().manual_seed(0)
    ea = torch.randn(96, 24, generator=gen, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(24, 24, generator=gen, dtype=torch.float64))
    for eb in (torch.randn(96, 24, generator=gen, dtype=torch.float64),  # unrelated
               ea @ q.T + 0.3 * torch.randn(96, 24, generator=gen, dtype=torch.float64)):  # a rotated, edited copy
        u, _, vt = torch.linalg.svd(eb.T @ ea)
        exact = float((ea @ (u @ vt).T - eb).norm() / eb.norm())
        assert rotation_residual(ea, eb) == pytest.approx(exact, abs=1e-4)


def test_the_cross_moment_from_the_correlations_is_eb_transposed_times_ea():
    import torch

    from gaugeport.provenance.same import column_correlation, cross_from_correlation

    gen = torch.Generator().manual_seed(1)
    f64 = {"generator": gen, "dtype": torch.float64}
    ea = torch.randn(200, 16, **f64) * torch.rand(16, **f64) + 0.5  # columns of different scales and means
    eb = torch.randn(200, 16, **f64) - torch.rand(16, **f64)
    corr, sa, sb = column_correlation(ea, eb)
    assert float(corr.abs().max()) <= 1 + 1e-6 and float(corr[3, 3]) == pytest.approx(
        float(torch.corrcoef(torch.stack([eb[:, 3], ea[:, 3]]))[0, 1]), abs=1e-5)
    want = (eb.T @ ea).float()
    assert torch.allclose(cross_from_correlation(corr, sa, sb, ea, eb), want, rtol=1e-4, atol=1e-3)


def test_b_moved_as_stored_then_folded_is_bit_for_bit_b_folded_then_moved(zoo):
    """``same`` moves B's stored tensors into A's residual coordinates before folding (half the bytes), with the
    gain moved alike: every tensor is exactly what folding first, then moving, gives."""
    import torch

    from gaugeport.core.checkpoint import Checkpoint
    from gaugeport.core.hidden import get_hidden_spec
    from gaugeport.estimate.hidden import to_a_coordinates

    ca, cb = Checkpoint.open(zoo["base"]), Checkpoint.open(zoo["ft"])
    spec, hspec = ca.spec, get_hidden_spec(ca.model_type)
    names = sorted(set(ca.names) & set(cb.names))
    get_a, _ = same_mod._folded(ca, names, spec, hspec)
    get_b, _ = same_mod._folded(cb, names, spec, hspec)
    residual, _ = same_mod._residual_by_fit(ca, get_a, get_b, spec, [])
    assert (residual.signs < 0).any() and (residual.perm != range(residual.d)).any()  # a real move
    rules = spec.classify_all(names)
    _, tb = same_mod._read_layer(names, get_a, get_b, rules, residual, None)
    folded = [n for n in names if n in get_b.gain_of]
    assert folded
    for n in names:
        assert torch.equal(tb[n], to_a_coordinates(n, get_b(n), rules[n], residual)), n


@pytest.mark.parametrize("axis", [0, 1])
def test_the_direction_screen_is_a_lower_bound_of_the_full_direction_difference(axis, monkeypatch):
    """The identical check first compares a few units' directions; the figure it may stop on never exceeds
    the full one (so no exact copy is refused by it), and is the full one when every unit is screened."""
    import torch

    gen = torch.Generator().manual_seed(axis)
    for trial in range(20):
        b = torch.randn(300, 40, generator=gen)
        pred = b * torch.rand(300, 1, generator=gen).add(0.5)  # each unit rescaled: the same directions
        pred[trial * 7] += 0.3 * torch.randn(40, generator=gen)  # one unit edited
        b_dir = same_mod._unit_directions(b.T if axis else b, axis)
        full = same_mod._rel_diff(same_mod._unit_directions(pred.T if axis else pred, axis), b_dir)
        bound = same_mod._direction_diff_lower_bound(pred.T if axis else pred, b.T if axis else b, axis)
        assert 0 <= bound <= full + 1e-7
    monkeypatch.setattr(same_mod, "SCREEN_UNITS", 300)
    assert bound == pytest.approx(full, rel=1e-6)
    assert same_mod._direction_diff_lower_bound(b * 2.0, b, 0) < 1e-6  # a rescaled copy passes


def test_once_the_pair_cannot_be_identical_only_mlp_tensors_are_folded(zoo, small_sample, monkeypatch):
    folded = []
    real = same_mod._Tensors.__call__

    def spy(self, name, *a, **k):
        folded.append(name)
        return real(self, name, *a, **k)

    monkeypatch.setattr(same_mod._Tensors, "__call__", spy)
    res = same_mod.same(zoo["base"], zoo["ind1"])
    assert res.verdict == "independent"
    later = [n for n in folded if ".layers.1." in n]
    assert later and all(".mlp." in n for n in later)  # layer 0 ended the check: no attention read after it
    assert any(".layers.0.self_attn." in n for n in folded)


def test_an_attention_matrix_copied_bit_for_bit_is_still_found_after_the_check_ends(zoo, small_sample, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    dst = tmp_path / "ind_with_a_copied_head"
    shutil.copytree(zoo["ind1"], dst)
    name = "model.layers.1.self_attn.o_proj.weight"
    a = load_file(str(zoo["base"] / "model.safetensors"))
    b = load_file(str(dst / "model.safetensors"))
    b[name] = a[name].clone()  # a stolen matrix in a layer the statistic reads MLP tensors only
    save_file(b, str(dst / "model.safetensors"), metadata={"format": "pt"})
    res = same_mod.same(zoo["base"], dst)
    assert res.verdict == "derived" and any(name in note for note in res.notes)
