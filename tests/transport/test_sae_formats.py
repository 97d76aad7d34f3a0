"""SAE formats beyond SAELens: sparsify, dictionary_learning, Gemma Scope, in-memory objects.

Each transported SAE is loaded back with its own library (sparsify, SAELens) and, on an exact gauge,
computes on B's activations (``G x``) the features it computed on A's (``x``), and reconstructions in
B's coordinates. dictionary_learning cannot be installed in this environment (it pins nnsight<0.4,
which replaces torch): its state dicts are built here with the library's names and shapes, its
encode/decode formulas are restated, and the library itself round-trips the files in `make interop`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from sparsify import SparseCoder, SparseCoderConfig

from gaugeport.core.errors import ArtifactError, GaugeGroupError
from gaugeport.core.gauge import SignedPermutation, save_gauge
from gaugeport.transport.detect import detect_kind, transport_artifact
from gaugeport.transport.sae_formats import detect_sae_format, transport_sae_object

D, F = 16, 40
TOL = 1e-5


@pytest.fixture(scope="module")
def g() -> SignedPermutation:
    return SignedPermutation.random(D, seed=3)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(64, D, generator=torch.Generator().manual_seed(0))


def gx(g: SignedPermutation, x: torch.Tensor) -> torch.Tensor:
    return g.apply(x, axis=-1)


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.4)
    return module


# ----------------------------------------------------------------------------- sparsify
def sparse_coder(seed: int = 0, **cfg) -> SparseCoder:
    return randomize(SparseCoder(D, SparseCoderConfig(num_latents=F, k=6, **cfg)), seed)


def sparsify_features(sae: SparseCoder, x: torch.Tensor) -> torch.Tensor:
    """Dense (tokens x latents) top-k activations, so features compare index by index."""
    out = sae.encode(x)
    return torch.zeros(x.shape[0], sae.num_latents).scatter(1, out.top_indices, out.top_acts)


@pytest.mark.parametrize("cfg", [{}, {"skip_connection": True}, {"transcode": True, "skip_connection": True}],
                         ids=["sae", "skip", "transcoder"])
def test_sparsify_round_trip_through_sparsify(tmp_path: Path, g: SignedPermutation, x: torch.Tensor,
                                              cfg: dict) -> None:
    sae = sparse_coder(**cfg)
    run = tmp_path / "run"
    sae.save_to_disk(run / "layers.1")  # a training run's root: one directory per hookpoint
    sae.save_to_disk(run / "layers.1.mlp")
    (run / "config.json").write_text(json.dumps({"model": "tiny"}))
    assert detect_kind(run) == "sae" and detect_sae_format(run) == "sparsify"
    out = transport_artifact(run, g, tmp_path / "out")
    assert json.loads((out / "config.json").read_text()) == {"model": "tiny"}
    for hookpoint, site in (("layers.1", "resid_post.1"), ("layers.1.mlp", None)):
        back = SparseCoder.load_from_disk(out / hookpoint)
        torch.testing.assert_close(sparsify_features(back, gx(g, x)), sparsify_features(sae, x), atol=TOL, rtol=0)
        y, y2 = sae(x), back(gx(g, x))
        torch.testing.assert_close(y2.sae_out, gx(g, y.sae_out), atol=TOL, rtol=0)
        assert json.loads((out / hookpoint / "cfg.json").read_text()) == json.loads(
            (run / hookpoint / "cfg.json").read_text())  # sparsify warns about unknown cfg keys: none added
        with safe_open(str(out / hookpoint / "sae.safetensors"), "pt") as f:
            stamp = f.metadata()
        assert stamp["gaugeport_gauge"] == g.fingerprint() and stamp["gaugeport_hookpoint"] == hookpoint
        assert stamp.get("gaugeport_site") == site


def test_sparsify_permutation_only_breaks_the_features(tmp_path: Path, g: SignedPermutation,
                                                       x: torch.Tensor) -> None:
    """The test above can fail: the S_d baseline (signs dropped) changes the features."""
    sae = sparse_coder()
    sae.save_to_disk(tmp_path / "layers.0")
    out = transport_artifact(tmp_path / "layers.0", g, tmp_path / "out", perm_only=True)
    back = SparseCoder.load_from_disk(out)
    assert (sparsify_features(back, gx(g, x)) - sparsify_features(sae, x)).abs().max() > 0.1


def test_sparsify_refuses_an_off_stream_hookpoint_and_unknown_tensors(tmp_path: Path, g: SignedPermutation) -> None:
    sae = sparse_coder()
    sae.save_to_disk(tmp_path / "layers.0.mlp.act_fn")
    with pytest.raises(ArtifactError, match="not stream-shaped"):
        transport_artifact(tmp_path / "layers.0.mlp.act_fn", g, tmp_path / "o1")
    sae.save_to_disk(tmp_path / "layers.2")
    from safetensors.torch import save_file

    save_file({"encoder.weight": torch.zeros(F, D), "mystery": torch.zeros(D)}, str(tmp_path / "layers.2" /
                                                                                     "sae.safetensors"))
    with pytest.raises(ArtifactError, match="mystery"):
        transport_artifact(tmp_path / "layers.2", g, tmp_path / "o2")


# ----------------------------------------------------------------------------- in memory
def test_in_memory_sparsify_and_sae_lens_objects_come_back_as_the_same_type(g: SignedPermutation,
                                                                             x: torch.Tensor) -> None:
    from sae_lens.saes import StandardSAE, StandardSAEConfig

    sae = sparse_coder(seed=1)
    back = transport_sae_object(sae, g)
    assert type(back) is type(sae) and back is not sae
    torch.testing.assert_close(sparsify_features(back, gx(g, x)), sparsify_features(sae, x), atol=TOL, rtol=0)

    lens = randomize(StandardSAE(StandardSAEConfig(d_in=D, d_sae=F)), 2)
    moved = transport_sae_object(lens, g)
    assert type(moved) is StandardSAE
    torch.testing.assert_close(moved.encode(gx(g, x)), lens.encode(x), atol=TOL, rtol=0)
    torch.testing.assert_close(moved.decode(lens.encode(x)), gx(g, lens.decode(lens.encode(x))), atol=TOL, rtol=0)


def test_in_memory_sae_lens_layer_norm_refuses_per_coordinate_signs(g: SignedPermutation) -> None:
    from sae_lens.saes import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=D, d_sae=F, normalize_activations="layer_norm"))
    with pytest.raises(GaugeGroupError, match="LayerNorm"):
        transport_sae_object(sae, g)
    transport_sae_object(sae, g, perm_only=True)  # a permutation keeps the mean: allowed


# ----------------------------------------------------------------------------- Gemma Scope
def gemma_scope_params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"W_enc": rng.normal(0, 0.4, (D, F)).astype(np.float32), "W_dec": rng.normal(0, 0.4, (F, D)).astype(
        np.float32), "b_enc": rng.normal(0, 0.1, F).astype(np.float32), "b_dec": rng.normal(0, 0.3, D).astype(
        np.float32), "threshold": rng.uniform(0.0, 0.3, F).astype(np.float32)}


def sae_lens_from_gemma_scope(path: Path):
    """What SAELens' Gemma Scope loader does with params.npz: its keys are a JumpReLU SAE's state dict."""
    from sae_lens.saes import JumpReLUSAE, JumpReLUSAEConfig

    with np.load(path) as data:
        state = {k: torch.from_numpy(data[k]) for k in data.files}
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=D, d_sae=F))
    sae.load_state_dict(state)
    return sae


def test_gemma_scope_params_round_trip_through_sae_lens(tmp_path: Path, g: SignedPermutation,
                                                        x: torch.Tensor) -> None:
    src = tmp_path / "layer_1" / "width_16k" / "average_l0_8"
    src.mkdir(parents=True)
    np.savez(src / "params.npz", **gemma_scope_params())
    assert detect_kind(src / "params.npz") == "sae" and detect_kind(src) == "sae"
    out = transport_artifact(src / "params.npz", g, tmp_path / "moved.npz")
    a, b = sae_lens_from_gemma_scope(src / "params.npz"), sae_lens_from_gemma_scope(out)
    fa = a.encode(x)
    assert (fa > 0).float().mean() > 0.1  # features fire: the comparison is not of zeros
    torch.testing.assert_close(b.encode(gx(g, x)), fa, atol=TOL, rtol=0)
    torch.testing.assert_close(b.decode(fa), gx(g, a.decode(fa)), atol=TOL, rtol=0)
    with np.load(out) as data:
        assert sorted(data.files) == sorted(gemma_scope_params()) and data["W_enc"].dtype == np.float32
    transport_artifact(src, g, tmp_path / "moved_dir")  # the directory form
    assert (tmp_path / "moved_dir" / "params.npz").is_file()


# ----------------------------------------------------------------------------- dictionary_learning
def dl_state(variant: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """State dicts with dictionary_learning's names and shapes (nn.Linear weights are out x in)."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * 0.4

    if variant == "AutoEncoder":
        return {"bias": r(D), "encoder.weight": r(F, D), "encoder.bias": r(F), "decoder.weight": r(D, F)}
    if variant == "JumpReluAutoEncoder":
        return {"W_enc": r(D, F), "b_enc": r(F), "W_dec": r(F, D), "b_dec": r(D), "threshold": r(F).abs() * 0.2}
    if variant == "BatchTopKSAE":
        return {"k": torch.tensor(6, dtype=torch.int), "threshold": torch.tensor(0.05), "decoder.weight": r(D, F),
                "encoder.weight": r(F, D), "encoder.bias": r(F), "b_dec": r(D)}
    raise AssertionError(variant)


def dl_encode_decode(variant: str, s: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The library's encode / decode (dictionary.py, trainers/batch_top_k.py), restated."""
    if variant == "AutoEncoder":
        f = torch.relu((x - s["bias"]) @ s["encoder.weight"].T + s["encoder.bias"])
        return f, f @ s["decoder.weight"].T + s["bias"]
    if variant == "JumpReluAutoEncoder":
        pre = x @ s["W_enc"] + s["b_enc"]
        f = torch.relu(pre) * (pre > s["threshold"])
        return f, f @ s["W_dec"] + s["b_dec"]
    post = torch.relu((x - s["b_dec"]) @ s["encoder.weight"].T + s["encoder.bias"])
    f = post * (post > s["threshold"])
    return f, f @ s["decoder.weight"].T + s["b_dec"]


@pytest.mark.parametrize("variant", ["AutoEncoder", "JumpReluAutoEncoder", "BatchTopKSAE"])
def test_dictionary_learning_state_dicts(tmp_path: Path, g: SignedPermutation, x: torch.Tensor, variant: str) -> None:
    state = dl_state(variant)
    run = tmp_path / "trainer_0"
    run.mkdir()
    torch.save(state, run / "ae.pt")
    (run / "config.json").write_text(json.dumps({"trainer": {"dict_class": variant, "layer": 1}}))
    assert detect_kind(run / "ae.pt") == "sae" and detect_kind(run) == "sae"
    out = transport_artifact(run, g, tmp_path / "out")
    moved = torch.load(out / "ae.pt", weights_only=True)
    assert set(moved) == set(state)
    f, y = dl_encode_decode(variant, state, x)
    f2, y2 = dl_encode_decode(variant, moved, gx(g, x))
    assert (f > 0).float().mean() > 0.05
    torch.testing.assert_close(f2, f, atol=TOL, rtol=0)
    torch.testing.assert_close(y2, gx(g, y), atol=TOL, rtol=0)
    assert json.loads((out / "config.json").read_text())["gaugeport"]["gaugeport_gauge"] == g.fingerprint()
    single = transport_artifact(run / "ae.pt", g, tmp_path / "single.pt")  # the bare file
    assert torch.equal(torch.load(single, weights_only=True)["b_dec" if "b_dec" in state else "bias"],
                       moved["b_dec" if "b_dec" in state else "bias"])


def test_a_plain_steering_vector_pt_is_still_a_vector(tmp_path: Path) -> None:
    torch.save({0: torch.zeros(D), 1: torch.ones(D)}, tmp_path / "v.pt")
    assert detect_kind(tmp_path / "v.pt") == "vector"


def test_sae_format_option_forces_the_format(tmp_path: Path, cli, g: SignedPermutation) -> None:
    torch.save(dl_state("AutoEncoder"), tmp_path / "ae.pt")
    save_gauge(g, tmp_path / "g.gauge")
    code, _, err = cli("transport", tmp_path / "ae.pt", "--gauge", tmp_path / "g.gauge", "--out",
                       tmp_path / "o.pt", "--sae-format", "gemma-scope")
    assert code == 2 and "looks like a dictionary-learning SAE" in err
    code, out, _ = cli("transport", tmp_path / "ae.pt", "--gauge", tmp_path / "g.gauge", "--out",
                       tmp_path / "o.pt", "--sae-format", "dictionary-learning")
    assert code == 0 and (tmp_path / "o.pt").is_file()


# ----------------------------------------------------------------------------- site names
@pytest.mark.parametrize(("name", "site"), [
    ("blocks.3.hook_resid_pre", "resid_pre.3"), ("blocks.3.hook_resid_mid", "resid_mid.3"),
    ("blocks.3.hook_resid_post", "resid_post.3"), ("hook_embed", "embed"), ("ln_final.hook_normalized", "final"),
    ("model.layers.3", "resid_post.3"), ("model.layers[3].output", "resid_post.3"), ("layers.3", "resid_post.3"),
    ("model.layers.3.input", "resid_pre.3"), ("model.embed_tokens", "embed"), ("model.norm.input", "final"),
    ("transformer.h.2", "resid_post.2"), ("resid_post.3", "resid_post.3"),
])
def test_transformer_lens_and_module_names_map_to_sites_and_back(name: str, site: str) -> None:
    from gaugeport.transport.sites import canonical_site, site_to_hook, site_to_module

    assert canonical_site(name) == site
    assert canonical_site(site_to_hook(site)) == site  # both ways
    if not site.startswith("resid_mid"):
        assert canonical_site(site_to_module(site)) == site


@pytest.mark.parametrize(("name", "status"), [
    ("layers.6.mlp", "stream"), ("model.layers.6.self_attn.o_proj", "stream"), ("layers.6.post_attention_layernorm",
                                                                                   "stream"),
    ("layers.6.mlp.up_proj", "off-stream"), ("model.layers.6.self_attn.q_proj", "off-stream"),
    ("blocks.6.attn.hook_z", "off-stream"), ("blocks.6.hook_mlp_out", "stream"),
])
def test_stream_status_of_module_paths_and_hooks(name: str, status: str) -> None:
    from gaugeport.transport.sites import stream_hook_status

    assert stream_hook_status(name) == status


def test_collection_accepts_transformer_lens_and_module_site_names() -> None:
    from gaugeport.estimate.activations import resolve_sites
    from gaugeport.models.tiny import tiny_model

    model = tiny_model("llama", seed=0)
    assert resolve_sites(model, ["blocks.0.hook_resid_post", "model.layers.1", "hook_embed"]) == [
        "resid_post.0", "resid_post.1", "embed"]
