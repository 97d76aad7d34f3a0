"""Ray speed-up: moment collection with N Ray workers vs one process, on the same batches.

Two saved checkpoints (a small Llama-style model A, B = a random gauge applied to A). Baseline: one
process loads both and runs `collect_moments` over all batches (torch threads as the environment
sets them). Ray: a local instance with ``--workers`` CPUs (each task one CPU, one torch thread)
runs `collect_moments_distributed` on the same batches. Reported: the warm speed-up (workers
already started, the steady state of a cluster) and the cold one (Ray start-up and worker imports
included), both measured in this run, plus the largest difference between the merged and the
single-process moments. A speed-up needs free cores: on a machine shared with other work it is
lower than the worker count suggests.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaugeport.core.apply import apply_gauge_to_checkpoint
from gaugeport.core.fileio import atomic_write_json
from gaugeport.core.gauge import SignedPermutation
from gaugeport.core.verify import load_model
from gaugeport.estimate.activations import collect_moments
from gaugeport.estimate.distributed import collect_moments_distributed
from gaugeport.models.tiny import tiny_model

FULL = {"hidden_size": 256, "intermediate_size": 768, "num_attention_heads": 8, "num_key_value_heads": 4,
        "head_dim": 32, "num_hidden_layers": 4, "vocab_size": 4096}
QUICK = {**FULL, "num_hidden_layers": 2}


def make_pair(root: Path, cfg: dict[str, int]) -> tuple[Path, Path]:
    tiny_model("llama", seed=0, **cfg).save_pretrained(str(root / "a"))
    apply_gauge_to_checkpoint(root / "a", SignedPermutation.random(cfg["hidden_size"], seed=1), root / "b",
                              progress=False)
    return root / "a", root / "b"


def make_batches(vocab: int, n: int, batch: int, seq: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(3, vocab, (batch, seq), generator=gen) for _ in range(n)]


def single_process(a: Path, b: Path, batches: list[torch.Tensor]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    moments = collect_moments(load_model(a), load_model(b), batches, progress=False)
    return time.perf_counter() - t0, moments


def on_ray(a: Path, b: Path, batches: list[torch.Tensor], workers: int) -> dict[str, Any]:
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        start = time.perf_counter() - t0
        cold = collect_moments_distributed(a, b, batches, None, "local", workers, False, shard_id="cold")
        cold_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        warm = collect_moments_distributed(a, b, batches, None, "local", workers, False, shard_id="warm")
        warm_s = time.perf_counter() - t1
    finally:
        ray.shutdown()
    return {"start_seconds": start, "cold_seconds": cold_s, "warm_seconds": warm_s, "moments": warm,
            "cold_moments": cold}


def max_abs_diff(x: Any, y: Any) -> float:
    return max(float(np.abs(x.sites[s].cross - y.sites[s].cross).max()) for s in x.sites)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller model and fewer tokens")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    load_before = os.getloadavg()[0]
    n_batches, batch, seq = (32, 8, 128) if args.quick else (64, 8, 128)
    batches = make_batches(cfg["vocab_size"], n_batches, batch, seq)
    with tempfile.TemporaryDirectory(prefix="gaugeport-bench-ray-") as tmp:
        a, b = make_pair(Path(tmp), cfg)
        single_process(a, b, batches[:1])  # warm-up: imports, allocator
        single_s, ref = single_process(a, b, batches)
        r = on_ray(a, b, batches, args.workers)
    result = {
        "workers": args.workers, "d_model": cfg["hidden_size"], "n_layers": cfg["num_hidden_layers"],
        "n_tokens": ref.n_tokens, "torch_threads_single_process": torch.get_num_threads(),
        "single_process_seconds": single_s, "ray_start_seconds": r["start_seconds"],
        "ray_cold_seconds": r["cold_seconds"], "ray_warm_seconds": r["warm_seconds"],
        "speedup_warm": single_s / r["warm_seconds"], "speedup_cold": single_s / r["cold_seconds"],
        "max_abs_diff_vs_single": max(max_abs_diff(r["moments"], ref), max_abs_diff(r["cold_moments"], ref)),
        # other work on the machine: a speed-up needs `workers` idle cores
        "cpu_count": os.cpu_count(), "load_average_1min_before": load_before,
        "load_average_1min_after": os.getloadavg()[0],
    }
    print(f"{result['n_tokens']:,} tokens, d={cfg['hidden_size']}, {cfg['num_hidden_layers']} blocks: "
          f"1 process ({result['torch_threads_single_process']} torch threads) {single_s:.2f} s; "
          f"Ray x{args.workers} warm {r['warm_seconds']:.2f} s, cold {r['cold_seconds']:.2f} s "
          f"(start {r['start_seconds']:.1f} s); load average {load_before:.1f} on {os.cpu_count()} cores")
    print(f"speed-up warm {result['speedup_warm']:.2f}x, cold {result['speedup_cold']:.2f}x; "
          f"max |merged - single| {result['max_abs_diff_vs_single']:.1e}")
    if args.out:
        atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
