"""The held-out statistic behind ``same``'s p-value: mid-ranks, candidate sets, dead units, regression."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gaugeport.estimate.hidden import UnitFeatures, held_out_statistic, input_candidates, mid_rank, unit_rows


@given(st.lists(st.integers(0, 3), min_size=2, max_size=9))
def test_mid_ranks_of_a_row_sum_to_one_plus_two_up_to_k_whatever_the_ties(values):
    row = np.array(values, dtype=np.float64)
    k = row.size
    ranks = [mid_rank(row[None, :], row[i:i + 1])[0] for i in range(k)]
    assert sum(ranks) == k * (k + 1) / 2  # ties split their places evenly: no side gains


def test_a_tie_counts_one_half_not_a_win_for_the_match():
    scores = np.array([[0.3, 0.3, 0.3, 0.1]])  # the match (0.3) ties two others
    assert mid_rank(scores, np.array([0.3]))[0] == 2.0


def test_the_match_is_always_one_of_its_units_candidates():
    rng = np.random.default_rng(0)
    s_in = rng.standard_normal((50, 50))
    s_in[:, :8] += 10.0  # eight hub columns are every unit's best: most matches lie outside the top 8
    cols = rng.permutation(50)
    rows = np.arange(50)
    cand = input_candidates(s_in, cols, 8, rows)
    assert cand.shape == (50, 8)
    assert all(cols[i] in cand[i] for i in rows)


def test_dead_columns_never_enter_a_candidate_set():
    rng = np.random.default_rng(1)
    s_in = rng.standard_normal((20, 20))
    dead = np.zeros(20, dtype=bool)
    dead[[3, 4]] = True
    s_in[:, [3, 4]] = 5.0
    cols = np.roll(np.arange(20), 5)
    rows = np.flatnonzero(~dead[cols])  # units matched to a dead unit are not tested
    cand = input_candidates(s_in, cols, 4, rows, dead)
    assert not np.isin(cand, [3, 4]).any()


def _shared_structure_units(rng, w, mix, n=300, link=lambda h: h):
    """Units drawn independently for each model from one distribution whose output rows depend on
    the input rows (what training on the same data gives unrelated models), through ``link``."""
    x = rng.standard_normal((n, mix.shape[0])) @ mix + rng.standard_normal((n, mix.shape[1]))
    y = link(x @ w) + 0.3 * rng.standard_normal((n, w.shape[1]))
    f = UnitFeatures()
    f.add("mlp", "abs", "in", unit_rows(x))
    f.add("mlp", "abs", "out", unit_rows(y))
    return f


def test_input_similarity_regression_keeps_unrelated_models_with_shared_structure_null():
    shared = np.random.default_rng(0)
    w, mix = shared.standard_normal((40, 40)) / 6, shared.standard_normal((10, 40))
    conditioned, raw = [], []
    for seed in range(4):
        rng = np.random.default_rng(100 + seed)
        a, b = _shared_structure_units(rng, w, mix), _shared_structure_units(rng, w, mix)
        conditioned.append(held_out_statistic(a, b, mlp_signs=False)["z"])
        raw.append(held_out_statistic(a, b, mlp_signs=False, condition=False)["z"])
    assert max(conditioned) < 3.1  # one-sided alpha 1e-3: no false positive
    assert min(raw) > 5  # without the regression, input similarity alone passes for descent


def test_a_copy_with_noise_scores_far_above_the_null():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((200, 30)), rng.standard_normal((200, 30))
    perm = rng.permutation(200)
    a, b = UnitFeatures(), UnitFeatures()
    a.add("mlp", "abs", "in", unit_rows(x))
    a.add("mlp", "abs", "out", unit_rows(y))
    b.add("mlp", "abs", "in", unit_rows(x[perm] + 0.5 * rng.standard_normal((200, 30))))
    b.add("mlp", "abs", "out", unit_rows(y[perm] + 0.5 * rng.standard_normal((200, 30))))
    res = held_out_statistic(a, b, mlp_signs=False)
    assert res["n"] == 200 and res["z"] > 10


def test_units_with_constant_rows_leave_n():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((40, 12)), rng.standard_normal((40, 12))
    x[:5] = 0.0  # pruned units
    y[5:8] = 2.0  # constant (padded) output columns
    a = UnitFeatures()
    a.add("mlp", "abs", "in", unit_rows(x), x)
    a.add("mlp", "abs", "out", unit_rows(y), y)
    b = UnitFeatures()
    b.add("mlp", "abs", "in", unit_rows(x), x)
    b.add("mlp", "abs", "out", unit_rows(y), y)
    assert held_out_statistic(a, b, mlp_signs=False)["n"] == 32


def _nonlinear_shared_units(rng, w, mix):
    """Independent units whose output rows are a saturating function of their input rows, drawn from one
    distribution for both models: output similarity rises with input similarity, not linearly."""
    return _shared_structure_units(rng, w, mix, n=400, link=lambda h: np.tanh(h) ** 3)


def test_the_sampled_nearest_neighbour_match_is_not_lifted_by_its_input_rank_under_the_null():
    shared = np.random.default_rng(0)
    w, mix = shared.standard_normal((40, 40)) / 3, shared.standard_normal((10, 40))
    corrected, plain = [], []
    for seed in range(8):
        rng = np.random.default_rng(100 + seed)
        res = held_out_statistic(_nonlinear_shared_units(rng, w, mix), _nonlinear_shared_units(rng, w, mix),
                                 mlp_signs=False, sample=200, seed=seed)
        assert res["second_candidate_reference"]
        corrected.append(res["z"])
        plain.append(res["z_uncorrected"])
    assert sum(corrected) / np.sqrt(len(corrected)) < 3.1  # Stouffer over 8 null pairs: no false positive at 1e-3
    assert sum(plain) / np.sqrt(len(plain)) > 3.1  # the rank-1 match among its own runner-ups alone: lifted


def test_the_sampled_statistic_has_unit_variance_when_every_score_is_exchangeable():
    """Unrelated random units: the match's rank and the second candidate's are exchangeable, so the corrected z
    (the rank difference over sqrt(n k^2 / 6)) has mean 0 and variance 1; a wrong divisor shows in the spread."""
    zs = []
    for seed in range(60):
        rng = np.random.default_rng(1000 + seed)
        a, b = UnitFeatures(), UnitFeatures()
        for f in (a, b):
            f.add("mlp", "abs", "in", unit_rows(rng.standard_normal((120, 24))))
            f.add("mlp", "abs", "out", unit_rows(rng.standard_normal((120, 24))))
        res = held_out_statistic(a, b, mlp_signs=False, sample=60, seed=seed)
        assert res["second_candidate_reference"]
        zs.append(res["z"])
    assert abs(np.mean(zs)) < 0.45  # 60 draws: the mean's standard error is 0.13
    assert 0.75 < np.std(zs, ddof=1) < 1.3  # the sd's standard error is ~0.09; /12 instead of /6 gives ~1.41


def _two_output_blocks(evidence: str) -> tuple[UnitFeatures, UnitFeatures]:
    """A and B whose input rows are one unit set (B permuted, noisy); of the two output-side blocks, only
    ``evidence`` ("abs" or "signed") is related, the other is drawn independently per model."""
    rng = np.random.default_rng(7)
    n, f = 120, 40
    perm = rng.permutation(n)
    x, y = rng.standard_normal((n, f)), rng.standard_normal((n, f))
    a, b = UnitFeatures(), UnitFeatures()
    a.add("mlp", "signed", "in", unit_rows(x))
    b.add("mlp", "signed", "in", unit_rows(x[perm] + 0.8 * rng.standard_normal((n, f))))
    for mode in ("abs", "signed"):
        related = mode == evidence
        a.add("mlp", mode, "out", unit_rows(y if related else rng.standard_normal((n, f))))
        b.add("mlp", mode, "out", unit_rows(y[perm] + 0.8 * rng.standard_normal((n, f)) if related
                                            else rng.standard_normal((n, f))))
    return a, b


@pytest.mark.parametrize("mlp_signs", [True, False])
@pytest.mark.parametrize("evidence", ["abs", "signed"])
def test_both_kinds_of_output_block_carry_evidence_into_the_statistic(evidence, mlp_signs):
    """M sums the |cos| output block and the signed one (sign-corrected where units flip): evidence in
    either one shows, and an unrelated block beside it does not drown it."""
    a, b = _two_output_blocks(evidence)
    assert held_out_statistic(a, b, mlp_signs=mlp_signs)["z"] > 4.0


@pytest.mark.parametrize("blocks", [[("abs", "in")], [("signed", "in")],
                                    [("abs", "in"), ("signed", "in"), ("signed", "out")],
                                    [("abs", "in"), ("abs", "out"), ("signed", "in"), ("signed", "out")]])
def test_the_unit_score_is_the_abs_blocks_plus_the_absolute_signed_sum_over_the_block_count(blocks):
    """score = (sum of |cos| blocks + |sum of signed blocks|) / number of blocks, the signed sum returned
    beside it; the cached cosine matrices it is built from are left as they were."""
    from gaugeport.estimate.hidden import _cosines, _mlp_scores

    rng = np.random.default_rng(3)
    a, b = UnitFeatures(), UnitFeatures()
    for mode, side in blocks:
        a.add("mlp", mode, side, unit_rows(rng.standard_normal((30, 12))))
        b.add("mlp", mode, side, unit_rows(rng.standard_normal((30, 12))))
    cos = {(m, s): _cosines(a, b, "mlp", m, s).copy() for m, s in blocks}
    signed = [c for (m, _), c in cos.items() if m == "signed"]
    want = sum(c for (m, _), c in cos.items() if m == "abs") + (np.abs(sum(signed)) if signed else 0)
    score, sgn = _mlp_scores(a, b, ("in", "out"))
    np.testing.assert_allclose(score, want / len(blocks), rtol=1e-6)
    if signed:
        np.testing.assert_allclose(sgn, sum(signed), rtol=1e-6)
    assert all(np.array_equal(_cosines(a, b, "mlp", m, s), c) for (m, s), c in cos.items())


def _gated_units(rng, n=64, f=48):
    """A gated MLP layer's features: gates (``abs`` mode), up rows and down columns (sign-carrying)."""
    u = UnitFeatures()
    for mode, side in (("abs", "in"), ("signed", "in"), ("signed", "out")):
        u.add("mlp", mode, side, unit_rows(rng.standard_normal((n, f))))
    return u


def test_pair_scores_are_the_score_matrix_at_those_pairs():
    from gaugeport.estimate.hidden import _mlp_pair_scores, _mlp_scores

    rng = np.random.default_rng(3)
    a, b = _gated_units(rng), _gated_units(rng)
    i, j = rng.integers(0, 64, 40), rng.integers(0, 64, 40)
    for sides in (("in",), ("in", "out")):
        full, _ = _mlp_scores(a, b, sides)
        assert np.allclose(_mlp_pair_scores(a, b, sides, i, j), full[i, j], atol=1e-6)


def test_the_samples_cosines_are_rounded_products_and_the_full_ones_exact():
    from gaugeport.estimate.hidden import _cosines

    rng = np.random.default_rng(4)
    a, b = _gated_units(rng), _gated_units(rng)
    exact = a.blocks["mlp", "abs", "in"][0] @ b.blocks["mlp", "abs", "in"][0].T
    assert np.array_equal(_cosines(a, b, "mlp", "abs", "in"), exact)
    rows = np.arange(0, 64, 3)
    sampled = _cosines(a, b, "mlp", "abs", "in", rows)
    assert np.abs(sampled - exact[rows]).max() < 2e-2  # bfloat16 inputs and results: about 3 digits


def test_a_samples_matched_input_score_is_exact_not_rounded():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 64))
    a, b = UnitFeatures(), UnitFeatures()
    for f, noise in ((a, 0.0), (b, 0.04)):  # B: A's units, nudged (input cosines about 0.9992)
        f.add("mlp", "abs", "in", unit_rows(x + noise * rng.standard_normal(x.shape)))
        f.add("mlp", "abs", "out", unit_rows(x[:, ::-1].copy()))
    exact = float(np.mean(np.sum(a.blocks["mlp", "abs", "in"][0] * b.blocks["mlp", "abs", "in"][0], axis=1)))
    assert 0.998 < exact < 0.9996  # between two bfloat16 values (0.99609 and 1): rounding would show
    h = held_out_statistic(a, b, mlp_signs=False, sample=64, seed=0)
    # the mean over the 64 sampled units, against all 300: within 2e-4; rounded, it would be 0.99609 or 1
    assert h["sampled"] and h["matched_in_score"] == pytest.approx(exact, abs=2e-4)
