"""`apply` throughput on a multi-GB sharded checkpoint against a plain file copy of the same files.

The physical limit of `apply` is a copy: it must read every byte and write every byte. This writes a
synthetic llama-style bf16 checkpoint (d=4096, 5 blocks, ~2.8 GB in shards; `--quick`: d=2048,
~0.6 GB) to a temporary directory (default under /tmp), then alternates, ``--repeat`` times: a plain
copy of the checkpoint's files (``shutil.copyfile``, which uses the kernel's in-kernel copy where it
can), and ``apply_gauge_to_checkpoint`` with a random gauge. Both see the same page cache (the source
is read by the first run of each). The best time of each is kept; the ratio is apply's speed as a
fraction of the copy's (target: at least 0.5). Each timed run starts after ``os.sync()``, so neither
pays for the other's writeback; neither fsyncs its own output. Everything written is deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from gaugeport.core.apply import apply_gauge_to_checkpoint
from gaugeport.core.gauge import SignedPermutation
from gaugeport.models.synthetic import LlamaShape, write_synthetic_llama

HERE = Path(__file__).resolve().parent
MB = 2**20
TARGET = 0.5
SHAPES = {"full": LlamaShape(4096, 14336, 5, 32, 8, 32000, shard_mb=700),
          "quick": LlamaShape(2048, 5632, 4, 16, 4, 32000, shard_mb=200)}


def plain_copy(src: Path, dst: Path) -> None:
    dst.mkdir()
    for f in sorted(src.iterdir()):
        shutil.copyfile(f, dst / f.name)


def measure(quick: bool, repeat: int, tmp_root: str) -> dict[str, float]:
    shape = SHAPES["quick" if quick else "full"]
    g = SignedPermutation.random(shape.d_model, seed=1)
    with tempfile.TemporaryDirectory(prefix="gaugeport-bench-throughput-", dir=tmp_root) as tmp:
        src = Path(tmp) / "src"
        sizes = write_synthetic_llama(src, shape, torch.bfloat16, 0)
        total = sum(f.stat().st_size for f in src.iterdir())
        copy_s, apply_s = float("inf"), float("inf")
        for k in range(repeat):
            os.sync()  # each timed run starts with no dirty pages queued for writeback
            t = time.perf_counter()
            plain_copy(src, Path(tmp) / f"copy{k}")
            copy_s = min(copy_s, time.perf_counter() - t)
            shutil.rmtree(Path(tmp) / f"copy{k}")
            os.sync()
            t = time.perf_counter()
            apply_gauge_to_checkpoint(src, g, Path(tmp) / f"out{k}", progress=False)
            apply_s = min(apply_s, time.perf_counter() - t)
            shutil.rmtree(Path(tmp) / f"out{k}")
    return {**sizes, "bytes_on_disk": total, "repeat": repeat, "copy_seconds": copy_s, "apply_seconds": apply_s,
            "copy_mb_per_s": total / MB / copy_s, "apply_mb_per_s": total / MB / apply_s,
            "apply_over_copy_speed_ratio": copy_s / apply_s, "target_ratio": TARGET,
            "meets_target": copy_s / apply_s >= TARGET}


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="d=2048, ~0.6 GB")
    ap.add_argument("--repeat", type=int, default=3, help="alternating copy / apply runs; best of each")
    ap.add_argument("--tmp", default="/tmp", help="directory for the temporary checkpoints")
    ap.add_argument("--out", type=Path, default=HERE / "bench_apply_throughput.json")
    args = ap.parse_args(argv)
    r = measure(args.quick, args.repeat, args.tmp)
    print(f"checkpoint {r['bytes_on_disk'] / MB:.0f} MB in {r['n_shards']} shards (d={r['d_model']}): copy "
          f"{r['copy_seconds']:.2f} s ({r['copy_mb_per_s']:.0f} MB/s), apply {r['apply_seconds']:.2f} s "
          f"({r['apply_mb_per_s']:.0f} MB/s): apply at {r['apply_over_copy_speed_ratio']:.2f}x copy speed "
          f"(target >= {TARGET})")
    payload: dict[str, object] = {**r, "headline": [[
        "apply speed / plain copy speed, same files", f"{r['apply_over_copy_speed_ratio']:.2f}x",
        f"{r['bytes_on_disk'] / MB:.0f} MB, {r['n_shards']} shards; copy {r['copy_mb_per_s']:.0f} MB/s, "
        f"apply {r['apply_mb_per_s']:.0f} MB/s, same run"]]}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
