"""Any model size on one machine: throughput of the weight verbs and peak memory against depth.

Two synthetic llama-style bf16 checkpoints families (:mod:`gaugeport.models.synthetic`), each
verb run in a fresh child process (its own ``ru_maxrss`` = kernel high-water mark ``VmHWM``, its own
CPU time), the baselines measured in the same run:

throughput (d=4096, 11008 MLP units, 4 blocks, 32000 vocab: ~2.1 GB in 4 shards; ``--quick``: d=2048)
    ``cp -r`` + ``sync`` against ``apply`` + ``sync`` (alternating, best of ``--repeat``); one plain
    read of every shard file (16 MB ``readinto``), page cache warm and cold (the files' pages dropped
    with ``posix_fadvise(DONTNEED)`` first), against ``fingerprint`` and ``canonicalize`` (+ sync), each
    with numpy's gather (the default) and the compiled one (``_numba``, where numba is installed), and
    both cold, and the cold read while a thread writes as many bytes (direct I/O) and syncs (the I/O
    floor of a verb that reads a checkpoint and writes one: ``read_write_cold``), best of ``--repeat``
    each, interleaved; then one core's rate (GB/s) for each step those verbs are
    made of (read into a reused / a fresh buffer, SHA-256, BLAKE3, numpy's column gather, the pass's
    row-and-column gather in both implementations, memcpy), which says what bounds them. Page cache
    warm unless named cold (the source is read before the runs).
memory against depth (d=1024, 2816 units, 2 to 16 blocks)
    peak RSS and seconds of ``verify`` (A against its gauged copy, weights included), ``collect``
    (2 batches of 8 x 128 token ids), ``same`` and ``canonicalize`` per depth, and the peak of a
    child that only imports torch, transformers and gaugeport (the baseline).

memory at Llama-3-70B width (``--only wide``; d=8192, 28672 units, 64 heads in 8 groups, vocab 128256, 1 and 2 blocks)
    peak RSS and seconds of ``verify``, ``same``, ``fingerprint`` and ``collect`` on checkpoints whose every
    tensor has its 70B shape: a measurement of what one block and the embedding cost at that width (the
    verbs stream blocks, so what is flat from 1 to 2 blocks is flat at 80); ~6-8 GB per checkpoint.

Then an extrapolation, stated as such, to Llama-3-8B and Llama-3-70B: time scales with the bytes
of the checkpoint at the seconds-per-byte measured here for each verb; peak memory above the
baseline scales with the largest streamed unit (the larger of one block and the embedding, in the
stored dtype) at the ratio measured here. Timings on a shared machine are noisy: the ratios are
from one run, and the CPU seconds are given beside the wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GB = 1e9
TOKENS = {"n_seq": 16, "seq_len": 128, "batch": 8}  # collect: 2 batches


# ---------------------------------------------------------------------- the measured child
def _child(verb: str, args: list[str]) -> None:
    """Run one verb (imports done first, outside the timing) and print wall and CPU seconds."""
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import gaugeport.core.apply  # noqa: F401
    import gaugeport.core.verify  # noqa: F401
    import gaugeport.estimate.pipeline  # noqa: F401
    import gaugeport.provenance.canonical  # noqa: F401
    import gaugeport.provenance.same  # noqa: F401

    if verb.endswith("_cold"):  # the checkpoint's pages dropped from the page cache first (outside the timing)
        verb = verb.removesuffix("_cold")
        _drop_cache(Path(args[0]))
    extra: dict[str, float] = {}
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    if verb == "baseline":
        pass
    elif verb == "read":
        buf = bytearray(16 << 20)
        for f in sorted(Path(args[0]).glob("*.safetensors")):
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass
    elif verb == "read_write":  # the I/O a verb that reads a checkpoint and writes one of its size must do:
        # read it (as "read") while a thread writes as many bytes, direct I/O as canonicalize writes, then sync
        import threading

        from gaugeport.core.directio import AppendFile

        files = sorted(Path(args[0]).glob("*.safetensors"))
        total = sum(f.stat().st_size for f in files)

        def write() -> None:
            import mmap

            chunk = memoryview(mmap.mmap(-1, 8 << 20))  # page-aligned, as canonicalize's parts: no staging copy
            out = AppendFile(Path(args[1]))
            for k in range(0, total, len(chunk)):
                out.write(chunk[:min(len(chunk), total - k)])
            out.close()

        writer = threading.Thread(target=write)
        writer.start()
        buf = bytearray(16 << 20)
        for f in files:
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass
        writer.join()
        os.sync()
    elif verb == "apply":
        from gaugeport.core.apply import apply_gauge_to_checkpoint
        from gaugeport.core.gauge import SignedPermutation

        apply_gauge_to_checkpoint(args[0], SignedPermutation.random(int(args[2]), seed=1), args[1], progress=False)
        os.sync()
    elif verb == "canonicalize":
        from gaugeport.provenance.canonical import canonicalize

        canonicalize(args[0], args[1], progress=False)
        extra["seconds_before_sync"] = time.perf_counter() - t0
        os.sync()
    elif verb == "fingerprint":
        from gaugeport.provenance.canonical import fingerprint

        fingerprint(args[0])
    elif verb == "verify":
        from gaugeport.core.gauge import SignedPermutation
        from gaugeport.core.verify import verify_checkpoints

        res = verify_checkpoints(args[0], args[1], SignedPermutation.random(int(args[2]), seed=1))
        assert res.ok, res
    elif verb == "collect":
        from gaugeport.estimate.pipeline import DataOptions, collect_checkpoints

        collect_checkpoints(args[0], args[1], DataOptions(args[2], TOKENS["n_seq"] * TOKENS["seq_len"],
                                                          TOKENS["batch"], TOKENS["seq_len"]), progress=False)
    elif verb == "rates":  # what bounds the weight verbs on this CPU: one core's rate for each step
        print(json.dumps(_rates(Path(args[0]))))
        return
    elif verb == "same":
        from gaugeport.provenance.same import same

        same(args[0], args[1])
    else:
        raise SystemExit(f"unknown verb {verb}")
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    status = Path("/proc/self/status")
    hwm = [int(ln.split()[1]) * 1024 for ln in status.read_text().splitlines() if ln.startswith("VmHWM:")] \
        if status.exists() else []
    # vm_hwm_bytes: this process's own high-water mark; wait4's ru_maxrss (peak_rss_bytes) starts from
    # the parent's resident size at the fork
    gather = "numba" if "numba" in sys.modules else "numpy"  # not imported here: it would count in the peak
    print(json.dumps({"seconds": time.perf_counter() - t0, **extra, "gather": gather,
                      "cpu_seconds": r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime,
                      **({"vm_hwm_bytes": hwm[0]} if hwm else {})}))


def _drop_cache(ckpt: Path) -> None:
    """Drop the checkpoint's files from the page cache (``posix_fadvise(DONTNEED)``; they are clean: written
    and synced before), so that the next read comes from the disk."""
    os.sync()
    for f in sorted(ckpt.iterdir()):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _rates(src: Path) -> dict[str, float]:
    """GB/s of one core, on 256 MB of the checkpoint's own bf16 bytes (page cache warm): a plain read into
    a reused buffer and into fresh memory, SHA-256 and BLAKE3, and numpy's column gather (the one
    step of apply and canonicalize that is not a copy: every [rows, d] matrix reading the stream)."""
    import hashlib

    import numpy as np
    from blake3 import blake3

    f = max(Path(src).glob("*.safetensors"), key=lambda p: p.stat().st_size)
    n = min(256 << 20, f.stat().st_size) // (1 << 20) << 20  # whole MB: rows of 4096 bf16
    fd = os.open(f, os.O_RDONLY)
    try:
        def pread(buf: np.ndarray) -> None:
            view, done = memoryview(buf), 0
            while done < n:
                got = os.preadv(fd, [view[done:]], done)
                if got <= 0:
                    raise RuntimeError(f"{f} ended early")
                done += got

        reused = np.empty(n, dtype=np.uint8)
        pread(reused)
        out: dict[str, float] = {}
        t = time.perf_counter()
        pread(reused)
        out["read_reused_buffer"] = n / (time.perf_counter() - t) / GB
        t = time.perf_counter()
        pread(np.empty(n, dtype=np.uint8))
        out["read_fresh_buffer"] = n / (time.perf_counter() - t) / GB
    finally:
        os.close(fd)
    for name, h in (("sha256", hashlib.sha256()), ("blake3", blake3())):
        t = time.perf_counter()
        h.update(memoryview(reused))
        out[name] = n / (time.perf_counter() - t) / GB
    d = 4096
    rows = reused.view(np.int16).reshape(-1, d)
    dst = np.empty_like(rows)
    inv = np.random.default_rng(0).permutation(d)
    t = time.perf_counter()
    for i in range(0, rows.shape[0], 128):
        np.take(rows[i:i + 128], inv, axis=1, out=dst[i:i + 128], mode="clip")
    out["column_gather_bf16"] = n / (time.perf_counter() - t) / GB
    t = time.perf_counter()
    np.copyto(dst, rows)
    out["memcpy"] = n / (time.perf_counter() - t) / GB
    from gaugeport.core import gather

    all_rows, flips = np.arange(rows.shape[0]), np.zeros(rows.shape[0], dtype=np.int16)
    col_flips = np.where(np.random.default_rng(1).random(d) < 0.5, -0x8000, 0).astype(np.int16)
    os.environ["GAUGEPORT_GATHER"] = "numba" if gather.numba_available() else "numpy"
    gather._numba_gather.cache_clear()
    kernels = {"numpy": gather._numpy_gather, "numba": gather._numba_gather()}
    for name, kernel in kernels.items():
        if kernel is None:
            continue
        kernel(rows[:2], all_rows[:2], inv, flips[:2], col_flips, dst[:2])  # compiled (or loaded) outside the timing
        t = time.perf_counter()
        for i in range(0, rows.shape[0], 1024):  # the pass's parts: 8 MB of rows
            kernel(rows, all_rows[i:i + 1024], inv, flips[i:i + 1024], col_flips, dst[i:i + 1024])
        out[f"gather_2d_{name}"] = n / (time.perf_counter() - t) / GB
    return out


def run(verb: str, *args: str | Path, numba: bool = False) -> dict[str, float]:
    """One child: its timings and its peak RSS (bytes, from wait4's rusage). ``numba=True``: the
    compiled gather (``GAUGEPORT_GATHER=numba``; the default is numpy's)."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    env.pop("GAUGEPORT_GATHER", None)
    if numba:
        env["GAUGEPORT_GATHER"] = "numba"
    proc = subprocess.Popen([sys.executable, __file__, "--child", verb, *map(str, args)], stdout=subprocess.PIPE,
                            env=env)
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{verb} failed")
    return {**json.loads(out.decode().strip().splitlines()[-1]), "peak_rss_bytes": usage.ru_maxrss * 1024}


def own_peak(r: dict[str, float]) -> float:
    """A child's own peak resident size: its ``VmHWM`` where it reported one (a fresh address space at
    exec), else wait4's ``ru_maxrss``, which on Linux starts from the parent's resident size at the fork."""
    return r.get("vm_hwm_bytes", r["peak_rss_bytes"])


def cp_sync(src: Path, dst: Path) -> float:
    os.sync()
    t = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    os.sync()
    return time.perf_counter() - t


# ---------------------------------------------------------------------- the two families
def _make(root: Path, shape, name: str) -> tuple[Path, Path, dict[str, int]]:
    """Checkpoint A and its gauged copy B (seed 1, as the children's verify expects)."""
    import torch

    from gaugeport.core.apply import apply_gauge_to_checkpoint
    from gaugeport.core.gauge import SignedPermutation
    from gaugeport.models.synthetic import write_synthetic_llama

    a, b = root / f"{name}-a", root / f"{name}-b"
    sizes = write_synthetic_llama(a, shape, torch.bfloat16, 0)
    apply_gauge_to_checkpoint(a, SignedPermutation.random(shape.d_model, seed=1), b, progress=False)
    return a, b, sizes


def _ids(root: Path, vocab: int) -> Path:
    import numpy as np

    path = root / "ids.npy"
    np.save(path, np.random.default_rng(0).integers(3, vocab, (TOKENS["n_seq"], TOKENS["seq_len"])))
    return path


def unit_bytes(d: int, inter: int, n_heads: int, n_kv: int, vocab: int, itemsize: int = 2) -> int:
    """The largest streamed unit: one block or the embedding (the head is the same size)."""
    kv = d // n_heads * n_kv
    block = (2 * d * d + 2 * kv * d + 3 * d * inter + 2 * d) * itemsize
    return max(block, vocab * d * itemsize)


def total_bytes(d: int, inter: int, layers: int, n_heads: int, n_kv: int, vocab: int, itemsize: int = 2) -> int:
    kv = d // n_heads * n_kv
    return (layers * (2 * d * d + 2 * kv * d + 3 * d * inter + 2 * d) + 2 * vocab * d + d) * itemsize


def throughput(root: Path, quick: bool, repeat: int) -> dict[str, object]:
    from gaugeport.models.synthetic import LlamaShape

    shape = LlamaShape(2048, 5632, 4, 16, 16, 32000, shard_mb=200) if quick else \
        LlamaShape(4096, 11008, 4, 32, 32, 32000, shard_mb=700)
    a, b, sizes = _make(root, shape, "wide")
    d = str(shape.d_model)
    out: dict[str, object] = {"shape": shape.__dict__, **sizes}
    run("read", a)  # warm the page cache
    cps, applies = [], []
    for k in range(repeat):
        cps.append(cp_sync(a, root / f"cp{k}"))
        shutil.rmtree(root / f"cp{k}")
        applies.append(run("apply", a, root / f"ap{k}", d))
        shutil.rmtree(root / f"ap{k}")
    best_apply = min(applies, key=lambda r: r["seconds"])
    def best(runs: list[dict[str, float]]) -> dict[str, float]:
        return min(runs, key=lambda r: r["seconds"])

    runs: dict[str, list[dict[str, float]]] = {k: [] for k in (
        "read", "read_cold", "fingerprint", "fingerprint_numba", "canonicalize", "canonicalize_numba",
        "fingerprint_cold", "canonicalize_cold", "read_write_cold")}
    for _ in range(repeat):  # interleaved: a change of load hits every row alike
        run("read", a)  # the page cache warm again (a cold run before dropped it), untimed
        runs["read"].append(run("read", a))
        for numba, tag in ((False, ""), (True, "_numba")):
            runs["fingerprint" + tag].append(run("fingerprint", a, numba=numba))
            runs["canonicalize" + tag].append(run("canonicalize", a, root / "canon", numba=numba))
            shutil.rmtree(root / "canon")
        # cold: each child drops the checkpoint's pages first
        runs["read_cold"].append(run("read_cold", a))
        runs["fingerprint_cold"].append(run("fingerprint_cold", a))
        runs["canonicalize_cold"].append(run("canonicalize_cold", a, root / "canon"))
        shutil.rmtree(root / "canon")
        runs["read_write_cold"].append(run("read_write_cold", a, root / "written.bin"))
        (root / "written.bin").unlink()
    bests = {k: best(v) for k, v in runs.items()}
    read, read_cold = bests["read"]["seconds"], bests["read_cold"]["seconds"]
    rates = json.loads(subprocess.run([sys.executable, __file__, "--child", "rates", str(a)], check=True,
                                      capture_output=True, text=True).stdout.strip().splitlines()[-1])
    ratios = {}
    for verb in ("fingerprint", "fingerprint_numba", "canonicalize", "canonicalize_numba"):
        ratios[f"{verb}_over_read_time"] = bests[verb]["seconds"] / read
        ratios[f"{verb}_over_cold_read_time"] = bests[verb]["seconds"] / read_cold
    ratios["fingerprint_cold_over_cold_read_time"] = bests["fingerprint_cold"]["seconds"] / read_cold
    ratios["canonicalize_cold_over_cold_read_time"] = bests["canonicalize_cold"]["seconds"] / read_cold
    ratios["canonicalize_cold_over_read_write_cold_time"] = \
        bests["canonicalize_cold"]["seconds"] / bests["read_write_cold"]["seconds"]
    ratios["read_write_cold_over_cold_read_time"] = bests["read_write_cold"]["seconds"] / read_cold
    for verb in ("canonicalize", "canonicalize_numba"):
        ratios[f"{verb}_before_sync_over_read_time"] = bests[verb]["seconds_before_sync"] / read
    out.update({"rates_gb_per_s_one_core": rates, "cp_sync_seconds": min(cps), "apply": best_apply, **bests,
        "read_note": "read: page cache warm (the checkpoint was just read); read_cold: its pages dropped first "
                     "(posix_fadvise DONTNEED), so it comes from the disk. fingerprint and canonicalize run warm "
                     "unless named _cold; numpy's gather unless named _numba (GAUGEPORT_GATHER=numba); canonicalize "
                     "includes os.sync() (seconds_before_sync without it); read_write_cold: the cold read while "
                     "a thread writes as many bytes (direct I/O, as canonicalize writes) and syncs: the I/O floor "
                     "of any verb that reads a checkpoint and writes one",
        "apply_over_cp_sync_speed": min(cps) / best_apply["seconds"], **ratios,
        "targets": {"apply_over_cp_sync_speed": ">= 0.5", "fingerprint_cold_over_cold_read_time": "<= 1.5",
                    "canonicalize_cold_over_cold_read_time": "<= 2"},
    })
    for p in (a, b):
        shutil.rmtree(p)
    return out


def memory_vs_depth(root: Path, depths: list[int]) -> dict[str, object]:
    from gaugeport.models.synthetic import LlamaShape

    rows = []
    base = run("baseline")
    for n in depths:
        shape = LlamaShape(1024, 2816, n, 16, 16, 32000, shard_mb=200)
        a, b, sizes = _make(root, shape, f"deep{n}")
        ids = _ids(root, shape.vocab)
        row: dict[str, object] = {"blocks": n, "checkpoint_bytes": sizes["total_bytes"]}
        for verb, args in (("verify", (a, b, "1024")), ("collect", (a, b, ids)), ("same", (a, b)),
                           ("canonicalize", (a, root / "canon"))):
            r = run(verb, *args)
            row[verb] = own_peak(r)
            row[f"{verb}_seconds"] = r["seconds"]
        shutil.rmtree(root / "canon")
        for p in (a, b):
            shutil.rmtree(p)
        rows.append(row)
    return {"shape": "d=1024, 2816 units, 16 heads, vocab 32000, bf16", "baseline_peak_rss_bytes": own_peak(base),
            "peak": "each child's own high-water mark (VmHWM); wait4's ru_maxrss starts from the parent's size",
            "rows": rows}


WIDE = (8192, 28672, 64, 8, 128256)  # Llama-3-70B: d, MLP units, heads, key/value heads, vocab


def memory_at_width(root: Path, depths: list[int]) -> dict[str, object]:
    """Peak RSS of the streamed verbs on checkpoints with Llama-3-70B's tensor shapes, at a few depths."""
    from gaugeport.models.synthetic import LlamaShape

    d, inter, heads, kv, vocab = WIDE
    rows = []
    for n in depths:
        shape = LlamaShape(d, inter, n, heads, kv, vocab, shard_mb=2000)
        a, b, sizes = _make(root, shape, f"wide{n}")
        ids = _ids(root, vocab)
        row: dict[str, object] = {"blocks": n, "checkpoint_bytes": sizes["total_bytes"]}
        for verb, args in (("verify", (a, b, str(d))), ("same", (a, b)), ("fingerprint", (a,)),
                           ("collect", (a, b, ids))):
            try:
                r = run(verb, *args)
            except RuntimeError as exc:  # a child killed for memory is a finding, not a crash of the benchmark
                row[verb], row[f"{verb}_error"] = None, str(exc)
                continue
            row[verb] = own_peak(r)
            row[f"{verb}_seconds"] = r["seconds"]
            print(f"  wide, {n} blocks: {verb} {row[verb] / GB:.2f} GB, {r['seconds']:.1f} s", flush=True)
        for p in (a, b):
            shutil.rmtree(p)
        rows.append(row)
    return {"shape": "d=8192, 28672 units, 64 heads in 8 key/value groups, vocab 128256 (Llama-3-70B), bf16",
            "collect_tokens": TOKENS["n_seq"] * TOKENS["seq_len"], "rows": rows}


def extrapolate(tp: dict[str, object], mem: dict[str, object], at_width: dict[str, object] | None = None
                ) -> dict[str, object]:
    """Time: the target's bytes x the seconds per byte measured for each verb (apply, fingerprint,
    canonicalize: the d=4096 checkpoint; verify, collect, same: the deepest narrow one, A's bytes).
    Memory: the baseline + the measured peak above it per byte of the largest streamed unit (the
    larger of one block and the embedding, stored dtype) x the target's unit. An extrapolation, not a
    measurement: it assumes the verbs stay read-bound and that nothing else grows with the model.
    Where ``at_width`` holds a verb's peak measured at Llama-3-70B's own tensor shapes, that measurement (at
    its deepest row) replaces the 70B peak estimate, flagged ``measured_at_width``; ``collect`` keeps d x d
    float64 moments per site, so its 70B figure adds the remaining sites' moments to it."""
    s = tp["shape"]
    base = mem["baseline_peak_rss_bytes"]
    wide = (total_bytes(s["d_model"], s["intermediate"], s["n_layers"], s["n_heads"], s["n_kv_heads"], s["vocab"]),
            unit_bytes(s["d_model"], s["intermediate"], s["n_heads"], s["n_kv_heads"], s["vocab"]))
    deep_row = mem["rows"][-1]
    deep = (total_bytes(1024, 2816, deep_row["blocks"], 16, 16, 32000), unit_bytes(1024, 2816, 16, 16, 32000))
    measured: dict[str, tuple[float, float, tuple[int, int]]] = {
        v: (tp[v]["seconds"], own_peak(tp[v]), wide) for v in ("apply", "fingerprint", "canonicalize", "read")}
    for v in ("verify", "collect", "same"):
        measured[v] = (deep_row[f"{v}_seconds"], deep_row[v], deep)
    models = {"Llama-3-8B": (4096, 14336, 32, 32, 8, 128256), "Llama-3-70B": (8192, 28672, 80, 64, 8, 128256)}
    out: dict[str, object] = {"method": extrapolate.__doc__}
    wide_rows = [r for r in (at_width or {}).get("rows", []) if isinstance(r, dict)]
    for name, (d, inter, layers, h, kv, vocab) in models.items():
        tot, unit = total_bytes(d, inter, layers, h, kv, vocab), unit_bytes(d, inter, h, kv, vocab)
        verbs = {v: {"seconds": sec * tot / src[0], "peak_rss_bytes": base + max(0.0, peak - base) * unit / src[1]}
                 for v, (sec, peak, src) in measured.items()}
        verbs["cp_sync"] = {"seconds": tp["cp_sync_seconds"] * tot / wide[0]}
        if wide_rows and (d, inter, h, kv, vocab) == WIDE:
            row = wide_rows[-1]
            for v in ("verify", "same", "fingerprint", "collect"):
                if row.get(v) is None or v not in verbs:
                    continue
                peak = float(row[v])
                if v == "collect":  # its own d x d float64 moments for each site it has not seen yet
                    peak += (2 * (layers - row["blocks"])) * d * d * 8
                verbs[v]["peak_rss_bytes"] = peak
                verbs[v]["measured_at_width"] = f"{row['blocks']} blocks" + (
                    " + the other blocks' moments" if v == "collect" else "")
        out[name] = {"checkpoint_bytes": tot, "largest_unit_bytes": unit, "verbs": verbs}
    return out


def _kept_part(only: str | None, out: Path) -> dict[str, object]:
    """The parts not run, kept from ``out`` (or from the shipped JSON when ``out`` is a new file); with
    ``--only``, checked before anything is measured, so a long run cannot end on a missing key. A full run
    keeps only the width part (``--only wide``), which it does not measure."""
    need = {"throughput": ["memory_vs_depth"], "memory": ["throughput"],
            "wide": ["throughput", "memory_vs_depth"]}.get(only or "", [])
    for src in (out, HERE / "bench_scale.json"):
        if src.exists():
            old = json.loads(src.read_text())
            if all(k in old for k in need):
                return old if only else {k: old[k] for k in ("memory_at_width",) if k in old}
    if not need:
        return {}
    raise SystemExit(f"--only {only} keeps the other parts ({', '.join(need)}) from --out, but neither {out} nor "
                     f"{HERE / 'bench_scale.json'} holds them: run them once")


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="d=2048 throughput checkpoint, depths 2 and 4")
    ap.add_argument("--repeat", type=int, default=2, help="alternating cp / apply runs; best of each")
    ap.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8, 16])
    ap.add_argument("--tmp", default="/tmp", help="directory for the temporary checkpoints")
    ap.add_argument("--out", type=Path, default=HERE / "bench_scale.json")
    ap.add_argument("--only", choices=["throughput", "memory", "wide"],
                    help="run one part; the other parts (and the extrapolation's use of them) are kept from --out")
    ap.add_argument("--wide-depths", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child[0], args.child[1:])
        return {}
    depths = [2, 4] if args.quick else args.depths
    old = _kept_part(args.only, args.out)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="gaugeport-bench-scale-", dir=args.tmp) as tmp:
        tp = throughput(Path(tmp), args.quick, args.repeat) if args.only in (None, "throughput") \
            else old["throughput"]
        mem = memory_vs_depth(Path(tmp), depths) if args.only in (None, "memory") else old["memory_vs_depth"]
        wide = memory_at_width(Path(tmp), args.wide_depths) if args.only == "wide" else old.get("memory_at_width")
    loads = {"load_average_at_start": load_start, "load_average_at_end": os.getloadavg()}
    {None: tp, "throughput": tp, "memory": mem, "wide": wide or {}}[args.only].update(loads)
    if args.only is None:
        mem.update(loads)
    result = {"throughput": tp, "memory_vs_depth": mem, **({"memory_at_width": wide} if wide else {}),
              "extrapolation": extrapolate(tp, mem, wide),
              "cpu_count": os.cpu_count(), **loads,
              "note": "shared machine: wall times include waiting for CPU; ratios are from one run"}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    nan = float("nan")
    print(f"apply / (cp -r + sync) speed {tp['apply_over_cp_sync_speed']:.2f}x (target >= 0.5); from a cold page "
          f"cache, fingerprint {tp.get('fingerprint_cold_over_cold_read_time', nan):.2f}x (target <= 1.5) and "
          f"canonicalize {tp.get('canonicalize_cold_over_cold_read_time', nan):.2f}x (target <= 2) one cold read; "
          f"warm, {tp['fingerprint_over_read_time']:.2f}x and {tp['canonicalize_over_read_time']:.2f}x one warm read")
    for row in mem["rows"]:
        print(f"{row['blocks']:>3} blocks: " + ", ".join(
            f"{v} {row[v] / GB:.2f} GB" for v in ("verify", "collect", "same", "canonicalize")))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
