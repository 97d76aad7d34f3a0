"""The benchmark's anchors (benchmarks/anchors: AWM, Zhu et al., HuRef): the laws their statistics rest on,
and the behaviour the suite reports (a gauge blinds Zhu et al.'s constrained test, not AWM or HuRef)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from anchors import awm, huref, zhu  # noqa: E402


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_unbiased_cka_is_invariant_to_rotating_the_features_and_not_to_shuffling_the_examples(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(40, 12))
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    assert np.isclose(awm.unbiased_cka(x, x @ q), 1.0)
    assert awm.unbiased_cka(x, rng.permutation(x)) < 0.5


def test_fisher_combines_uniform_p_values_to_a_uniform_p_value():
    rng = np.random.default_rng(0)
    ps = [zhu.fisher(list(rng.uniform(size=5))) for _ in range(2000)]
    assert abs(np.mean(np.asarray(ps) < 0.05) - 0.05) < 0.015
    assert zhu.fisher([1e-8, 0.5]) < 1e-6


@pytest.fixture(scope="module")
def gauged(zoo, tmp_path_factory):
    from gaugeport.core.fullgauge import apply_full_gauge_to_checkpoint, random_full_gauge_for

    out = tmp_path_factory.mktemp("anchors") / "gauged"
    apply_full_gauge_to_checkpoint(zoo["base"], random_full_gauge_for(zoo["base"], 3), out, progress=False)
    return out


def test_a_full_gauge_blinds_the_constrained_test_but_not_awm_or_huref(zoo, gauged):
    assert zhu.constrained(zoo["base"], zoo["ft"].parent / "ft_plain")["p_value"] < 1e-6  # ungauged fine-tune
    assert zhu.constrained(zoo["base"], gauged)["p_value"] > 1e-3  # same weights, gauged: missed
    assert awm.statistic(zoo["base"], gauged)["score"] > 0.99
    assert awm.statistic(zoo["base"], zoo["ind1"])["score"] < 0.3
    assert huref.statistic(zoo["base"], gauged)["score"] > 0.99
    assert abs(huref.statistic(zoo["base"], zoo["ind1"])["score"]) < 0.3


def test_awm_and_huref_read_bert_encoders_by_their_own_tensor_names(tmp_path):
    import torch
    import transformers

    from gaugeport.core.fullgauge import apply_full_gauge_to_checkpoint, random_full_gauge_for

    def bert(seed: int, path: Path) -> Path:
        torch.manual_seed(seed)
        cfg = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=32)
        transformers.BertModel(cfg, add_pooling_layer=False).save_pretrained(path)
        return path

    a, ind = bert(0, tmp_path / "a"), bert(1, tmp_path / "ind")
    g = apply_full_gauge_to_checkpoint(a, random_full_gauge_for(a, 3), tmp_path / "g", progress=False)
    assert awm.statistic(a, g)["score"] > 0.99 and abs(awm.statistic(a, ind)["score"]) < 0.3
    assert huref.statistic(a, g)["score"] > 0.99 and abs(huref.statistic(a, ind)["score"]) < 0.3


@pytest.mark.parametrize("dropped_from", ["b", "a"])
def test_match_on_unequal_depths_compares_each_shallower_block_only_within_the_monotone_band(tmp_path, monkeypatch,
                                                                                             dropped_from):
    from gaugeport.core.verify import load_model
    from gaugeport.models.tiny import save_tiny
    from gaugeport.provenance.derivations import drop_blocks

    deep = save_tiny("llama", tmp_path / "deep", seed=0, num_hidden_layers=4)
    drop_blocks(load_model(deep), [1]).save_pretrained(tmp_path / "shallow")
    calls = []
    real = zhu._lap_sq_euclid
    monkeypatch.setattr(zhu, "_lap_sq_euclid", lambda x, y: calls.append(1) or real(x, y))
    a, b = (deep, tmp_path / "shallow") if dropped_from == "b" else (tmp_path / "shallow", deep)
    out = zhu.match(a, b)
    assert len(calls) == 2 * 3 * 2  # gate and up, 3 shallower blocks, 2 candidates each (depth difference 1)
    assert len(out["per_layer"]) == 3 and out["p_value"] < 1e-6
