"""Gauge recovery by construction: B = a known gauge applied to A (then perturbed); estimate it back."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from gaugeport.core.apply import apply_gauge_to_model
from gaugeport.core.errors import ArchitectureError, DataError
from gaugeport.core.gauge import SignedPermutation
from gaugeport.estimate.activations import collect_moments
from gaugeport.estimate.align import align_by_weights, align_from_moments, align_models
from gaugeport.models.tiny import probe_ids, tiny_model

D = 32


def batches(n_seq: int = 32, seq_len: int = 32, seed: int = 0) -> list[torch.Tensor]:
    """1,024 tokens: a modest budget for d = 32."""
    return list(probe_ids(96, n_seq, seq_len, seed).split(8))


@torch.no_grad()
def gauged_pair(model_type: str, gauge: SignedPermutation, noise: float = 0.0,
                seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A, and B = gauge(A) with every weight perturbed by ``noise`` times its tensor's spread."""
    a = tiny_model(model_type, seed=seed)
    b = copy.deepcopy(a)
    apply_gauge_to_model(b, gauge)
    gen = torch.Generator().manual_seed(seed + 1000)
    for p in b.parameters():
        if p.numel() > 1:
            p.add_(torch.randn(p.shape, generator=gen) * noise * p.std())
    return a, b


# ----------------------------------------------------------------------------- recovery
@pytest.mark.parametrize("model_type", ["llama", "gemma2"])
@pytest.mark.parametrize("noise", [0.0, 0.1, 0.3])
def test_signed_recovers_the_gauge_of_a_perturbed_rmsnorm_model(model_type: str, noise: float) -> None:
    truth = SignedPermutation.random(D, seed=11)
    a, b = gauged_pair(model_type, truth, noise)
    assert align_models(a, b, batches(), progress=False).accuracy(truth)["full"] >= 0.99


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_signed_on_layernorm_recovers_the_permutation_and_the_global_sign(noise: float) -> None:
    truth = SignedPermutation.random(D, seed=12).with_signs(-np.ones(D))  # S_d with the one global flip
    res = align_models(*gauged_pair("gpt2", truth, noise), batches(), progress=False)
    assert res.accuracy(truth)["full"] >= 0.99
    assert res.gauge.is_global_sign and "global sign" in res.report["group"]


@pytest.mark.parametrize("positive_fraction", [0.2, 0.5, 0.8])
def test_ceiling_theorem_raw_tracks_the_positive_fraction_signed_stays_near_one(positive_fraction: float) -> None:
    truth = SignedPermutation.random(D, seed=13, positive_fraction=positive_fraction)
    a, b = gauged_pair("llama", truth, noise=0.05)
    ms = collect_moments(a, b, batches(), progress=False)
    raw = align_from_moments(ms, "raw").accuracy(truth)["full"]
    signed = align_from_moments(ms, "signed").accuracy(truth)["full"]
    assert raw == pytest.approx(truth.positive_fraction, abs=0.1)
    assert signed >= 0.99


def test_perm_only_gets_permutations_right_and_about_half_the_signs() -> None:
    truth = SignedPermutation.random(D, seed=14)
    a, b = gauged_pair("llama", truth, noise=0.05)
    acc = align_models(a, b, batches(), method="perm-only", progress=False).accuracy(truth)
    assert acc["perm"] >= 0.99
    assert acc["sign_given_perm"] == pytest.approx(0.5, abs=0.1)
    assert acc["full"] < 0.6


# ----------------------------------------------------------------------------- report
def test_confidence_is_high_and_every_site_agrees_on_a_clean_pair() -> None:
    truth = SignedPermutation.random(D, seed=15)
    res = align_models(*gauged_pair("llama", truth), batches(), progress=False)
    assert res.min_confidence > 0.99 and res.report["n_low_confidence"] == 0
    assert set(res.site_agreement) == set(res.sites) and min(res.site_agreement.values()) == 1.0
    assert res.report["sites"] == res.sites and res.report["n_tokens"] == res.n_tokens > 0


def test_unrelated_models_give_low_confidence_and_list_the_coordinates() -> None:
    res = align_models(tiny_model("llama", seed=0), tiny_model("llama", seed=1), batches(), progress=False)
    assert res.mean_confidence < 0.9
    assert res.report["n_low_confidence"] > 0 and res.report["low_confidence"]


def test_restricting_sites_uses_only_those_sites() -> None:
    truth = SignedPermutation.random(D, seed=16)
    ms = collect_moments(*gauged_pair("llama", truth, 0.1), batches(), progress=False)
    res = align_from_moments(ms, "signed", sites=["resid_post.1"])
    assert res.sites == ["resid_post.1"] and list(res.site_agreement) == ["resid_post.1"]
    assert res.accuracy(truth)["full"] >= 0.99
    with pytest.raises(DataError, match="not in the moments"):
        align_from_moments(ms, "signed", sites=["resid_post.9"])


def test_estimation_is_deterministic() -> None:
    truth = SignedPermutation.random(D, seed=17)
    a, b = gauged_pair("llama", truth, noise=0.5)
    x = align_models(a, b, batches(), progress=False)
    y = align_models(a, b, batches(), progress=False)
    assert x.gauge == y.gauge and np.array_equal(x.confidence, y.confidence) and x.report == y.report


def test_saved_gauge_carries_method_confidence_and_margin(tmp_path) -> None:
    from gaugeport.core.gauge import read_gauge_file

    truth = SignedPermutation.random(D, seed=18)
    res = align_models(*gauged_pair("llama", truth, 0.1), batches(), progress=False)
    f = read_gauge_file(res.save(tmp_path / "g.safetensors"))
    assert f.gauge == res.gauge
    assert f.provenance["method"] == "signed" and f.provenance["n_tokens"] == res.n_tokens
    assert f.provenance["min_confidence"] == pytest.approx(res.min_confidence)
    np.testing.assert_allclose(f.extras["confidence"], res.confidence, rtol=1e-6)
    np.testing.assert_allclose(f.extras["margin"], res.margin, rtol=1e-6, atol=1e-7)


def test_moment_methods_refuse_weights_and_unknown_names() -> None:
    a, b = gauged_pair("llama", SignedPermutation.identity(D))
    ms = collect_moments(a, b, batches(4, 8), progress=False)
    with pytest.raises(DataError, match="does not use activation moments"):
        align_from_moments(ms, "weights")
    with pytest.raises(DataError, match="unknown method"):
        align_models(a, b, batches(4, 8), method="magic", progress=False)


# ----------------------------------------------------------------------------- weights
@pytest.mark.parametrize("model_type", ["llama", "gemma", "gpt2"])
def test_weights_method_is_exact_when_b_is_unperturbed(model_type: str) -> None:
    truth = SignedPermutation.random(D, seed=19)
    truth = truth if model_type != "gpt2" else truth.perm_only()
    res = align_by_weights(*gauged_pair(model_type, truth))
    assert res.gauge == truth
    assert "embed_tokens" in res.report["weight_sources"]


def test_weights_method_uses_an_untied_lm_head_and_the_gains() -> None:
    res = align_by_weights(*gauged_pair("llama", SignedPermutation.random(D, seed=20)))
    assert res.report["weight_sources"] == ["embed_tokens", "lm_head", "gains[5]"]


def test_weights_method_reads_checkpoints_without_loading_models(tiny_dir, tmp_path, monkeypatch) -> None:
    from gaugeport.core.apply import apply_gauge_to_checkpoint

    truth = SignedPermutation.random(D, seed=21)
    src = tiny_dir("llama")
    apply_gauge_to_checkpoint(src, truth, tmp_path / "b", progress=False)

    def no_module(*_, **__):
        raise AssertionError("a model (torch.nn.Module) was built")

    monkeypatch.setattr(torch.nn.Module, "__init__", no_module)
    assert align_by_weights(src, tmp_path / "b").gauge == truth


def test_weights_method_refuses_different_vocabularies() -> None:
    a = tiny_model("llama", seed=0)
    b = tiny_model("llama", seed=0, vocab_size=120)
    with pytest.raises(DataError, match="vocabularies differ"):
        align_by_weights(a, b)


def test_weights_method_refuses_different_architectures() -> None:
    with pytest.raises(ArchitectureError, match="different architectures"):
        align_by_weights(tiny_model("llama"), tiny_model("qwen3"))


def test_align_models_with_weights_needs_no_batches() -> None:
    truth = SignedPermutation.random(D, seed=22)
    assert align_models(*gauged_pair("llama", truth), None, method="weights").gauge == truth
