"""Residual-stream sites from the architecture tables, and paired collection into moments."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from gaugeport.core.apply import apply_gauge_to_model
from gaugeport.core.archspec import supported_architectures
from gaugeport.core.errors import ArchitectureError, DataError
from gaugeport.core.gauge import SignedPermutation
from gaugeport.estimate.activations import (
    _Capture,
    available_sites,
    checkpoint_fingerprint,
    collect_moments,
    default_sites,
    model_fingerprint,
)
from gaugeport.estimate.data import Batch
from gaugeport.models.tiny import probe_ids, tiny_model


def ids(n_seq: int = 4, seq_len: int = 16, seed: int = 0) -> list[torch.Tensor]:
    return list(probe_ids(96, n_seq, seq_len, seed).split(2))


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    return tiny_model("llama", seed=0)


# ----------------------------------------------------------------------------- sites
@pytest.mark.parametrize("model_type", supported_architectures())
def test_every_architecture_exposes_uniform_sites_that_hold_its_stream(model_type: str) -> None:
    """resid_pre.L and embed are the hidden states transformers reports; aliases name the same tensor."""
    model = tiny_model(model_type, seed=0)
    sites = available_sites(model)
    assert sites[0] == "embed" and sites[-1] == "final" and "resid_post.1" in sites
    batch = Batch.of(probe_ids(96, 2, 8, 0))
    with _Capture(model, sites) as cap:
        got = cap.run(model, batch)
    with torch.no_grad():
        hidden = model(input_ids=batch.input_ids, output_hidden_states=True).hidden_states
    d = hidden[0].shape[-1]
    torch.testing.assert_close(got["embed"], hidden[0].reshape(-1, d))
    torch.testing.assert_close(got["resid_pre.1"], hidden[1].reshape(-1, d))
    torch.testing.assert_close(got["resid_post.0"], got["resid_pre.1"])
    torch.testing.assert_close(got["final"], got["resid_post.1"])


def test_mid_block_sites_exist_only_where_the_block_has_one() -> None:
    assert "resid_mid.0" in available_sites(tiny_model("llama"))
    assert not any(s.startswith("resid_mid") for s in available_sites(tiny_model("gpt_neox")))


def test_default_sites_are_the_distinct_streams(llama: torch.nn.Module) -> None:
    assert default_sites(llama) == ["embed", "resid_mid.0", "resid_post.0", "resid_mid.1", "resid_post.1"]


# ----------------------------------------------------------------------------- collection
def test_a_model_collected_against_itself_correlates_perfectly_on_the_diagonal(llama) -> None:
    ms = collect_moments(llama, llama, ids(), progress=False)
    for cm in ms.sites.values():
        np.testing.assert_allclose(np.diag(cm.correlation()), 1.0, atol=1e-5)


def test_special_tokens_do_not_enter_the_statistics(llama) -> None:
    batch = torch.tensor([[1, 5, 6, 7, 2, 0], [1, 8, 9, 2, 0, 0]])  # tiny configs: pad 0, bos 1, eos 2
    ms = collect_moments(llama, llama, [batch], progress=False)
    assert ms.n_tokens == 5


def test_collection_is_deterministic_and_records_identities(llama) -> None:
    other = copy.deepcopy(llama)
    apply_gauge_to_model(other, SignedPermutation.random(32, seed=1))
    x = collect_moments(llama, other, ids(), progress=False, shard_id="s")
    y = collect_moments(llama, other, ids(), progress=False, shard_id="s")
    for s in x.sites:
        assert torch.equal(x.sites[s].comoment, y.sites[s].comoment)
    assert x.model_a == model_fingerprint(llama) != x.model_b == model_fingerprint(other)
    assert x.shard_ids == ["s"] and x.info["model_type"] == "llama"


def test_a_loaded_model_and_its_checkpoint_share_a_fingerprint(tiny_dir) -> None:
    from gaugeport.core.verify import load_model

    for model_type in ("llama", "gemma"):  # untied and tied embeddings
        path = tiny_dir(model_type)
        assert model_fingerprint(load_model(path)) == checkpoint_fingerprint(path)
    assert checkpoint_fingerprint(tiny_dir("llama")) != checkpoint_fingerprint(tiny_dir("llama", 1))


def test_sites_can_be_restricted_and_expanded(llama) -> None:
    assert list(collect_moments(llama, llama, ids(), sites=["final"], progress=False).sites) == ["final"]
    assert len(collect_moments(llama, llama, ids(), sites=["all"], progress=False).sites) == 8


# ----------------------------------------------------------------------------- bad input
def test_width_mismatch_is_refused(llama) -> None:
    wide = tiny_model("llama", hidden_size=48, num_attention_heads=6, head_dim=8)
    with pytest.raises(DataError, match="width mismatch"):
        collect_moments(llama, wide, ids(), progress=False)


def test_different_architectures_are_refused(llama) -> None:
    with pytest.raises(ArchitectureError, match="different architectures"):
        collect_moments(llama, tiny_model("gpt2"), ids(), progress=False)


def test_nan_activations_are_refused_naming_model_and_site(llama) -> None:
    broken = copy.deepcopy(llama)
    with torch.no_grad():
        broken.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(DataError, match=r"model B produced NaN .* site resid_post\.1"):
        collect_moments(llama, broken, ids(), progress=False)


def test_empty_data_is_refused(llama) -> None:
    with pytest.raises(DataError, match="no data"):
        collect_moments(llama, llama, [], progress=False)
    with pytest.raises(DataError, match="no data"):
        collect_moments(llama, llama, [torch.tensor([[1, 2, 0]])], progress=False)  # specials only


def test_out_of_vocabulary_ids_are_refused(llama) -> None:
    with pytest.raises(DataError, match="out of range"):
        collect_moments(llama, llama, [torch.tensor([[5, 96]])], progress=False)


def test_unknown_sites_are_refused_listing_the_available_ones(llama) -> None:
    with pytest.raises(DataError, match="unknown site name") as exc:
        collect_moments(llama, llama, ids(), sites=["resid_middle.0"], progress=False)
    assert "resid_post.1" in exc.value.hint
    with pytest.raises(DataError, match="not in this model"):
        collect_moments(llama, llama, ids(), sites=["resid_post.7"], progress=False)
