"""Collect activation moments on a Ray cluster: one task per worker slot, merged exactly by the driver.

The batches are split into contiguous shards, one per worker. Each Ray task loads both checkpoints
*from their paths* (so nothing model-sized travels through the object store), moves them to a GPU
when Ray gave the task one, runs the paired forward passes with `collect_moments` and returns its
`MomentSet` (float64 sums, token count, its shard id). The driver merges the shards in shard order
(so the result does not depend on which task finished first) and refuses to return a partial sum:
every shard id must be present exactly once and the token counts must add up.

Failures: a worker process that dies mid-shard (OOM killer, lost node, segfault) is retried
``max_retries`` times by Ray; an exception raised by the collection itself (bad data, NaN
activations) is deterministic and is reported at once. Either way the error names the shard and its
batches. A cluster address that cannot be reached fails within ``connect_timeout_s`` (and within
5 s when nothing listens there at all).

Where it runs (``address``):

- ``"local"``: starts a private Ray instance on this machine with ``num_cpus=workers`` (GPUs are
  detected by Ray) and shuts it down afterwards.
- an existing cluster: start one with ``ray start --head`` on the head node (and
  ``ray start --address=HEAD_IP:6379`` on the others), then pass ``"auto"`` (on a cluster node: finds
  the running cluster through ``RAY_ADDRESS`` or Ray's session file), ``"HEAD_IP:6379"``, or
  ``"ray://HEAD_IP:10001"`` (Ray Client, from outside the cluster; ``pip install 'gaugeport[ray]'`` has it).
  CLI: ``gaugeport collect A B --data ... --out M.safetensors --ray auto --workers 8``.
  Clusters with token authentication (the default of recent Ray versions) also need
  ``RAY_AUTH_MODE=token`` and the cluster's token (``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``).
  Every node needs the same gaugeport version installed, and must be able to read both checkpoints
  at the paths given: the workers open them, so use a shared filesystem (or copies at identical
  paths on every node). Each task asks for one CPU, and one GPU when the cluster has at least one
  GPU per worker (a fraction of one otherwise).

If ``ray.init`` was already called in this process, that connection is used as is (and left open).
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gaugeport.core.errors import DataError, GaugeportError

if TYPE_CHECKING:
    from gaugeport.estimate.data import Batch
    from gaugeport.estimate.moments import MomentSet

DEFAULT_CONNECT_TIMEOUT_S = 30.0  # whole handshake, including the probe process importing Ray
TCP_TIMEOUT_S = 5.0
RAY_CLIENT_PORT = 10001
RAY_GCS_PORT = 6379


class ClusterError(GaugeportError, ConnectionError):
    """The Ray cluster cannot be reached or started."""

    __str__ = GaugeportError.__str__


@dataclass(frozen=True)
class Shard:
    """A contiguous slice ``[start, stop)`` of the batch list, collected by one Ray task."""

    shard_id: str
    start: int
    stop: int
    n_tokens: int  # counted positions (padding and special tokens excluded)

    def describe(self) -> str:
        return f"shard {self.shard_id} (batches {self.start}..{self.stop - 1})"


# ---------------------------------------------------------------------- public entry point
def collect_moments_distributed(
    path_a: str | Path,
    path_b: str | Path,
    batches: Iterable[Any],
    sites: Sequence[str] | None = None,
    address: str = "local",
    workers: int = 2,
    progress: bool = True,
    *,
    shard_id: str | None = None,
    max_retries: int = 2,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> MomentSet:
    """Paired moments of checkpoints ``path_a`` / ``path_b`` over ``batches``, collected by ``workers``
    Ray tasks and merged exactly; equal (to float64 rounding) to one `collect_moments` pass.

    The shards are named ``{shard_id}[k/n]``; by default ``shard_id`` is ``ray-`` plus a hash of the
    tokens, so two runs over different data merge later (``gaugeport align --moments M1 M2``) and two
    runs over the same data are refused as double counting. ``max_retries``: how often Ray re-runs a
    shard whose worker died. ``connect_timeout_s``: deadline for reaching a cluster."""
    if workers < 1:
        raise GaugeportError(f"--workers must be at least 1, got {workers}")
    # Coerce here, with both configs' special ids masked, so the driver knows each shard's token count
    # (a worker that returns fewer tokens is caught) and the workers get ready Batch objects.
    batches = as_batches(batches, special_ids(path_a) | special_ids(path_b))
    if not batches:
        raise DataError("no batches to collect moments from", hint="check --data / --tokens")
    shards = split_shards([b.n_tokens for b in batches], workers, shard_id or f"ray-{data_digest(batches)}")
    ray, started = connect(address, workers, connect_timeout_s)
    try:
        results = _run_shards(ray, str(path_a), str(path_b), batches, sites, shards, max_retries, progress)
    finally:
        if started:
            ray.shutdown()
    return merge_shards(results, shards)


def split_shards(tokens_per_batch: Sequence[int], workers: int, base: str = "ray") -> list[Shard]:
    """``min(workers, n_batches)`` contiguous shards whose sizes differ by at most one batch, named
    ``{base}[k/n]``."""
    n_batches = len(tokens_per_batch)
    n = min(workers, n_batches)
    bounds = [n_batches * k // n for k in range(n + 1)]
    return [Shard(f"{base}[{k}/{n}]", lo, hi, int(sum(tokens_per_batch[lo:hi])))
            for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))]


def data_digest(batches: Sequence[Batch]) -> str:
    """A short hash of the token ids and masks: names the shards after their data, so moments of the
    same tokens collected twice are refused when merged, and moments of different tokens are not."""
    h = hashlib.sha256()
    for b in batches:
        for t in (b.input_ids, b.token_mask):
            h.update(str(tuple(t.shape)).encode() + t.contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def special_ids(path: str | Path) -> set[int]:
    """pad / bos / eos ids of a checkpoint's config (what `collect_moments` masks out)."""
    from types import SimpleNamespace

    import transformers

    from gaugeport.core.checkpoint import Checkpoint
    from gaugeport.estimate.activations import special_token_ids

    Checkpoint.open(path)  # a missing or unreadable checkpoint fails here, not in every worker
    config = transformers.AutoConfig.from_pretrained(str(path))
    return special_token_ids(SimpleNamespace(config=config))  # type: ignore[arg-type]


def as_batches(batches: Iterable[Any], specials: set[int]) -> list[Batch]:
    from gaugeport.estimate.data import Batch

    return [Batch.of(b, specials) for b in batches]


def merge_shards(results: dict[str, MomentSet], shards: Sequence[Shard]) -> MomentSet:
    """Merge per-shard moments in shard order; refuse a missing, extra or mislabelled shard."""
    expected = [s.shard_id for s in shards]
    missing = [sid for sid in expected if sid not in results]
    extra = sorted(set(results) - set(expected))
    if missing or extra:
        raise DataError(
            f"refusing a partial merge: missing shards {missing or 'none'}, "
            f"unexpected shards {extra or 'none'}",
            hint="every shard must be collected exactly once; re-run the collection",
        )
    for shard in shards:
        got, sid = results[shard.shard_id], shard.shard_id
        if list(got.shard_ids) != [sid]:
            raise DataError(f"the result returned for shard {sid} carries shard ids {list(got.shard_ids)}",
                            hint="a worker returned moments of another shard; re-run the collection")
        if got.n_tokens != shard.n_tokens:
            raise DataError(f"{shard.describe()} returned moments of {got.n_tokens} tokens, "
                            f"expected {shard.n_tokens}: a partial shard",
                            hint="re-run the collection; check the workers' logs")
    merged = results[expected[0]]
    for sid in expected[1:]:
        merged = merged.merge(results[sid])
    if sorted(merged.shard_ids) != sorted(expected):
        raise DataError(f"merged moments carry shards {sorted(merged.shard_ids)}, "
                        f"expected {sorted(expected)}")
    total = sum(results[sid].n_tokens for sid in expected)
    if merged.n_tokens != total:
        raise DataError(f"merged moments count {merged.n_tokens} tokens but the shards sum to {total}")
    return merged


# ---------------------------------------------------------------------- connecting
def connect(address: str, workers: int, timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> tuple[Any, bool]:
    """Import Ray and connect; returns (ray module, whether this call started Ray and must stop it)."""
    from gaugeport.core.errors import require

    ray: Any = require("ray", "ray", "collecting with Ray (--ray)")
    if ray.is_initialized():
        return ray, False
    if address == "local":
        try:
            ray.init(num_cpus=workers, **_QUIET)
        except Exception as exc:
            raise ClusterError(f"could not start a local Ray instance: {exc}",
                               hint="check `ray status`; stop stale instances with `ray stop`") from exc
        return ray, True
    target = resolve_address(address)
    probe_tcp(*split_host_port(target), min(timeout_s, TCP_TIMEOUT_S), address)
    probe_ray(target, timeout_s, address)
    try:
        ray.init(address=target, **_QUIET)
    except Exception as exc:
        raise ClusterError(f"cannot connect to Ray at {address}: {exc}", hint=_CLUSTER_HINT) from exc
    return ray, True


_QUIET = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
_CLUSTER_HINT = ("start a cluster with `ray start --head` and pass --ray auto (on a node), "
                 "--ray HEAD_IP:6379 or --ray ray://HEAD_IP:10001; "
                 "or use --ray local for a private instance on this machine")


def resolve_address(address: str) -> str:
    """``host:port`` or ``ray://host:port`` for ``auto``, ``host[:port]`` or ``ray://host[:port]``."""
    if address == "auto":
        found = os.environ.get("RAY_ADDRESS") or _ray_session_address()
        if not found or found in ("auto", "local"):
            raise ClusterError("--ray auto found no running Ray cluster "
                               "(no RAY_ADDRESS, no Ray session on this node)", hint=_CLUSTER_HINT)
        address = found
    client = address.startswith("ray://")
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep:
        host, port = rest, str(RAY_CLIENT_PORT if client else RAY_GCS_PORT)
    if not host or not port.isdigit() or "/" in host:
        raise ClusterError(f"not a Ray address: {address!r}", hint=_CLUSTER_HINT)
    return f"{'ray://' if client else ''}{host}:{port}"


def split_host_port(target: str) -> tuple[str, int]:
    host, _, port = target.removeprefix("ray://").rpartition(":")
    return host, int(port)


def _ray_session_address() -> str | None:
    """The running cluster's address from Ray's session file (what `ray.init("auto")` would use)."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address("auto")
    except Exception:  # private API moved, or the session file points nowhere: treat as not found
        return None


def probe_tcp(host: str, port: int, timeout_s: float, address: str) -> None:
    """Fail fast when nothing listens: Ray itself retries an unreachable address for minutes."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address} ({host}:{port}): {exc}",
                           hint=_CLUSTER_HINT) from exc


def probe_ray(target: str, timeout_s: float, address: str) -> None:
    """Connect once from a child process that can be killed: something that accepts TCP but does
    not speak Ray (a wrong port, a proxy) would otherwise make `ray.init` hang with no deadline."""
    code = ("import sys, ray; ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False, "
            "logging_level='ERROR'); ray.shutdown()")
    try:
        proc = subprocess.run([sys.executable, "-c", code, target], capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"no Ray cluster answered at {address} within {timeout_s:g} s "
                           "(something accepts connections there, but it is not a Ray head?)",
                           hint=_CLUSTER_HINT) from exc
    if proc.returncode == 0:
        return
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    why, hint = (lines[-1] if lines else f"exit code {proc.returncode}"), _CLUSTER_HINT
    if "InvalidAuthToken" in proc.stderr or "AuthenticationError" in proc.stderr:
        why = "the cluster requires token authentication and this process has no valid token"
        hint = ("set RAY_AUTH_MODE=token and make the cluster's token available here (RAY_AUTH_TOKEN, "
                "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; `ray get-auth-token` prints it on the head)")
    elif "ray[client]" in proc.stderr:
        hint = "install the Ray client for ray:// addresses: pip install 'gaugeport[ray]'"
    raise ClusterError(f"cannot connect to Ray at {address}: {why}", hint=hint)


# ---------------------------------------------------------------------- running the tasks
def _run_shards(ray: Any, path_a: str, path_b: str, batches: list[Batch], sites: Sequence[str] | None,
                shards: list[Shard], max_retries: int, progress: bool) -> dict[str, MomentSet]:
    from tqdm.auto import tqdm

    task = ray.remote(_collect_shard).options(num_cpus=1, num_gpus=_gpus_per_task(ray, len(shards)),
                                              max_retries=max_retries, retry_exceptions=False)
    pending = {task.remote(path_a, path_b, ray.put(batches[s.start:s.stop]), sites, s.shard_id): s for s in shards}
    results: dict[str, MomentSet] = {}
    bar = tqdm(total=len(shards), desc="collect (ray)", unit="shard", disable=not progress)
    t0, tokens = time.perf_counter(), 0
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            shard = pending.pop(done[0])
            results[shard.shard_id] = _get_result(ray, done[0], shard, max_retries)
            tokens += results[shard.shard_id].n_tokens
            bar.set_postfix(tokens=tokens, tok_s=f"{tokens / (time.perf_counter() - t0):.0f}")
            bar.update()
    finally:
        for ref in pending:  # an error (or ^C) stops the other shards too
            ray.cancel(ref, force=True)
        bar.close()
    return results


def _get_result(ray: Any, ref: Any, shard: Shard, max_retries: int) -> MomentSet:
    from ray.exceptions import RayTaskError

    try:
        return ray.get(ref)
    except RayTaskError as exc:  # the collection raised: deterministic, not retried
        cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else exc
        if isinstance(cause, GaugeportError):
            raise type(cause)(f"{shard.describe()}: {cause.message}", cause.hint) from exc
        raise DataError(f"{shard.describe()} failed: {type(cause).__name__}: {cause}",
                        hint="the error comes from the worker's forward pass (traceback above)") from exc
    except Exception as exc:  # worker died, node lost, object lost: Ray already retried
        raise DataError(
            f"{shard.describe()} failed after {max_retries + 1} attempts: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}",
            hint="a worker process died (out of memory? node lost?); no partial result was kept. "
            "Re-run, with more memory per worker, fewer --workers, or a larger max_retries",
        ) from exc


def _gpus_per_task(ray: Any, n_tasks: int) -> float:
    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    return 0.0 if gpus == 0 else min(1.0, gpus / n_tasks)


def _collect_shard(path_a: str, path_b: str, batches: list[Batch], sites: Sequence[str] | None,
                   shard_id: str) -> MomentSet:
    """The Ray task body: load both checkpoints here, run the paired passes, return the moments."""
    import ray
    import torch

    from gaugeport.core.stream import load_streamed
    from gaugeport.estimate.activations import collect_moments

    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    model_a, model_b = load_streamed(path_a, device), load_streamed(path_b, device)
    moments = collect_moments(model_a, model_b, batches, sites=sites, progress=False, shard_id=shard_id)
    return _to_cpu(moments)


def _to_cpu(moments: MomentSet) -> MomentSet:
    """Moments collected on a GPU come back as CPU tensors (the driver may have no GPU)."""
    for cm in moments.sites.values():
        for name in ("mean_a", "mean_b", "m2_a", "m2_b", "comoment"):
            setattr(cm, name, getattr(cm, name).cpu())
    return moments
