"""`same` at Llama-2-7B width: time against one plain read of both checkpoints, and peak memory at two depths.

Synthetic bf16 checkpoints (d=4096, 11008 MLP units, 32 heads in 8 key/value groups, vocab 32000),
written tensor by tensor under a temporary folder and deleted afterwards, at 2, 4 and 8 blocks:

* A: random weights (norm gains of both signs around 1);
* identical: A under a random full gauge (residual, MLP units with signs, heads);
* derived: (A + noise at a quarter of the weights' scale) under another random full gauge;
* independent: random weights from another seed.

Per pair, after one untimed pass that puts both checkpoints in the page cache, three measurements,
each in a fresh subprocess, one after another: one plain pass over both checkpoints (every tensor
read and converted to float32, the baseline) with the C allocator as a fresh process has it; the
same pass with freed memory kept in the process (``freed_memory_kept``, the setting `same` runs
under: the float32 copies then reuse pages instead of faulting in new ones); and `same A B`
data-free. ``--repeat`` rounds of the three (default 2), the best of each reported: wall times,
`same` over each pass, the verdict and p-value, and `same`'s own peak resident memory (VmHWM).

    PYTHONPATH=src python benchmarks/bench_same_scale.py [--depths 2 4 8] [--repeat 2] [--out FILE.json]
    PYTHONPATH=src python benchmarks/bench_same_scale.py --pair A B   # an existing pair, JSON printed
    PYTHONPATH=src python benchmarks/bench_same_scale.py --quick   # d=1024, 2816 units: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MB = 2**20
SHAPES = {"full": (4096, 11008, 32, 8, 32000), "quick": (1024, 2816, 8, 2, 8000)}  # d, units, heads, kv, vocab


def _write(root: Path, tag: str, shape: tuple, layers: int, seed: int, base: Path | None = None,
           noise: float = 0.0) -> Path:
    """A random checkpoint (``base`` None) or ``base`` plus Gaussian noise, written tensor by tensor."""
    import torch

    from gaugeport.core.checkpoint import INDEX_FILE, Checkpoint, SafetensorsStreamWriter
    from gaugeport.models.synthetic import LlamaShape, llama_config, llama_layout, shard_names

    d, inter, heads, kv, vocab = shape
    ls = LlamaShape(d, inter, layers, heads, kv, vocab, 1000)
    shapes = llama_layout(ls)
    out = root / tag
    out.mkdir(parents=True)
    src = Checkpoint.open(base) if base is not None else None
    gen = torch.Generator().manual_seed(seed)
    weight_map = {}
    shards = shard_names(shapes, 2, 1000 * MB)
    for k, names in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        w = SafetensorsStreamWriter(out / file, {n: (torch.bfloat16, shapes[n]) for n in names}, {"format": "pt"})
        for name in w.order:
            shp = shapes[name]
            gain = len(shp) == 1
            if src is None:
                t = torch.empty(shp).normal_(1.0 if gain else 0.0, 0.3 if gain else 0.02, generator=gen)
            else:
                t = src.tensor(name).float() + torch.empty(shp).normal_(0.0, noise * (0.3 if gain else 0.02),
                                                                         generator=gen)
            w.write(name, t.to(torch.bfloat16))
            weight_map[name] = file
        w.close()
    (out / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (out / "config.json").write_text(json.dumps(llama_config(ls, torch.bfloat16)))
    return out


def _gauged(src: Path, dest: Path, seed: int) -> Path:
    from gaugeport.core.fullgauge import apply_full_gauge_to_checkpoint, random_full_gauge_for

    apply_full_gauge_to_checkpoint(src, random_full_gauge_for(src, seed), dest, progress=False)
    return dest


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def child(mode: str, a: str, b: str, profile: str | None = None) -> None:
    """One measurement in this fresh process: ``read`` (a plain pass over both checkpoints, the C allocator
    as a fresh process has it), ``read_kept`` (the same pass with freed memory kept in the process, the
    setting `same` runs under) or ``same``."""
    import torch

    from gaugeport.core.allocator import freed_memory_kept
    from gaugeport.core.checkpoint import Checkpoint
    from gaugeport.provenance.same import same

    def plain_pass() -> float:
        total = 0.0
        for p in (a, b):
            for _, t in Checkpoint.open(p).iter_tensors():
                total += float(t.float().sum())
        return total

    base_kb = _status_kb("VmHWM")
    t0 = time.perf_counter()
    out: dict = {}
    if mode == "read":
        out["checksum"] = plain_pass()
    elif mode == "read_kept":
        with freed_memory_kept():
            out["checksum"] = plain_pass()
    elif profile:  # cProfile of `same` alone (its timing then includes the profiler's overhead)
        import cProfile

        prof = cProfile.Profile()
        r = prof.runcall(same, a, b)
        prof.dump_stats(profile)
    else:
        r = same(a, b)
    out["seconds"] = time.perf_counter() - t0
    if mode == "same":
        out.update({"verdict": r.verdict, "p_value": r.p_value, "log10_p": r.log10_p,
                    "residual": r.residual.get("kind"),
                    "sampled": any(lay.get("mlp_units_sampled") for lay in r.layers)})
    print(json.dumps({**out, "peak_rss_mb": _status_kb("VmHWM") / 1024, "baseline_rss_mb": base_kb / 1024,
                      "threads": torch.get_num_threads()}))


def _measure(mode: str, a: Path, b: Path, profile: Path | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    prof = [] if profile is None else ["--profile", str(profile)]
    proc = subprocess.run([sys.executable, __file__, "--child", mode, str(a), str(b), *prof], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_depth(root: Path, shape: tuple, layers: int, profile_dir: Path | None = None, repeat: int = 1) -> dict:
    a = _write(root, "a", shape, layers, seed=0)
    pairs = {"identical": _gauged(a, root / "identical", 5)}
    native = _write(root, "derived-native", shape, layers, seed=1, base=a, noise=0.25)
    pairs["derived"] = _gauged(native, root / "derived", 6)
    shutil.rmtree(native)
    pairs["independent"] = _write(root, "independent", shape, layers, seed=2)
    size = sum(f.stat().st_size for f in a.glob("*.safetensors"))
    out = {"blocks": layers, "checkpoint_mb": size / MB}
    for kind, b in pairs.items():
        out[kind] = measure_pair(a, b, repeat, None if profile_dir is None else
                                 profile_dir / f"same-{kind}-L{layers}.pstats")
        print(kind, json.dumps(out[kind]), flush=True)
        shutil.rmtree(b)
    shutil.rmtree(a)
    return out


def measure_pair(a: Path, b: Path, repeat: int = 1, profile: Path | None = None) -> dict:
    """Best of ``repeat`` rounds (fewest seconds), each round the three measurements in fresh processes,
    one after another; the page cache is warmed by one untimed pass first."""
    _measure("read", a, b)
    runs: dict[str, list[dict]] = {"read": [], "read_kept": [], "same": []}
    for _ in range(repeat):
        for mode in runs:
            runs[mode].append(_measure(mode, a, b, profile if mode == "same" else None))
    bad = [r["error"] for rs in runs.values() for r in rs if "error" in r]
    if bad:
        return {"error": bad[0]}
    best = {m: min(rs, key=lambda r: r["seconds"]) for m, rs in runs.items()}
    s = best["same"]
    return {"read_once_s": best["read"]["seconds"], "read_kept_memory_s": best["read_kept"]["seconds"],
            "same_s": s["seconds"], "same_over_read": s["seconds"] / best["read"]["seconds"],
            "same_over_read_kept_memory": s["seconds"] / best["read_kept"]["seconds"],
            "peak_rss_mb": s["peak_rss_mb"], "read_peak_rss_mb": best["read"]["peak_rss_mb"],
            **{k: s[k] for k in ("verdict", "p_value", "log10_p", "residual", "sampled", "threads")},
            "rounds": repeat, "same_seconds_all": [r["seconds"] for r in runs["same"]]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="d=1024 shapes (a smoke run)")
    ap.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=None, help="folder for the temporary checkpoints (default: temp)")
    ap.add_argument("--profile", type=Path, default=None,
                    help="write a cProfile of each `same` run into this folder (timings then include its overhead)")
    ap.add_argument("--repeat", type=int, default=2, help="rounds per pair; the best of them is reported")
    ap.add_argument("--pair", nargs=2, type=Path, default=None,
                    help="measure this existing pair A B only (no checkpoints written; JSON printed)")
    ap.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child, profile=str(args.profile) if args.profile else None)
        return {}
    if args.pair:
        res = measure_pair(*args.pair, repeat=args.repeat)
        print(json.dumps(res))
        return res
    shape = SHAPES["quick" if args.quick else "full"]
    d, inter, heads, kv, vocab = shape
    result: dict = {"shape": {"d_model": d, "intermediate": inter, "heads": heads, "kv_heads": kv, "vocab": vocab,
                              "dtype": "bfloat16"}, "depths": []}
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="same-scale-", dir=args.work))
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    try:
        for layers in args.depths:
            result["depths"].append(run_depth(work / f"L{layers}", shape, layers, args.profile, args.repeat))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = args.out or HERE / ("bench_same_scale_quick.json" if args.quick else "bench_same_scale.json")
    from gaugeport.core.fileio import atomic_write_json

    atomic_write_json(out, result, force=True)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
