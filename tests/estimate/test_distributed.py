"""Distributed moment collection on Ray: shards merged exactly, never a silently partial sum.

Runs a real local Ray instance with 2 CPUs on two tiny saved checkpoints (B = a random gauge applied
to A). Ray start-up and worker imports dominate the time, so one instance serves the tests that
need a running cluster; the `--ray local` path starts (and stops) its own.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from hypothesis import given
from hypothesis import strategies as st

from gaugeport.core.apply import apply_gauge_to_checkpoint
from gaugeport.core.errors import DataError
from gaugeport.core.gauge import SignedPermutation
from gaugeport.core.verify import load_model
from gaugeport.estimate.activations import collect_moments
from gaugeport.estimate.distributed import (
    ClusterError,
    as_batches,
    collect_moments_distributed,
    data_digest,
    merge_shards,
    special_ids,
    split_shards,
)
from gaugeport.estimate.moments import MomentSet
from gaugeport.models.tiny import probe_ids

TOL = 1e-10  # float64 sums of O(1) activations over a few hundred tokens, merged in another order


@pytest.fixture(scope="module")
def pair(tiny_dir, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    a = tiny_dir("llama", 0)
    b = apply_gauge_to_checkpoint(a, SignedPermutation.random(32, seed=5),
                                  tmp_path_factory.mktemp("ray") / "b", progress=False)
    return a, b


@pytest.fixture(scope="module")
def batches() -> list:
    return [probe_ids(96, n_seq=3, seq_len=16, seed=s) for s in range(5)]  # 5 batches: uneven shards


@pytest.fixture(scope="module")
def reference(pair, batches):
    a, b = pair
    return collect_moments(load_model(a), load_model(b), batches, progress=False)


@pytest.fixture
def running_ray():
    """A 2-CPU local instance shared by the tests that need one (started once, shut down at the end)."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray


@pytest.fixture(scope="module", autouse=True)
def _stop_ray():
    yield
    if ray.is_initialized():
        ray.shutdown()


def dying_worker(shard_id: str, times: int, marker_dir: Path):
    """A stand-in for the Ray task body whose worker process exits abruptly (no exception, no cleanup:
    how an OOM kill looks to Ray) halfway through ``shard_id``, on its first ``times`` attempts. Attempts
    are counted with marker files, since each runs in a fresh process. A closure, so Ray ships it by value."""

    def collect_shard(path_a, path_b, batches, sites, sid):
        import os

        from gaugeport.estimate import distributed  # imported afresh in the worker: the real task body

        if sid == shard_id:
            attempt = len(list(marker_dir.glob("attempt*"))) + 1
            (marker_dir / f"attempt{attempt}").touch()
            if attempt <= times:
                distributed._collect_shard(path_a, path_b, batches[: len(batches) // 2], sites, sid)
                os._exit(17)
        return distributed._collect_shard(path_a, path_b, batches, sites, sid)

    return collect_shard


@pytest.fixture
def kill_worker(monkeypatch):
    """``kill_worker(shard_id, times, marker_dir)``: the next distributed collection's workers die as told."""
    from gaugeport.estimate import distributed

    def arm(shard_id: str, times: int, marker_dir: Path) -> None:
        monkeypatch.setattr(distributed, "_collect_shard", dying_worker(shard_id, times, marker_dir))

    return arm


def batches_of(pair, batches):
    return as_batches(batches, special_ids(pair[0]) | special_ids(pair[1]))


def assert_same_moments(got, want) -> None:
    assert got.n_tokens == want.n_tokens
    assert set(got.sites) == set(want.sites)
    for name, cm in want.sites.items():
        scale = max(1.0, float(np.abs(cm.cross).max()))
        np.testing.assert_allclose(got.sites[name].cross, cm.cross, rtol=0, atol=TOL * scale)
        np.testing.assert_allclose(got.sites[name].sumsq_a, cm.sumsq_a, rtol=TOL)
        np.testing.assert_allclose(got.sites[name].sum_b, cm.sum_b, rtol=0, atol=TOL * cm.count)


# ----------------------------------------------------------------------------- unreachable clusters
# (first in the file: they need Ray not yet initialised in this process)
def test_refused_address_fails_fast_with_a_hint():
    t0 = time.perf_counter()
    with pytest.raises(ClusterError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:1") as err:
        collect_moments_distributed_unreachable("127.0.0.1:1")
    assert time.perf_counter() - t0 < 5
    assert "ray start --head" in str(err.value)


def test_an_address_that_accepts_tcp_but_is_not_ray_times_out_instead_of_hanging():
    silent = socket.socket()  # the kernel completes the handshake; nobody ever answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    t0 = time.perf_counter()
    with silent, pytest.raises(ClusterError, match=r"no Ray cluster answered .* within 3 s"):
        collect_moments_distributed_unreachable(f"127.0.0.1:{silent.getsockname()[1]}", timeout=3)
    assert time.perf_counter() - t0 < 15


def test_auto_follows_ray_address_to_an_unreachable_cluster(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    with pytest.raises(ClusterError, match="127.0.0.1:1"):
        collect_moments_distributed_unreachable("auto")


def test_malformed_address_is_refused():
    with pytest.raises(ClusterError, match="not a Ray address"):
        collect_moments_distributed_unreachable("ray://host:port")


def test_cli_with_an_unreachable_cluster_exits_2_with_the_reason(pair, cli, tmp_path):
    ids = tmp_path / "ids.npy"
    np.save(ids, np.random.default_rng(0).integers(3, 96, size=(4, 16)))
    code, out, err = cli("collect", *map(str, pair), "--data", str(ids), "--tokens", "64", "--seq-len", "16",
                         "--out", tmp_path / "m.safetensors", "--ray", "127.0.0.1:1", "--quiet")
    assert code == 2
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in out + err
    assert not (tmp_path / "m.safetensors").exists()


def collect_moments_distributed_unreachable(address: str, timeout: float = 2.0):
    assert not ray.is_initialized()  # otherwise the open connection would be reused
    from gaugeport.estimate.distributed import connect

    return connect(address, workers=1, timeout_s=timeout)


# ----------------------------------------------------------------------------- with a cluster
def test_cli_collect_on_local_ray_writes_the_single_process_moments_and_stops_ray(pair, cli, tmp_path):
    ids = tmp_path / "ids.npy"
    np.save(ids, np.random.default_rng(0).integers(3, 96, size=(24, 16)))
    common = ["collect", *map(str, pair), "--data", str(ids), "--tokens", "320", "--batch-size", "4",
              "--seq-len", "16", "--quiet"]
    assert cli(*common, "--out", tmp_path / "one.safetensors")[0] == 0
    code, out, err = cli(*common, "--out", tmp_path / "ray.safetensors", "--ray", "local", "--workers", "2")
    assert code == 0, err
    assert not ray.is_initialized()  # `--ray local` cleans up after itself
    got, want = (MomentSet.load(tmp_path / f"{n}.safetensors") for n in ("ray", "one"))
    assert_same_moments(got, want)
    assert len(got.shard_ids) == 2 and all(s.endswith(("[0/2]", "[1/2]")) for s in got.shard_ids)


def test_worker_dying_mid_shard_is_retried_and_the_merge_stays_exact(pair, batches, reference, running_ray,
                                                                     kill_worker, tmp_path):
    kill_worker("run[1/2]", times=1, marker_dir=tmp_path)
    got = collect_moments_distributed(*pair, batches, None, "auto", 2, False, shard_id="run", max_retries=1)
    assert_same_moments(got, reference)
    assert len(list(tmp_path.glob("attempt*"))) == 2  # died once, ran again


def test_worker_dying_on_every_attempt_is_a_clear_error_naming_the_shard(pair, batches, running_ray,
                                                                         kill_worker, tmp_path):
    kill_worker("run[0/1]", times=9, marker_dir=tmp_path)
    with pytest.raises(DataError, match=r"shard run\[0/1\] \(batches 0\.\.4\) failed after 2 attempts"):
        collect_moments_distributed(*pair, batches, None, "auto", 1, False, shard_id="run", max_retries=1)


def test_an_error_inside_a_worker_names_the_shard(pair, running_ray):
    bad = [probe_ids(96, 2, 8, seed=1) + 1000]  # ids beyond the vocabulary: the worker's forward refuses
    with pytest.raises(DataError, match=r"shard run\[0/1\] \(batches 0\.\.0\).*out of range"):
        collect_moments_distributed(*pair, bad, None, "auto", 2, False, shard_id="run")


# ----------------------------------------------------------------------------- sharding and merging
@given(tokens=st.lists(st.integers(0, 500), min_size=1, max_size=60), workers=st.integers(1, 40))
def test_shards_cover_every_batch_once_in_order_with_balanced_sizes(tokens, workers):
    shards = split_shards(tokens, workers)
    assert len(shards) == min(len(tokens), workers)
    assert [s.start for s in shards] == [0, *[s.stop for s in shards[:-1]]]
    assert shards[-1].stop == len(tokens)
    sizes = [s.stop - s.start for s in shards]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    assert len({s.shard_id for s in shards}) == len(shards)
    assert [s.n_tokens for s in shards] == [sum(tokens[s.start:s.stop]) for s in shards]


@pytest.fixture(scope="module")
def shard_results(pair, batches):
    """Per-shard moments collected in-process, as the Ray tasks would return them."""
    a, b = pair
    items = batches_of(pair, batches)
    shards = split_shards([x.n_tokens for x in items], 3)
    ma, mb = load_model(a), load_model(b)
    results = {s.shard_id: collect_moments(ma, mb, items[s.start:s.stop], progress=False, shard_id=s.shard_id)
               for s in shards}
    return shards, results


def test_merge_of_in_process_shards_equals_one_pass(shard_results, reference):
    shards, results = shard_results
    assert_same_moments(merge_shards(results, shards), reference)


def test_merge_missing_a_shard_says_which(shard_results):
    shards, results = shard_results
    partial = {k: v for k, v in results.items() if k != shards[1].shard_id}
    with pytest.raises(DataError, match=re.escape(f"partial merge: missing shards ['{shards[1].shard_id}']")):
        merge_shards(partial, shards)


def test_merge_refuses_a_shard_with_fewer_tokens_than_it_was_given(shard_results):
    shards, results = shard_results
    short = type(shards[0])(shards[0].shard_id, shards[0].start, shards[0].stop, shards[0].n_tokens + 1)
    with pytest.raises(DataError, match="a partial shard"):
        merge_shards(results, [short, *shards[1:]])


def test_merge_refuses_moments_labelled_with_another_shard(shard_results):
    shards, results = shard_results
    swapped = {**results, shards[0].shard_id: results[shards[1].shard_id]}
    with pytest.raises(DataError, match="carries shard ids"):
        merge_shards(swapped, shards)


def test_shards_are_named_after_their_data_so_only_a_repeat_of_the_same_tokens_is_refused(pair, batches):
    items = batches_of(pair, batches)
    assert data_digest(items) == data_digest(batches_of(pair, batches))
    assert data_digest(items) != data_digest(batches_of(pair, batches[1:]))
    assert data_digest(items) != data_digest(batches_of(pair, [*batches[:-1], batches[-1].flip(1)]))
