"""The library pipeline under `collect` / `align`: two checkpoint directories in, an Alignment or Chain out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gaugeport.core.apply import apply_gauge_to_checkpoint
from gaugeport.core.errors import GaugeportError
from gaugeport.core.gauge import SignedPermutation, read_gauge_file
from gaugeport.estimate.pipeline import DataOptions, align_checkpoints, align_checkpoints_via, collect_checkpoints

SMALL = DataOptions(tokens=512, seq_len=32)


@pytest.fixture(scope="module")
def pair(tiny_dir, tmp_path_factory) -> tuple[Path, Path, SignedPermutation]:
    a = tiny_dir("llama", 0)
    truth = SignedPermutation.random(32, seed=11)
    return a, apply_gauge_to_checkpoint(a, truth, tmp_path_factory.mktemp("pipe") / "b", progress=False), truth


def test_data_moments_and_weights_sources_recover_the_same_gauge(pair, tmp_path) -> None:
    a, b, truth = pair
    from_data = align_checkpoints(a, b, SMALL, progress=False)
    collect_checkpoints(a, b, SMALL, progress=False).save(tmp_path / "m.safetensors")
    from_file = align_checkpoints(a, b, [tmp_path / "m.safetensors"])
    from_weights = align_checkpoints(a, b, None, method="weights")
    for res in (from_data, from_file, from_weights):
        assert res.gauge == truth
        assert res.report["a"] == str(a) and res.report["b"] == str(b)
    assert from_data.report["data"] == "builtin" and from_weights.report["data"] == "weights"
    np.testing.assert_array_equal(from_data.confidence, from_file.confidence)  # same tokens, same moments


def test_the_saved_alignment_names_the_pair_and_the_data(pair, tmp_path) -> None:
    a, b, _ = pair
    align_checkpoints(a, b, None, method="weights").save(tmp_path / "g.safetensors")
    prov = read_gauge_file(tmp_path / "g.safetensors").provenance
    assert (prov["a"], prov["b"], prov["data"], prov["method"]) == (str(a), str(b), "weights", "weights")


def test_chain_save_writes_the_composed_gauge_and_the_hop_report(pair, tmp_path) -> None:
    a, b, truth = pair
    chain = align_checkpoints_via(a, [b], a, SMALL, progress=False)  # there and back: the identity
    assert chain.gauge == truth.inverse() @ truth
    chain.save(tmp_path / "g.safetensors", provenance={"n_tokens": SMALL.tokens})
    f = read_gauge_file(tmp_path / "g.safetensors")
    assert f.gauge == chain.gauge and f.provenance["method"] == "signed (chain)"
    assert len(f.provenance["chain"]["hops"]) == 2 and f.provenance["n_tokens"] == 512
    np.testing.assert_allclose(f.extras["confidence"], chain.confidence, rtol=1e-6)


@pytest.mark.parametrize(("source", "kwargs", "message"), [
    (None, {"method": "magic"}, "unknown method"),
    (SMALL, {"method": "weights"}, "uses no data"),
    (None, {"method": "weights", "backend": "ray"}, "collects none"),
    (SMALL, {"backend": "spark"}, "unknown backend"),
])
def test_contradictory_requests_are_refused(pair, source, kwargs, message) -> None:
    with pytest.raises(GaugeportError, match=message):
        align_checkpoints(pair[0], pair[1], source, progress=False, **kwargs)
