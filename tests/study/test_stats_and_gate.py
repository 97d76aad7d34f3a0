"""The study's intervals (percentile bootstrap, draw ranges) and the gate a steering direction must pass
on the source model before any transport ratio is reported."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gaugeport.core.errors import DataError
from gaugeport.study import steer
from gaugeport.study.stats import bootstrap, ratio_of_means, ratio_of_sums, spread


def test_bootstrap_interval_of_the_mean_covers_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = 0
    for k in range(200):
        x = rng.normal(3.0, 2.0, size=40)
        iv = bootstrap(x, n_boot=400, seed=k)
        hits += iv.lo <= 3.0 <= iv.hi
    assert 0.88 <= hits / 200 <= 0.99  # percentile bootstrap runs slightly narrow at n=40


def test_bootstrap_interval_narrows_like_one_over_root_n():
    rng = np.random.default_rng(1)
    w = [(lambda iv: iv.hi - iv.lo)(bootstrap(rng.normal(size=n), seed=2)) for n in (100, 1600)]
    assert 3.0 <= w[0] / w[1] <= 5.5  # sqrt(16) = 4


def test_bootstrap_value_is_the_statistic_on_all_units_and_lies_inside():
    x = np.array([1.0, 2.0, 4.0, 8.0])
    iv = bootstrap(x)
    assert iv.value == pytest.approx(3.75) and iv.lo <= iv.value <= iv.hi and iv.n == 4


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=2, max_size=30), st.floats(0.1, 10), st.floats(-50, 50))
def test_bootstrap_is_equivariant_under_positive_affine_maps(xs, a, b):
    x = np.array(xs)
    iv, jv = bootstrap(x, n_boot=200, seed=3), bootstrap(a * x + b, n_boot=200, seed=3)
    for k in ("value", "lo", "hi"):
        assert getattr(jv, k) == pytest.approx(a * getattr(iv, k) + b, rel=1e-9, abs=1e-6)


def test_ratio_statistics_pair_their_columns():
    units = np.array([[1.0, 2.0], [3.0, 1.0]])
    assert ratio_of_means(units) == pytest.approx(3.0 / 4.0)
    assert ratio_of_sums(units) == pytest.approx(4.0 / 3.0)
    iv = bootstrap(np.array([[2.0, 1.0]] * 10), ratio_of_means)
    assert (iv.value, iv.lo, iv.hi) == pytest.approx((0.5, 0.5, 0.5))


def test_spread_is_the_mean_and_range_of_the_draws():
    iv = spread([0.9, 1.0, 0.95])
    assert (iv.value, iv.lo, iv.hi, iv.n) == pytest.approx((0.95, 0.9, 1.0, 3))


def test_too_few_or_non_finite_units_are_refused():
    with pytest.raises(DataError):
        bootstrap([1.0])
    with pytest.raises(DataError):
        bootstrap([1.0, float("nan")])


# ------------------------------------------------------------------------------------- the gate
def _effects(mean: float, sd: float = 0.2, n: int = 32) -> np.ndarray:
    return np.random.default_rng(4).normal(mean, sd, size=n)


def test_gate_passes_a_direction_with_the_intended_sign_enough_nats_and_3x_random():
    g = steer.gate(_effects(2.0), [0.5, -0.6, 0.3])
    assert g["passes"] and all(g["checks"].values())
    assert g["ratio_to_random"] == pytest.approx(abs(g["effect"]["value"]) / 0.6)


def test_gate_fails_the_wrong_sign():
    g = steer.gate(_effects(-2.0), [0.1])
    assert not g["passes"] and not g["checks"]["intended_sign"]
    assert steer.gate(_effects(-2.0), [0.1], sign=-1)["passes"]


def test_gate_fails_an_effect_whose_interval_reaches_zero():
    g = steer.gate(_effects(1.2, sd=6.0), [0.01])
    assert not g["checks"]["intended_sign"] and not g["passes"]


def test_gate_fails_below_the_minimum_effect():
    g = steer.gate(_effects(0.8), [0.01])
    assert g["checks"]["intended_sign"] and not g["checks"]["at_least_min_effect"] and not g["passes"]


def test_gate_fails_when_a_random_direction_comes_within_3x():
    g = steer.gate(_effects(2.0), [0.1, -0.9, 0.2])  # the largest |random| counts, whatever its sign
    assert not g["checks"]["beats_random"] and not g["passes"]


def test_linear_top_stops_at_the_first_doubling_that_is_not_roughly_double():
    assert steer.linear_top([0.5, 1.0, 2.1, 4.0, 5.0]) == 3
    assert steer.linear_top([0.5, 0.6, 1.2]) == 0
    assert steer.linear_top([0.5, 1.0, 2.0, 4.0]) == 3
    assert steer.linear_top([0.0, 1.0]) == 0
    assert steer.linear_top([0.1, 0.2, 1.0, 2.0]) == 1  # x5 on one doubling: past the linear regime


# ------------------------------------------------------------------------------------- the sweep
@pytest.fixture(scope="module")
def steerable():
    """A tiny random Llama, prompts, a metric (logit of token 5 minus token 6 at the last position) and,
    at each layer, the direction that raises it to first order: the final norm's gains times the
    difference of the two unembedding rows."""
    import torch

    from gaugeport.models.tiny import tiny_model

    model = tiny_model("llama", 3, hidden_size=256, intermediate_size=256, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=64, num_hidden_layers=2, vocab_size=64).eval()
    ids = torch.randint(7, 64, (16, 6), generator=torch.Generator().manual_seed(0))
    probe = steer.Probe(ids, lambda lg: (lg[:, -1, 5] - lg[:, -1, 6]).double())
    w = model.get_output_embeddings().weight.detach()
    u = (w[5] - w[6]) * model.model.norm.weight.detach()
    with torch.no_grad():
        rho = float(model(input_ids=ids, output_hidden_states=True).hidden_states[1].norm(dim=-1).mean())
    return model, probe, {0: (u / u.norm(), rho), 1: (u / u.norm(), rho)}


def test_the_sweep_picks_a_linear_strength_and_the_gate_passes_a_working_direction(steerable):
    model, probe, dirs = steerable
    out = steer.choose(model, probe, dirs, min_effect=0.05, n_random=20)
    assert out["passes"] and out["tried"][-1]["passes"] and out["layer"] in dirs
    row = next(r for r in out["sweep"] if r["layer"] == out["layer"])
    k = out["ladder"].index(out["strength"])
    assert row["linear_top"] == out["strength"] and k == steer.linear_top(row["effects"])
    u, rho = dirs[out["layer"]]
    assert float(out["vector"].norm()) == pytest.approx(out["strength"] * rho, rel=1e-5)
    assert out["effects"].mean() == pytest.approx(out["tried"][-1]["effect"]["value"])
    assert out["tried"][-1]["ratio_to_random"] >= steer.MIN_RATIO and "vector" not in steer.public(out)


def test_a_direction_pointing_the_wrong_way_gets_no_layer(steerable):
    model, probe, dirs = steerable
    out = steer.choose(model, probe, dirs, sign=-1, min_effect=0.05, n_random=2)
    assert not out["passes"] and out["tried"] == [] and "vector" not in out
