"""Fingerprint version 2 (BLAKE3 over the canonical tensors, hashed on a helper thread) and the lazy
sort keys of the canonical pass.

- the fingerprint is exactly the documented hash of the canonical checkpoint's tensors, in name order;
- version 1 fingerprints (32 bare hex digits, SHA-256) are recognised as such and never compared
  with version 2 ones;
- an error on a helper thread (hash, write) surfaces as a clear error and leaves no output;
- lazily read key rows equal the rows of the full float copy they replace.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from gaugeport.core.checkpoint import Checkpoint
from gaugeport.core.errors import CheckpointError, GaugeportError
from gaugeport.core.fileio import SafetensorsStreamWriter
from gaugeport.provenance import canonical
from gaugeport.provenance.canonical import (
    FINGERPRINT_VERSION,
    _Rows,
    canonicalize,
    fingerprint,
    fingerprint_version,
    same_fingerprint,
)


def test_the_fingerprint_is_blake3_of_the_canonical_tensors_in_name_order(tiny_dir, tmp_path) -> None:
    src = tiny_dir("llama")
    canonicalize(src, tmp_path / "c", progress=False)
    c = Checkpoint.open(tmp_path / "c")
    h = blake3(f"gaugeport-fingerprint-v{FINGERPRINT_VERSION}:{c.model_type}".encode())
    for name in sorted(c.names):
        t = c.tensor(name).contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    want = "fp2-" + h.hexdigest(length=16)
    assert fingerprint(src)["fingerprint"] == want == fingerprint(tmp_path / "c")["fingerprint"]
    assert fingerprint(src)["version"] == "2"


def test_versions_are_told_apart_and_never_compared() -> None:
    v2a, v2b, v1 = "fp2-" + "0" * 32, "fp2-" + "a" * 32, "3f" * 16
    assert fingerprint_version(v2a) == "2" and fingerprint_version(v1) == "1"
    assert same_fingerprint(v2a, v2a) and not same_fingerprint(v2a, v2b)
    assert same_fingerprint(v1, v1)
    with pytest.raises(GaugeportError, match="version 2 .* version 1: they cannot be compared"):
        same_fingerprint(v2a, v1)
    for bad in ("", "fp2-" + "0" * 31, "fp3-" + "0" * 32, "0" * 64, "FP2-" + "0" * 32):
        with pytest.raises(GaugeportError, match="not a gaugeport fingerprint"):
            fingerprint_version(bad)


def test_a_failing_hash_on_the_helper_thread_is_raised(tiny_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = canonical._Hasher.__call__

    def broken(self, name, header, data):  # the third part of a canonical tensor handed to the hash
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("hash failed")
        real(self, name, header, data)

    monkeypatch.setattr(canonical._Hasher, "__call__", broken)
    with pytest.raises(RuntimeError, match="hash failed"):
        fingerprint(tiny_dir("llama"))


def test_a_failing_write_on_the_helper_thread_leaves_no_canonical_output(tiny_dir, tmp_path, disk_fills_at) -> None:
    disk_fills_at(SafetensorsStreamWriter, "write_part", 4)
    with pytest.raises(CheckpointError, match="no space left"):
        canonicalize(tiny_dir("llama"), tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists() and not (tmp_path / ".gaugeport-tmp").exists()


@st.composite
def _unit_views(draw):
    """A stored tensor, a strided unit-major view of it (the hidden axis first) and rows made of units."""
    n, a, b = draw(st.integers(1, 6)), draw(st.integers(1, 5)), draw(st.integers(1, 7))
    stored = torch.randn(a, n, b, generator=torch.Generator().manual_seed(draw(st.integers(0, 999))))
    stored = stored.to(draw(st.sampled_from([torch.bfloat16, torch.float16, torch.float32])))
    units = stored.movedim(1, 0)  # [n, a, b], not contiguous
    m = draw(st.integers(1, 3))
    idx = np.array(draw(st.lists(st.lists(st.integers(0, n - 1), min_size=m, max_size=m), min_size=1, max_size=5)))
    return units, idx


@settings(max_examples=80, deadline=None)
@given(_unit_views(), st.integers(1, 40))
def test_lazy_key_rows_equal_the_rows_of_the_full_copy(case, c) -> None:
    units, idx = case
    flat = units.float().numpy().astype(np.float64).reshape(units.shape[0], -1)
    want = np.concatenate([flat[idx[:, j]] for j in range(idx.shape[1])], axis=1)
    rows = _Rows(units, idx)
    assert rows.n == want.shape[0] and rows.width == want.shape[1]
    assert np.array_equal(rows.full(), want)
    assert np.array_equal(rows.lead(c), want[:, :c])
    sel = np.arange(rows.n)[::-1]
    assert np.array_equal(rows.select(sel).lead(c), want[sel, :c])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_groups_with_equal_key_value_heads_are_ordered_by_their_sorted_query_heads(tmp_path, seed) -> None:
    """Grouped-query attention where two groups' K/V blocks are equal: the group order falls to the query
    heads, each group's in its own sorted order; still one fingerprint for every gauged copy."""
    from safetensors.torch import save_file

    from gaugeport.core.fileio import read_safetensors
    from gaugeport.core.fullgauge import apply_full_gauge_to_checkpoint, random_full_gauge_for
    from gaugeport.models.synthetic import LlamaShape, write_synthetic_llama

    shape = LlamaShape(64, 176, 1, 8, 2, 300, shard_mb=8)  # 4 query heads per key/value head
    write_synthetic_llama(tmp_path / "a", shape, torch.float32, seed=seed)
    (file,) = (tmp_path / "a").glob("*.safetensors")
    tensors, meta = read_safetensors(file)
    for proj in ("k_proj", "v_proj"):
        w = tensors[f"model.layers.0.self_attn.{proj}.weight"]
        w[8:16] = w[0:8]  # head_dim 8: K/V head 1 equals head 0
    save_file(tensors, str(file), metadata=meta)
    apply_full_gauge_to_checkpoint(tmp_path / "a", random_full_gauge_for(tmp_path / "a", seed), tmp_path / "g",
                                   progress=False)
    assert fingerprint(tmp_path / "a")["fingerprint"] == fingerprint(tmp_path / "g")["fingerprint"]
