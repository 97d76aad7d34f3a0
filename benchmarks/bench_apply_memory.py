"""Peak memory of `apply_gauge_to_checkpoint` on a sharded checkpoint, against its largest tensor.

Writes a synthetic llama-style checkpoint (`gaugeport.models.synthetic`: real tensor names and
shapes, Llama-2/3-like widths, a few blocks, bf16, several shards plus `model.safetensors.index.json`)
one tensor at a time, so the writer stays small. Then applies a random gauge in a *fresh subprocess*
and reads that child's memory: the kernel's exact high-water mark `VmHWM` (= `ru_maxrss`; counts
file pages mapped by safetensors too) and the sampled peak of anonymous memory (`RssAnon`, what the
process really allocated). The same child measures its own high-water mark just before applying
(interpreter + torch + gaugeport imported), which is the baseline subtracted in the `above baseline`
ratios. Spot-checks two output tensors against `transform_tensor`, then deletes everything it wrote.

Default: d=4096 (3 blocks, 1.8 GB checkpoint, 3.7 GB of disk at peak); `--quick`: d=2048, 0.5 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from gaugeport.core.fileio import atomic_write_json
from gaugeport.models.synthetic import MB, LlamaShape, write_synthetic_llama

# Llama-2/3-like widths, a few blocks
SHAPES = {
    "full": LlamaShape(4096, 14336, 3, 32, 8, 32000, shard_mb=700),
    "quick": LlamaShape(2048, 5632, 4, 16, 4, 32000, shard_mb=200),
}


# ---------------------------------------------------------------------- the measured child
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def child(src: str, out: str, seed: int) -> None:
    """Runs in the subprocess: apply, sample RssAnon in a thread, print the figures as JSON."""
    import threading

    from gaugeport.core.apply import apply_gauge_to_checkpoint
    from gaugeport.core.checkpoint import Checkpoint
    from gaugeport.core.gauge import SignedPermutation

    gauge = SignedPermutation.random(Checkpoint.open(src).d_model, seed=seed)
    baseline_kb, baseline_anon_kb = _status_kb("VmHWM"), _status_kb("RssAnon")
    peak = {"RssAnon": baseline_anon_kb, "RssFile": _status_kb("RssFile")}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.002):
            for field in peak:
                peak[field] = max(peak[field], _status_kb(field))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    apply_gauge_to_checkpoint(src, gauge, out, progress=False)
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    kb = 1024
    print(json.dumps({"baseline_bytes": baseline_kb * kb, "peak_rss_bytes": _status_kb("VmHWM") * kb,
                      "baseline_anon_bytes": baseline_anon_kb * kb, "peak_anon_bytes": peak["RssAnon"] * kb,
                      "peak_file_bytes": peak["RssFile"] * kb, "apply_seconds": seconds}))


def run_child(src: Path, out: Path, seed: int) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, "--child", str(src), str(out), str(seed)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"apply child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def spot_check(src: Path, out: Path, seed: int) -> float:
    """Max |difference| between two output tensors and `transform_tensor` of their sources (0 expected)."""
    from gaugeport.core.apply import transform_tensor
    from gaugeport.core.checkpoint import Checkpoint
    from gaugeport.core.gauge import SignedPermutation

    a, b = Checkpoint.open(src), Checkpoint.open(out)
    gauge, spec = SignedPermutation.random(a.d_model, seed=seed), a.spec
    worst = 0.0
    for name in ("model.norm.weight", "model.layers.0.self_attn.o_proj.weight"):
        want = transform_tensor(name, a.tensor(name), spec.classify(name), gauge)
        worst = max(worst, (b.tensor(name).float() - want.float()).abs().max().item())
    return worst


# ---------------------------------------------------------------------- driver
def measure(quick: bool, dtype: torch.dtype, tmp_root: str | None, seed: int = 0) -> dict[str, float]:
    shape = SHAPES["quick" if quick else "full"]
    with tempfile.TemporaryDirectory(prefix="gaugeport-bench-", dir=tmp_root) as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "out"
        t0 = time.perf_counter()
        sizes = write_synthetic_llama(src, shape, dtype, seed)
        write_s = time.perf_counter() - t0
        mem = run_child(src, out, seed + 1)
        check = spot_check(src, out, seed + 1)
    largest, total = sizes["largest_tensor_bytes"], sizes["total_bytes"]
    above = mem["peak_rss_bytes"] - mem["baseline_bytes"]
    return {**sizes, **mem, "write_seconds": write_s, "spot_check_max_abs_diff": check,
            "peak_rss_over_largest_tensor": mem["peak_rss_bytes"] / largest,
            "peak_above_baseline_over_largest_tensor": above / largest,
            "peak_anon_above_baseline_over_largest_tensor":
                (mem["peak_anon_bytes"] - mem["baseline_anon_bytes"]) / largest,
            "peak_rss_over_checkpoint": mem["peak_rss_bytes"] / total,
            "peak_above_baseline_over_checkpoint": above / total,
            "apply_throughput_mb_per_s": total / MB / mem["apply_seconds"]}


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="d=2048, ~0.5 GB checkpoint")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--tmp", default=None, help="directory for the temporary checkpoints")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    r = measure(args.quick, getattr(torch, args.dtype), args.tmp)
    print(f"checkpoint: d={r['d_model']}, {r['n_tensors']} tensors in {r['n_shards']} shards, "
          f"{r['total_bytes'] / MB:.0f} MB; largest tensor {r['largest_tensor_bytes'] / MB:.0f} MB, "
          f"largest shard {r['largest_shard_bytes'] / MB:.0f} MB")
    print(f"child peak RSS {r['peak_rss_bytes'] / MB:.0f} MB (baseline after imports "
          f"{r['baseline_bytes'] / MB:.0f} MB), sampled peaks: anonymous {r['peak_anon_bytes'] / MB:.0f} MB "
          f"(baseline {r['baseline_anon_bytes'] / MB:.0f}), file-backed {r['peak_file_bytes'] / MB:.0f} MB; "
          f"apply {r['apply_seconds']:.1f} s ({r['apply_throughput_mb_per_s']:.0f} MB/s)")
    print(f"peak RSS / largest tensor      {r['peak_rss_over_largest_tensor']:.2f}")
    print(f"  above baseline / largest     {r['peak_above_baseline_over_largest_tensor']:.2f}")
    print(f"  anon above baseline / largest {r['peak_anon_above_baseline_over_largest_tensor']:.2f}")
    print(f"peak RSS / checkpoint size     {r['peak_rss_over_checkpoint']:.3f}")
    print(f"spot check max |diff|          {r['spot_check_max_abs_diff']:.1e}")
    if args.out:
        atomic_write_json(args.out, r)
    return r


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main(sys.argv[1:])
