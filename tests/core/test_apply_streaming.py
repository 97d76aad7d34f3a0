"""Streaming apply at scale: a sharded checkpoint is rewritten with peak memory near its largest tensor.

The checkpoint is the benchmark's synthetic llama (real names and shapes, several shards and an
index), small enough for a test but with a whole model many times its largest tensor, so a
regression that holds a shard or the model in memory fails. Memory is read in a fresh subprocess
(its high-water mark above what it held before applying); the function is checked on logits.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from gaugeport.core.checkpoint import INDEX_FILE, Checkpoint
from gaugeport.core.gauge import SignedPermutation
from gaugeport.core.verify import load_model
from gaugeport.models.tiny import probe_ids

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_apply_memory.py"
# d, intermediate, blocks, heads, kv heads, vocab, shard MB: 12 blocks, the embedding is the largest tensor
SHAPE = (512, 1536, 12, 8, 2, 16384, 64)
SEED = 3


def _bench():
    spec = importlib.util.spec_from_file_location("bench_apply_memory", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory):
    bench = _bench()
    root = tmp_path_factory.mktemp("scale-apply")
    sizes = bench.write_checkpoint(root / "src", SHAPE, torch.float32, seed=0)
    memory = bench.run_child(root / "src", root / "out", SEED)
    return root / "src", root / "out", sizes, memory


def test_synthetic_checkpoint_is_sharded_and_many_times_its_largest_tensor(applied):
    src, _, sizes, _ = applied
    assert sizes["n_shards"] >= 3
    assert len(Checkpoint.open(src).shards) == sizes["n_shards"]
    assert (src / INDEX_FILE).is_file()
    assert sizes["total_bytes"] >= 6 * sizes["largest_tensor_bytes"]


def test_peak_memory_of_apply_stays_within_three_largest_tensors(applied):
    _, _, sizes, memory = applied
    above = memory["peak_rss_bytes"] - memory["baseline_bytes"]
    assert above < 3 * sizes["largest_tensor_bytes"], (above / 2**20, sizes["largest_tensor_bytes"] / 2**20)


def test_applied_sharded_checkpoint_computes_the_same_function(applied):
    src, out, _, _ = applied
    gauge = SignedPermutation.random(SHAPE[0], seed=SEED)
    assert Checkpoint.open(out).shards == Checkpoint.open(src).shards  # index and shard files kept
    ids = probe_ids(SHAPE[5], n_seq=2, seq_len=12, seed=0)
    with torch.no_grad():
        ref = load_model(src)(input_ids=ids).logits
        got = load_model(out)(input_ids=ids).logits
    assert (ref - got).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())
    assert gauge.fingerprint() == Checkpoint.open(out).shard_metadata(Checkpoint.open(out).shards[0])[
        "gaugeport_gauge"]
