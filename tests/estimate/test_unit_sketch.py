"""Unit feature rows wider than ``SKETCH_DIM`` are compared through a seeded CountSketch."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gaugeport.estimate.hidden import SKETCH_DIM, _count_sketch, unit_rows


def _reference_sketch(x: np.ndarray) -> np.ndarray:
    """The CountSketch by its definition: column j adds signs[j] * x[:, j] to bucket buckets[j]; rows to unit norm."""
    signs, buckets = (t.numpy() for t in _count_sketch(x.shape[1]))
    out = np.zeros((x.shape[0], SKETCH_DIM), dtype=np.float64)
    for j in range(x.shape[1]):
        out[:, buckets[j]] += signs[j] * x[:, j]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@settings(max_examples=10, deadline=None)
@given(f=st.integers(SKETCH_DIM + 1, 3 * SKETCH_DIM), seed=st.integers(0, 2**16))
def test_wide_rows_are_the_signed_count_sketch(f: int, seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal((7, f)).astype(np.float32)
    np.testing.assert_allclose(unit_rows(x), _reference_sketch(x.astype(np.float64)), atol=2e-6)


def test_narrow_rows_are_only_scaled_to_unit_norm() -> None:
    x = np.random.default_rng(0).standard_normal((5, SKETCH_DIM)).astype(np.float32)
    np.testing.assert_allclose(unit_rows(x), x / np.linalg.norm(x, axis=1, keepdims=True), atol=1e-6)


def test_the_sketch_keeps_cosines_of_wide_rows() -> None:
    """Inner products survive in expectation: a row and a noisy copy stay near their true cosine, and
    unrelated rows near zero (spread about 1 / sqrt(SKETCH_DIM))."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 4096)).astype(np.float32)
    y = x + 0.5 * rng.standard_normal(x.shape).astype(np.float32)
    true = np.sum(x * y, axis=1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    sx, sy = unit_rows(x), unit_rows(y)
    assert np.abs(np.sum(sx * sy, axis=1) - true).max() < 0.05
    unrelated = sx[:100] @ sx[100:].T
    assert abs(float(unrelated.mean())) < 0.01
    assert 0.5 / np.sqrt(SKETCH_DIM) < float(unrelated.std()) < 2.0 / np.sqrt(SKETCH_DIM)


@settings(max_examples=10, deadline=None)
@given(f=st.integers(SKETCH_DIM + 1, 3 * SKETCH_DIM), seed=st.integers(0, 2**16))
def test_a_unit_major_view_of_a_transposed_tensor_gets_the_same_sketch(f: int, seed: int) -> None:
    """A down projection's units are its columns: the view ``w.T`` is sketched from ``w``'s rows, no copy."""
    w = np.random.default_rng(seed).standard_normal((f, 9)).astype(np.float32)  # [features, units]
    view = w.T
    assert not view.flags.c_contiguous
    np.testing.assert_allclose(unit_rows(view), _reference_sketch(w.T.astype(np.float64)), atol=2e-6)
