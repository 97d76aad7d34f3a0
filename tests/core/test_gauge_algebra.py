"""Algebraic laws of signed permutations (property-based)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gaugeport.core.gauge import SignedPermutation, compose

widths = st.integers(min_value=1, max_value=24)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


@st.composite
def gauges(draw, d=None):
    d = draw(widths) if d is None else d
    return SignedPermutation.random(d, seed=draw(seeds), positive_fraction=draw(st.floats(0, 1)))


@st.composite
def gauge_triples(draw):
    d = draw(widths)
    return draw(gauges(d)), draw(gauges(d)), draw(gauges(d))


@given(gauge_triples())
def test_composition_is_associative(t):
    f, g, h = t
    assert (h @ g) @ f == h @ (g @ f)


@given(gauges())
def test_inverse_composes_to_identity(g):
    ident = SignedPermutation.identity(g.d)
    assert g @ g.inverse() == ident
    assert g.inverse() @ g == ident


@given(gauges())
def test_the_inverse_of_the_inverse_is_the_gauge_itself(g):
    """Computed once and shared both ways: inverting back and forth builds no chain of new objects."""
    assert g.inverse().inverse() is g
    assert g.inverse() is g.inverse()
    assert g.inverse() @ g == SignedPermutation.identity(g.d)


@given(gauge_triples(), seeds)
def test_applying_twice_equals_applying_the_composition(t, seed):
    g, h, _ = t
    x = np.random.default_rng(seed).normal(size=(3, g.d))
    np.testing.assert_array_equal(h.apply(g.apply(x)), compose(g, h).apply(x))


@given(gauges(), seeds)
def test_apply_agrees_with_dense_matrix(g, seed):
    x = torch.from_numpy(np.random.default_rng(seed).normal(size=(g.d,)))
    assert torch.equal(g.apply(x), g.to_matrix(torch.float64) @ x)
    assert SignedPermutation.from_matrix(g.to_matrix()) == g


@given(gauges(), seeds, st.integers(0, 2))
def test_apply_on_any_axis_moves_slices_with_their_sign(g, seed, axis):
    shape = [2, 3, 4]
    shape[axis] = g.d
    x = np.random.default_rng(seed).normal(size=shape)
    y = g.apply(x, axis=axis)
    for i in range(g.d):
        np.testing.assert_array_equal(np.take(y, g.perm[i], axis=axis), g.signs[i] * np.take(x, i, axis=axis))


@given(gauges(), seeds)
def test_abs_mode_permutes_without_signs(g, seed):
    x = np.random.default_rng(seed).normal(size=g.d)  # both signs: |G x| would differ from P x
    np.testing.assert_array_equal(g.apply(x, mode="abs"), g.perm_only().apply(x))


@settings(max_examples=25)
@given(gauges())
def test_gauge_is_orthogonal(g):
    m = g.to_matrix(torch.float64)
    assert torch.equal(m @ m.T, torch.eye(g.d, dtype=torch.float64))


def test_accuracy_counts_permutation_and_sign_separately():
    truth = SignedPermutation(np.array([1, 2, 0, 3]), np.array([1, -1, 1, -1]))
    guess = SignedPermutation(np.array([1, 2, 3, 0]), np.array([1, 1, 1, -1]))
    acc = guess.accuracy(truth)
    assert acc == {"full": 0.25, "perm": 0.5, "sign_given_perm": 0.5}


def test_random_gauge_has_requested_positive_fraction_and_is_seeded():
    g = SignedPermutation.random(100, seed=7, positive_fraction=0.2)
    assert g.positive_fraction == 0.2
    assert g == SignedPermutation.random(100, seed=7, positive_fraction=0.2)
    assert g != SignedPermutation.random(100, seed=8, positive_fraction=0.2)


@settings(max_examples=10, deadline=None)
@given(seeds, st.sampled_from([torch.bfloat16, torch.float32]), st.sampled_from(["signed", "abs"]))
def test_a_large_matrix_moved_along_its_columns_is_the_dense_product_bit_for_bit(seed, dtype, mode):
    """Matrices past the threaded gather's threshold (their columns gathered on every core) move exactly
    like the small ones: each column to ``perm[i]``, times ``signs[i]``."""
    rng = np.random.default_rng(seed)
    g = SignedPermutation.random(96, seed=seed)
    x = torch.from_numpy(rng.standard_normal((1500, 96))).to(dtype)  # 288 KB in bf16: past SPLIT_BYTES
    ref = (x.double() @ (g.to_matrix(torch.float64) if mode == "signed" else g.perm_only().to_matrix(torch.float64)).T)
    assert torch.equal(g.apply(x, axis=1, mode=mode), ref.to(dtype))
