"""canonicalize / fingerprint in one streaming pass: each tensor read once, sort keys decided on a few
leading columns, and the same order, signs and ties as sorting on everything."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gaugeport.core.checkpoint import Checkpoint
from gaugeport.core.fullgauge import apply_full_gauge_to_checkpoint, random_full_gauge_for
from gaugeport.provenance import canonical
from gaugeport.provenance.canonical import canonical_gauge, canonicalize, fingerprint


def _full_lexsort(keys):
    mat = np.concatenate([k.reshape(k.shape[0], -1).astype(np.float64) for k in keys], axis=1)
    order = np.lexsort(mat.T[::-1])
    s = mat[order]
    same = np.all(s[1:] == s[:-1], axis=1)
    groups = int(np.sum(same & ~np.concatenate([[False], same[:-1]]))) if same.size else 0
    return order, groups


@st.composite
def _keys_with_leading_ties(draw):
    """Rows whose leading columns repeat a few patterns (so the first 16 columns often tie) and whose
    later columns may or may not break the tie."""
    n = draw(st.integers(2, 30))
    lead = draw(st.integers(1, 20))
    pool = draw(arrays(np.float32, (draw(st.integers(1, 4)), lead), elements=st.integers(-2, 2).map(float)))
    rows = pool[draw(arrays(np.int64, n, elements=st.integers(0, pool.shape[0] - 1)))]
    tail = draw(arrays(np.float32, (n, draw(st.integers(0, 6))), elements=st.integers(-1, 1).map(float)))
    mat = np.concatenate([rows, tail], axis=1)
    cuts = sorted(draw(st.lists(st.integers(1, mat.shape[1] - 1), max_size=2, unique=True))) \
        if mat.shape[1] > 1 else []
    return np.split(mat, cuts, axis=1)


@settings(max_examples=80, deadline=None)
@given(_keys_with_leading_ties())
def test_prefix_sort_is_the_full_lexicographic_sort(keys):
    order, groups = canonical._lexsort_rows(keys)
    full_order, full_groups = _full_lexsort(keys)
    mat = np.concatenate(keys, axis=1)
    assert groups == full_groups
    assert np.array_equal(mat[order], mat[full_order])  # the same sequence of rows (equal rows may swap)


def test_fingerprint_reads_every_matrix_once(tiny_dir, monkeypatch):
    """One pass: every matrix is read once (norm gains, d values each, are read again for the residual keys)."""
    path = tiny_dir("llama")
    from gaugeport.core.checkpoint import ShardReader

    reads: list[str] = []

    def counted(real):
        def counting(self, name, **kw):
            t = real(self, name, **kw)
            if t.ndim >= 2:
                reads.append(name)
            return t
        return counting

    monkeypatch.setattr(ShardReader, "read", counted(ShardReader.read))  # read whole into a buffer
    monkeypatch.setattr(ShardReader, "map", counted(ShardReader.map))  # the file's pages mapped (none fall back here)
    fingerprint(path)
    ckpt = Checkpoint.open(path)
    assert sorted(reads) == sorted(n for n in ckpt.names if ckpt.tensor(n).ndim >= 2)


@pytest.mark.parametrize("later", [1.0, -1.0])
def test_leading_rows_that_tie_fall_back_to_the_whole_embedding(tiny_dir, tmp_path, later):
    """Coordinates 3 and 7: equal gains everywhere and equal in the embedding's first 20 rows; row 20
    orders them (one way or the other). The streamed keys must read on: the same gauge as reading
    every tensor whole, and still gauge-invariant."""
    from gaugeport.core.verify import load_model

    m = load_model(tiny_dir("llama"))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p[7] = p[3]
        e = m.model.embed_tokens.weight
        e[:20, 7] = e[:20, 3]
        e[20, 7] = e[20, 3] + later
    m.save_pretrained(tmp_path / "tied")
    ckpt = Checkpoint.open(tmp_path / "tied")
    streamed = canonical_gauge(ckpt)
    whole = canonical_gauge(ckpt, get=ckpt.tensor)  # a caller's getter: every tensor read whole
    assert streamed.gauge.residual == whole.gauge.residual
    assert streamed.ties == whole.ties and streamed.ties["residual_gain_tie_groups"] == 1
    apply_full_gauge_to_checkpoint(tmp_path / "tied", random_full_gauge_for(tmp_path / "tied", 3), tmp_path / "g",
                                   progress=False)
    assert fingerprint(tmp_path / "g")["fingerprint"] == fingerprint(tmp_path / "tied")["fingerprint"]


def test_canonicalize_stamps_the_fingerprint_in_every_shard(tmp_path):
    from gaugeport.models.tiny import tiny_model

    tiny_model("llama", num_hidden_layers=3).save_pretrained(tmp_path / "src", max_shard_size="20KB")
    src = Checkpoint.open(tmp_path / "src")
    assert len(src.shards) > 2
    canonicalize(tmp_path / "src", tmp_path / "c", progress=False)
    fp = fingerprint(tmp_path / "src")["fingerprint"]
    out = Checkpoint.open(tmp_path / "c")
    assert out.shards == src.shards
    assert all(out.shard_metadata(s)["gaugeport_fingerprint"] == fp for s in out.shards)
    assert fingerprint(tmp_path / "c")["fingerprint"] == fp
