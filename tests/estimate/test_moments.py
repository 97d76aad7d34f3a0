"""Streaming cross-moments: exact merging, numerical stability, dead coordinates, files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gaugeport.core.errors import CheckpointError, DataError
from gaugeport.estimate.moments import CrossMoments, MomentSet


def paired(n: int, d: int, seed: int, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d)) + offset
    b = a[:, ::-1] * np.linspace(-2, 2, d) + 0.3 * rng.normal(size=(n, d)) - offset
    return a, b


def reference_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.corrcoef(a.T, b.T)[: a.shape[1], a.shape[1]:]


def assert_same_moments(x: CrossMoments, y: CrossMoments) -> None:
    assert x.count == y.count
    for name in ("mean_a", "mean_b", "m2_a", "m2_b", "comoment"):
        np.testing.assert_allclose(getattr(x, name).numpy(), getattr(y, name).numpy(), rtol=1e-10, atol=1e-9)


# ----------------------------------------------------------------------------- merging
@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=6), st.integers(0, 10_000))
def test_merging_shards_equals_one_pass(sizes: list[int], seed: int) -> None:
    a, b = paired(sum(sizes), 5, seed, offset=3.0)
    one = CrossMoments(5).update(a, b)
    shards, start = [], 0
    for n in sizes:
        shards.append(CrossMoments(5).update(a[start:start + n], b[start:start + n]))
        start += n
    merged = shards[0]
    for s in shards[1:]:
        merged.merge(s)
    assert_same_moments(merged, one)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 30), st.integers(1, 30), st.integers(0, 10_000))
def test_merge_is_commutative(n1: int, n2: int, seed: int) -> None:
    a, b = paired(n1 + n2, 4, seed)
    x = CrossMoments(4).update(a[:n1], b[:n1])
    y = CrossMoments(4).update(a[n1:], b[n1:])
    assert_same_moments(x.copy().merge(y), y.copy().merge(x))


def test_batches_of_any_size_give_the_reference_correlation() -> None:
    a, b = paired(1000, 6, seed=1)
    cm = CrossMoments(6)
    for start in range(0, 1000, 137):
        cm.update(a[start:start + 137], b[start:start + 137])
    np.testing.assert_allclose(cm.correlation(), reference_corr(a, b), atol=1e-12)


def test_raw_sum_view_matches_the_definition() -> None:
    a, b = paired(200, 3, seed=2, offset=5.0)
    cm = CrossMoments(3).update(a, b)
    np.testing.assert_allclose(cm.cross, a.T @ b, rtol=1e-10)
    np.testing.assert_allclose(cm.sum_a, a.sum(0), rtol=1e-12)
    np.testing.assert_allclose(cm.sumsq_b, (b**2).sum(0), rtol=1e-10)


def test_float32_batch_products_stay_close_to_float64() -> None:
    a, b = paired(4096, 8, seed=3, offset=10.0)
    exact = CrossMoments(8).update(a, b).correlation()
    fast = CrossMoments(8, batch_dtype=torch.float32).update(torch.from_numpy(a).float(),
                                                             torch.from_numpy(b).float()).correlation()
    np.testing.assert_allclose(fast, exact, atol=1e-5)


# ----------------------------------------------------------------------------- stability
def test_no_catastrophic_cancellation_at_large_token_counts() -> None:
    """2 million tokens with means 1e8 x the spread: naive sum(ab) - n mean_a mean_b would be pure noise."""
    d, n_batches, n = 3, 40, 50_000
    cm = CrossMoments(d)
    rng = np.random.default_rng(0)
    signs = np.array([1.0, -1.0, 1.0])
    for _ in range(n_batches):
        z = rng.normal(size=(n, d))
        a = 1e8 + z
        b = -1e8 + signs * z + 0.5 * rng.normal(size=(n, d))
        cm.update(a, b)
    expected = signs / np.sqrt(1.25)  # corr(z, s z + 0.5 e) = s / sqrt(1 + 0.25)
    assert cm.count == n_batches * n
    np.testing.assert_allclose(np.diag(cm.correlation()), expected, atol=2e-3)
    off = cm.correlation()[~np.eye(d, dtype=bool)]
    assert np.max(np.abs(off)) < 5e-3


# ----------------------------------------------------------------------------- dead coordinates
def test_dead_coordinates_are_reported_and_zeroed_not_divided_by_zero() -> None:
    a, b = paired(300, 4, seed=4)
    a[:, 1] = 7.25  # constant in A
    b[:, 3] = 0.0  # constant in B
    cm = CrossMoments(4).update(a, b)
    c = cm.correlation()
    assert cm.dead_a().tolist() == [1] and cm.dead_b().tolist() == [3]
    assert np.all(np.isfinite(c))
    assert np.all(c[1] == 0) and np.all(c[:, 3] == 0)
    assert np.abs(c[2, 1]) > 0.5  # live pairs keep their correlation


# ----------------------------------------------------------------------------- bad input
def test_nan_rows_are_refused_naming_the_side() -> None:
    a, b = paired(10, 3, seed=5)
    b[4, 2] = np.nan
    with pytest.raises(DataError, match="b contains NaN"):
        CrossMoments(3).update(a, b)


@pytest.mark.parametrize(("shape_a", "shape_b", "message"), [
    ((10, 3), (9, 3), "pair the same tokens"),
    ((10, 4), (10, 3), "width mismatch"),
    ((10,), (10,), "shape"),
])
def test_mismatched_rows_are_refused(shape_a: tuple, shape_b: tuple, message: str) -> None:
    with pytest.raises(DataError, match=message):
        CrossMoments(3).update(np.zeros(shape_a), np.zeros(shape_b))


def test_correlation_needs_two_tokens() -> None:
    with pytest.raises(DataError, match="at least 2 tokens"):
        CrossMoments(2).update(np.ones((1, 2)), np.ones((1, 2))).correlation()


# ----------------------------------------------------------------------------- sets and files
def moment_set(seed: int, shard: str, model_a: str = "A", sites: tuple[str, ...] = ("embed", "resid_post.0")
               ) -> MomentSet:
    a, b = paired(50, 4, seed)
    return MomentSet({s: CrossMoments(4).update(a, b) for s in sites}, model_a, "B", [shard], {"norm": "rms"})


def test_moment_set_roundtrips_through_safetensors(tmp_path) -> None:
    ms = moment_set(0, "s0").merge(moment_set(1, "s1"))
    path = ms.save(tmp_path / "m.safetensors")
    back = MomentSet.load(path)
    assert (back.model_a, back.model_b, back.shard_ids, back.info) == ("A", "B", ["s0", "s1"], {"norm": "rms"})
    assert back.n_tokens == 100
    for site in ms.sites:
        assert_same_moments(back.sites[site], ms.sites[site])


def test_merge_refuses_another_model_pair() -> None:
    with pytest.raises(DataError, match="different model pairs"):
        moment_set(0, "s0").merge(moment_set(1, "s1", model_a="other"))


def test_merge_refuses_other_sites() -> None:
    with pytest.raises(DataError, match="different sites"):
        moment_set(0, "s0").merge(moment_set(1, "s1", sites=("embed",)))


def test_merge_refuses_a_shard_twice() -> None:
    with pytest.raises(DataError, match="counted twice"):
        moment_set(0, "s0").merge(moment_set(0, "s0"))


def test_merge_leaves_its_inputs_unchanged() -> None:
    x, y = moment_set(0, "s0"), moment_set(1, "s1")
    before = x.sites["embed"].copy()
    x.merge(y)
    assert_same_moments(x.sites["embed"], before)


def test_loading_a_gauge_file_as_moments_is_refused(tmp_path) -> None:
    from gaugeport.core.gauge import SignedPermutation, save_gauge

    path = save_gauge(SignedPermutation.identity(4), tmp_path / "g.safetensors")
    with pytest.raises(DataError, match="not a gaugeport moments file"):
        MomentSet.load(path)


def test_loading_a_truncated_moments_file_is_refused(tmp_path) -> None:
    path = moment_set(0, "s0").save(tmp_path / "m.safetensors")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read"):
        MomentSet.load(path)
