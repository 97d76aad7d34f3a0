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
from gaugeport.estimate.lap import dense_solvers, linear_assignment, solve_dense, sparse_assignment
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


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 60), st.integers(0, 10_000), st.sampled_from([1, 2, 8]))
def test_sparse_path_returns_a_dense_optimum_or_declines(d: int, seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    score = np.abs(planted(SignedPermutation.random(d, seed=seed), seed, strength=rng.uniform(0.1, 0.9),
                           noise=0.2))
    cost = (score.max() - score).astype(np.float32)
    found = sparse_assignment(cost, k=k)
    _, ref = linear_sum_assignment(cost)
    if found is not None:
        assert lap_total(cost, found[0]) == pytest.approx(lap_total(cost, ref), abs=1e-4)
    res = linear_assignment(score, sparse=True, k=k)
    assert lap_total(cost, res.cols) == pytest.approx(lap_total(cost, ref), abs=1e-4)


def test_sparse_path_declines_when_the_optimum_lies_outside_its_candidates() -> None:
    """Each row's cheapest entry is a trap: the optimum uses entries no top-1 list holds."""
    d = 6
    cost = np.full((d, d), 10.0, dtype=np.float32)
    cost[:, 0] = 0.0  # every row's best column is 0 ...
    cost[np.arange(1, d), np.arange(1, d)] = 1.0  # ... but only one row can have it
    found = sparse_assignment(cost, k=1, max_rounds=1)
    assert found is None
    widened = sparse_assignment(cost, k=1, max_rounds=3)
    assert widened is not None and lap_total(cost, widened[0]) == pytest.approx(5.0)


def test_sparse_certificate_catches_a_candidate_optimum_that_is_not_globally_optimal() -> None:
    """Candidates hold a perfect matching, but a better one uses a non-candidate edge."""
    cost = np.array([[0.0, 1.0, 3.0],
                     [1.0, 0.0, 0.5],
                     [3.0, 0.2, 0.0]], dtype=np.float32)
    from gaugeport.estimate import lap

    rows, cols = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 0, 1, 1, 2])
    match = lap._solve_sparse(cost, rows, cols)
    assert match is not None and match.tolist() == [0, 1, 2]  # optimal among candidates and globally too
    duals = lap.dual_potentials(cost, rows, cols, match)
    assert duals is not None
    assert len(lap.violations(cost, *duals, tol=1e-6)[0]) == 0
    cost[1, 2] = -5.0  # now 0->0, 1->2, 2->1 is cheaper, through the non-candidate (1, 2)
    duals = lap.dual_potentials(cost, rows, cols, match)
    assert duals is not None
    bad_r, bad_c = lap.violations(cost, *duals, tol=1e-6)
    assert (1, 2) in set(zip(bad_r.tolist(), bad_c.tolist(), strict=True))


def test_assignment_refuses_nan_scores() -> None:
    with pytest.raises(DataError, match="NaN"):
        linear_assignment(np.array([[1.0, np.nan], [0.0, 1.0]]))
