"""``same`` at widths where a full assignment would be the cost: the p-value on a seeded sample of
units (nearest-neighbour matches), the full gauge recovered only for related pairs or on request.
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


def test_a_gauged_copy_is_still_identical_with_the_exact_gauge(zoo, small_sample, tmp_path):
    truth = random_full_gauge_for(zoo["base"], 12)
    apply_full_gauge_to_checkpoint(zoo["base"], truth, tmp_path / "copy", progress=False)
    res = same_mod.same(zoo["base"], tmp_path / "copy")
    assert res.verdict == "identical" and res.gauge == truth
    assert all(lay["mlp_units_sampled"] for lay in res.layers)


def test_a_gauged_finetune_is_derived_on_the_sample(zoo, small_sample):
    res = same_mod.same(zoo["base"], zoo["ft"])
    assert res.verdict == "derived" and res.gauge is not None


def test_full_gauge_asks_for_the_gauge_of_an_independent_pair(zoo, small_sample):
    res = same_mod.same(zoo["base"], zoo["ind1"], full_gauge=True)
    assert res.verdict == "independent" and res.gauge is not None
    assert not any(lay["mlp_units_sampled"] for lay in res.layers)
