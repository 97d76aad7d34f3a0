"""Matching a cross-correlation to a gauge, and the LAP solvers underneath."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from gaugeport import match_coordinates
from gaugeport.core.errors import DataError
from gaugeport.core.gauge import SignedPermutation
from gaugeport.estimate.lap import (
    augment_from_best,
    dense_solvers,
    linear_assignment,
    one_pass_assignment,
    row_best,
    solve_dense,
)
from gaugeport.estimate.matching import match_with_confidence


def planted(g: SignedPermutation, seed: int, strength: float = 0.8, noise: float = 0.05) -> np.ndarray:
    """A correlation-like matrix whose strong entries sit where ``g`` maps A's coordinates."""
    rng = np.random.default_rng(seed)
    c = rng.normal(0, noise, size=(g.d, g.d))
    c[np.arange(g.d), g.perm] = g.signs * rng.uniform(strength - 0.2, strength, g.d)
    return c


# ----------------------------------------------------------------------------- methods
def test_signed_recovers_a_planted_gauge() -> None:
    g = SignedPermutation.random(64, seed=0)
    assert match_coordinates(planted(g, 0)) == g


def test_torch_input_gives_the_same_gauge_as_numpy() -> None:
    c = planted(SignedPermutation.random(16, seed=1), 1)
    assert match_coordinates(torch.from_numpy(c).float()) == match_coordinates(c)


@pytest.mark.parametrize("positive_fraction", [0.2, 0.5, 0.8])
def test_raw_matching_is_capped_by_the_positive_fraction(positive_fraction: float) -> None:
    g = SignedPermutation.random(100, seed=2, positive_fraction=positive_fraction)
    c = planted(g, 2)
    raw = match_coordinates(c, method="raw").accuracy(g)["full"]
    assert raw == pytest.approx(positive_fraction, abs=0.05)
    assert match_coordinates(c, method="signed").accuracy(g)["full"] == 1.0


def test_perm_only_gets_permutations_right_and_signs_by_chance() -> None:
    g = SignedPermutation.random(100, seed=3)
    acc = match_coordinates(planted(g, 3), method="perm-only").accuracy(g)
    assert acc["perm"] == 1.0
    assert acc["sign_given_perm"] == pytest.approx(g.positive_fraction)


def test_confidence_is_the_matched_abs_correlation_and_margin_the_gap_to_the_runner_up() -> None:
    c = np.array([[0.9, 0.1, 0.0],
                  [0.2, -0.7, 0.6],
                  [0.0, 0.3, 0.5]])
    m = match_with_confidence(c)
    assert m.gauge.perm.tolist() == [0, 1, 2] and m.gauge.signs.tolist() == [1, -1, 1]
    np.testing.assert_allclose(m.confidence, [0.9, 0.7, 0.5])
    # row 1: runner-up 0.6 in its row; row 2: runner-up 0.6 in its column (B's coordinate 2)
    np.testing.assert_allclose(m.margin, [0.9 - 0.2, 0.7 - 0.6, 0.5 - 0.6])


def test_low_confidence_lists_ambiguous_coordinates_least_certain_first() -> None:
    c = np.eye(4) * 0.9
    c[2, 3] = c[3, 2] = 0.88
    low = match_with_confidence(c).low_confidence(margin_below=0.05)
    assert sorted(item["coordinate"] for item in low) == [2, 3]
    assert low[0]["margin"] <= low[1]["margin"]


@pytest.mark.parametrize(("bad", "message"), [
    (np.zeros((3, 4)), "square"),
    (np.array([[np.nan, 0.0], [0.0, 1.0]]), "NaN"),
    (np.zeros((0, 0)), "empty"),
])
def test_bad_matrices_are_refused(bad: np.ndarray, message: str) -> None:
    with pytest.raises(DataError, match=message):
        match_coordinates(bad)


def test_unknown_method_is_refused() -> None:
    with pytest.raises(DataError, match="unknown matching method"):
        match_coordinates(np.eye(3), method="hungarian")


# ----------------------------------------------------------------------------- solvers
def lap_total(cost: np.ndarray, cols: np.ndarray) -> float:
    return float(cost[np.arange(len(cols)), cols].sum())


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(0, 10_000))
def test_every_dense_backend_finds_scipys_optimum(d: int, seed: int) -> None:
    cost = np.random.default_rng(seed).random((d, d)).astype(np.float32)
    rows, ref = linear_sum_assignment(cost)
    for name in dense_solvers():
        cols, used = solve_dense(cost, backend=name)  # type: ignore[arg-type]
        assert used == name
        assert lap_total(cost, cols) == pytest.approx(lap_total(cost, ref), abs=1e-4), name


def brute_force_best(score: np.ndarray) -> float:
    """The largest total over all d! permutations (the definition of the optimum, for small d)."""
    from itertools import permutations

    d = score.shape[0]
    return max(float(score[np.arange(d), list(p)].sum()) for p in permutations(range(d)))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(0, 10_000), st.floats(0.0, 2.0))
def test_one_pass_shortcut_is_optimal_whenever_row_maxima_are_distinct(d: int, seed: int, strength: float) -> None:
    """The lemma behind the shortcut, checked against every permutation: if the row-best columns are
    all different, no assignment scores more (each row already has its maximum)."""
    rng = np.random.default_rng(seed)
    score = rng.normal(size=(d, d)) + strength * np.eye(d)[rng.permutation(d)]
    best = row_best(score)
    cols = one_pass_assignment(best)
    distinct = len(set(best.tolist())) == d
    assert (cols is not None) == distinct
    if cols is not None:
        assert float(score[np.arange(d), cols].sum()) == pytest.approx(brute_force_best(score), abs=1e-12)
        assert linear_assignment(score).backend == "one-pass"


def test_one_pass_shortcut_declines_when_two_rows_want_one_column() -> None:
    score = np.array([[0.9, 0.8, 0.0], [0.95, 0.1, 0.0], [0.0, 0.0, 1.0]])
    assert one_pass_assignment(row_best(score)) is None
    res = linear_assignment(score)
    assert res.backend == "augment" and res.free_rows == 1
    assert res.cols.tolist() == [1, 0, 2]  # 0.8 + 0.95 beats 0.9 + 0.1


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 60), st.integers(0, 10_000), st.sampled_from([0.05, 0.3, 1.0]), st.booleans(),
       st.booleans())
def test_augmentation_finds_scipys_optimum(d: int, seed: int, noise: float, absolute: bool, maximize: bool) -> None:
    rng = np.random.default_rng(seed)
    c = planted(SignedPermutation.random(d, seed=seed), seed, strength=rng.uniform(0.1, 0.9), noise=noise)
    score = np.abs(c) if absolute else c
    _, ref = linear_sum_assignment(score, maximize=maximize)
    res = linear_assignment(c, absolute=absolute, maximize=maximize)
    assert lap_total(score, res.cols) == pytest.approx(lap_total(score, ref), abs=1e-9)
    found = augment_from_best(c, row_best(c, absolute=absolute, maximize=maximize), absolute=absolute,
                              maximize=maximize, max_scans=10**9)
    assert found is not None and lap_total(score, found[0]) == pytest.approx(lap_total(score, ref), abs=1e-9)


def test_augmentation_hands_over_to_the_dense_solver_past_its_budget() -> None:
    """A matrix far from a permutation (uniform noise) needs long paths: the dense kernel takes over."""
    score = np.random.default_rng(0).random((200, 200))
    assert augment_from_best(score, row_best(score), max_scans=5) is None
    res = linear_assignment(score, max_scans=5)
    assert res.backend in dense_solvers()
    _, ref = linear_sum_assignment(score, maximize=True)
    assert lap_total(score, res.cols) == pytest.approx(lap_total(score, ref), abs=1e-4)


def test_match_coordinates_skips_margins_and_match_with_confidence_keeps_them() -> None:
    c = planted(SignedPermutation.random(32, seed=5), 5)
    assert match_with_confidence(c, margins=False).margin is None
    with pytest.raises(DataError, match="without margins"):
        match_with_confidence(c, margins=False).low_confidence()
    assert match_with_confidence(c).margin is not None


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("method", ["signed", "raw"])
def test_one_pass_refuses_every_non_finite_entry(bad: float, method: str) -> None:
    c = planted(SignedPermutation.random(40, seed=6), 6)
    c[17, 3] = bad
    with pytest.raises(DataError, match="NaN or infinite"):
        match_coordinates(c, method=method)


def test_assignment_refuses_nan_scores() -> None:
    with pytest.raises(DataError, match="NaN"):
        linear_assignment(np.array([[1.0, np.nan], [0.0, 1.0]]))
