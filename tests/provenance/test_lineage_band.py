"""The block map scores only the block pairs a monotone map can use (``monotone_band``); the map is unchanged."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gaugeport.provenance.lineage import monotone_assignment, monotone_band


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**31 - 1))
def test_masking_off_band_pairs_never_changes_the_monotone_map(m, n, seed):
    la, lb = max(m, n), min(m, n)
    score = np.random.default_rng(seed).normal(size=(la, lb))
    masked = np.where(monotone_band(la, lb), score, -np.inf)
    assert np.array_equal(monotone_assignment(masked), monotone_assignment(score))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12))
def test_band_holds_every_pair_some_increasing_map_uses_and_no_other(la, lb):
    band = monotone_band(la, lb)
    assert band.shape == (la, lb)
    assert band.sum() == min(la, lb) * (abs(la - lb) + 1)
    small, big = min(la, lb), max(la, lb)
    for s in range(small):  # small block s can sit on big block t iff s below-room and above-room fit
        for t in range(big):
            usable = t >= s and (big - 1 - t) >= (small - 1 - s)
            assert (band[t, s] if lb <= la else band[s, t]) == usable


def test_equal_depths_score_the_diagonal_only():
    assert np.array_equal(monotone_band(4, 4), np.eye(4, dtype=bool))
