"""``collect`` hands B's activations to the moments site by site (none kept for the whole forward pass):
the moments are exactly those of capturing both passes whole and then updating every site."""

from __future__ import annotations

import pytest
import torch

from gaugeport.core.apply import apply_gauge_to_checkpoint
from gaugeport.core.gauge import SignedPermutation
from gaugeport.core.stream import load_streamed
from gaugeport.estimate.activations import _Capture, collect_moments, d_model, resolve_sites, special_token_ids
from gaugeport.estimate.data import Batch
from gaugeport.estimate.moments import CrossMoments
from gaugeport.models.tiny import probe_ids


def _captured_whole(a: torch.nn.Module, b: torch.nn.Module, batches: list[torch.Tensor]) -> dict[str, CrossMoments]:
    """The previous procedure: both passes captured whole, then every site updated in site order."""
    sites = resolve_sites(a, None)
    d = d_model(a)
    moments = {s: CrossMoments(d, d, batch_dtype=torch.float32) for s in sites}
    specials = special_token_ids(a) | special_token_ids(b)
    with _Capture(a, sites) as cap_a, _Capture(b, sites) as cap_b:
        for ids in batches:
            batch = Batch.of(ids, specials)
            acts_a, acts_b = cap_a.run(a, batch), cap_b.run(b, batch)
            for s in sites:
                moments[s].update(acts_a[s], acts_b[s])
    return moments


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_collected_moments_equal_those_of_whole_captures_bit_for_bit(model_type, tiny_dir, tmp_path) -> None:
    a_path = tiny_dir(model_type)
    b_path = tmp_path / "b"
    gauge = SignedPermutation.random(32, seed=3) if model_type == "llama" else \
        SignedPermutation(SignedPermutation.random(32, seed=3).perm, -torch.ones(32).numpy())
    apply_gauge_to_checkpoint(a_path, gauge, b_path, progress=False)
    batches = list(probe_ids(96, n_seq=4, seq_len=8).split(2))
    ms = collect_moments(load_streamed(a_path), load_streamed(b_path), batches, progress=False)
    expected = _captured_whole(load_streamed(a_path), load_streamed(b_path), batches)
    assert list(ms.sites) == list(expected)
    for s, m in expected.items():
        got = ms.sites[s]
        assert got.count == m.count
        for field in ("mean_a", "mean_b", "m2_a", "m2_b", "comoment"):
            assert torch.equal(getattr(got, field), getattr(m, field)), (s, field)
