"""Trajectories: composing gauges along a chain (`gaugeport compose`, `align --via`, align_chain)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gaugeport.core.apply import apply_gauge_to_model
from gaugeport.core.errors import GaugeError
from gaugeport.core.gauge import SignedPermutation, compose, load_gauge, read_gauge_file, save_gauge
from gaugeport.estimate.trajectory import Chain, Hop, align_chain, chain_confidence, compose_gauge_files
from gaugeport.models.tiny import tiny_model

widths = st.integers(min_value=1, max_value=24)
seeds = st.integers(min_value=0, max_value=2**16)


@settings(max_examples=40, deadline=None)
@given(d=widths, s1=seeds, s2=seeds, s3=seeds)
def test_composed_file_maps_like_applying_each_gauge_in_chain_order(tmp_path_factory, d, s1, s2, s3):
    tmp = tmp_path_factory.mktemp("chain")
    gs = [SignedPermutation.random(d, seed=s) for s in (s1, s2, s3)]
    paths = [save_gauge(g, tmp / f"g{i}.safetensors") for i, g in enumerate(gs)]
    out = compose_gauge_files(paths, tmp / "total.safetensors")
    x = np.random.default_rng(s1).normal(size=(3, d))
    assert np.allclose(load_gauge(tmp / "total.safetensors").apply(x), gs[2].apply(gs[1].apply(gs[0].apply(x))))
    assert out == compose(*gs)


@settings(max_examples=40, deadline=None)
@given(d=widths, s1=seeds, s2=seeds)
def test_chain_confidence_is_the_minimum_along_each_coordinates_path(d, s1, s2):
    rng = np.random.default_rng(s1)
    g1, g2 = SignedPermutation.random(d, seed=s1), SignedPermutation.random(d, seed=s2)
    c1, c2 = rng.random(d), rng.random(d)
    expected = [min(c1[i], c2[g1.perm[i]]) for i in range(d)]
    assert np.allclose(chain_confidence([g1, g2], [c1, c2]), expected)


def test_composed_file_carries_path_confidence_when_every_input_has_one(tmp_path):
    g1, g2 = SignedPermutation.random(6, seed=1), SignedPermutation.random(6, seed=2)
    c1, c2 = np.linspace(0.1, 0.6, 6), np.full(6, 0.3)
    save_gauge(g1, tmp_path / "a.safetensors", extras={"confidence": c1})
    save_gauge(g2, tmp_path / "b.safetensors", extras={"confidence": c2})
    compose_gauge_files([tmp_path / "a.safetensors", tmp_path / "b.safetensors"], tmp_path / "ab.safetensors")
    got = read_gauge_file(tmp_path / "ab.safetensors")
    assert np.allclose(got.extras["confidence"], np.minimum(c1, 0.3))
    assert got.provenance["order"] == "first file applied first"


def test_chain_flags_the_hop_with_the_lowest_mean_confidence():
    gs = [SignedPermutation.random(5, seed=s) for s in range(3)]
    hops = tuple(Hop(f"c{i}", f"c{i + 1}", g, np.full(5, conf)) for i, (g, conf) in enumerate(zip(gs, (0.9, 0.4, 0.8),
                                                                                                   strict=True)))
    chain = Chain(hops)
    assert chain.weakest == 1
    assert chain.gauge == compose(*gs)
    assert [h["weakest"] for h in chain.to_dict()["hops"]] == [False, True, False]
    assert "<- weakest" in chain.summary().splitlines()[2]


def test_compose_cli_refuses_gauges_of_different_widths_and_names_them(cli, tmp_path):
    save_gauge(SignedPermutation.random(4, seed=0), tmp_path / "g4.safetensors")
    save_gauge(SignedPermutation.random(5, seed=0), tmp_path / "g5.safetensors")
    code, _, err = cli("compose", tmp_path / "g4.safetensors", tmp_path / "g5.safetensors", "--out", tmp_path / "o")
    assert code == 2
    assert "g4.safetensors" in err and "g5.safetensors" in err
    assert not (tmp_path / "o").exists()


def test_compose_cli_writes_the_chain_and_refuses_to_overwrite(cli, tmp_path):
    gs = [SignedPermutation.random(7, seed=s) for s in (3, 4)]
    paths = [save_gauge(g, tmp_path / f"g{i}.safetensors") for i, g in enumerate(gs)]
    assert cli("compose", *paths, "--out", tmp_path / "ab.safetensors")[0] == 0
    assert load_gauge(tmp_path / "ab.safetensors") == gs[1] @ gs[0]
    assert cli("compose", *paths, "--out", tmp_path / "ab.safetensors")[0] == 2


def test_chain_needs_two_checkpoints():
    with pytest.raises(GaugeError):
        Chain(())


def test_align_chain_recovers_the_composed_hidden_gauge_of_tiny_models():
    """A -> C (A in gauge G1) -> B (C in gauge G2): the chain estimate equals G2 @ G1."""
    a = tiny_model("llama", seed=0)
    g1, g2 = SignedPermutation.random(32, seed=5), SignedPermutation.random(32, seed=6)
    c = apply_gauge_to_model(tiny_model("llama", seed=0), g1)
    b = apply_gauge_to_model(tiny_model("llama", seed=0), g2 @ g1)
    chain = align_chain([a, c, b], progress=False)
    assert chain.gauge.accuracy(g2 @ g1)["full"] == 1.0
    assert len(chain.hops) == 2 and chain.confidence.shape == (32,)
    with torch.no_grad():
        ids = torch.arange(3, 20)[None]
        assert torch.allclose(a(input_ids=ids).logits, b(input_ids=ids).logits, atol=1e-4)


def test_align_via_cli_composes_hops_between_checkpoints_on_disk(cli, tiny_dir, tmp_path):
    a = tiny_dir("llama", 0)
    assert cli("apply", a, "--random-seed", "1", "--save-gauge", tmp_path / "g1.safetensors", "--out",
               tmp_path / "c", "--quiet")[0] == 0
    assert cli("apply", tmp_path / "c", "--random-seed", "2", "--save-gauge", tmp_path / "g2.safetensors",
               "--out", tmp_path / "b", "--quiet")[0] == 0
    code, out, _ = cli("align", a, tmp_path / "b", "--via", tmp_path / "c", "--out", tmp_path / "ab.safetensors",
                       "--tokens", "2048", "--seq-len", "32", "--quiet")
    assert code == 0, out
    truth = load_gauge(tmp_path / "g2.safetensors") @ load_gauge(tmp_path / "g1.safetensors")
    assert load_gauge(tmp_path / "ab.safetensors") == truth
    assert "weakest" in out


def test_align_via_with_weights_matches_each_hop_from_the_stored_weights(tiny_dir, tmp_path):
    """Data-free chains read each checkpoint's weights (a layer-streamed model holds none to read)."""
    from gaugeport.core.apply import apply_gauge_to_checkpoint

    a = tiny_dir("llama", 0)
    g1, g2 = SignedPermutation.random(32, seed=1), SignedPermutation.random(32, seed=2)
    apply_gauge_to_checkpoint(a, g1, tmp_path / "c")
    apply_gauge_to_checkpoint(tmp_path / "c", g2, tmp_path / "b")
    chain = align_chain([a, tmp_path / "c", tmp_path / "b"], method="weights", progress=False)
    assert [h.gauge for h in chain.hops] == [g1, g2]
    assert chain.gauge == g2 @ g1
