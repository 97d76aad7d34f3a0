"""Run every benchmark in benchmarks/, print one table of headline figures, write results.json.

Each `bench_*.py` here is imported and its `main(argv)` called (with `--quick` under `--quick`; a
per-benchmark `--out` into a scratch directory, so tracked result files are not overwritten by a quick
run). A benchmark's full result dict goes to the JSON; the table shows its headline figures, each a
ratio against a baseline measured in the same run where a baseline exists. A benchmark that fails is
reported (and the exit code is 1) without stopping the others. `make bench` runs this script.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gaugeport.core.fileio import atomic_write_json

HERE = Path(__file__).resolve().parent
Row = tuple[str, str, str]  # figure, value, baseline / note


def fmt(x: Any, spec: str = ".3g") -> str:
    return "n/a" if x is None else (format(x, spec) if isinstance(x, int | float) else str(x))


# ---------------------------------------------------------------------- headline figures per benchmark
def rows_function_preservation(r: dict) -> list[Row]:
    kept = max(v["max_abs_logit_diff"] for v in r.values())
    forced = [v["forced_coordinate_signs_max_abs_logit_diff"] for v in r.values()
              if v.get("forced_coordinate_signs_max_abs_logit_diff") is not None]
    rows = [("worst max |dlogit| after a gauge", fmt(kept, ".1e"), f"{len(r)} architectures")]
    if forced:
        rows.append(("LayerNorm with forced per-coordinate signs / gauged", f"{min(forced) / kept:.2g}x",
                     "the break the guard prevents (same run)"))
    return rows


def rows_real_width(r: dict) -> list[Row]:
    rel = max(v["max_rel_logit_diff"] for v in r.values())
    dims = sorted({v["d_model"] for v in r.values()})
    return [("worst relative logit diff at real widths", fmt(rel, ".1e"), f"d = {', '.join(map(str, dims))}")]


def rows_apply_memory(r: dict) -> list[Row]:
    mb = 2**20
    ctx = (f"d={r['d_model']}, {r['total_bytes'] / mb:.0f} MB in {r['n_shards']} shards, "
           f"largest tensor {r['largest_tensor_bytes'] / mb:.0f} MB")
    return [
        ("apply: peak RSS above baseline / largest tensor",
         f"{r['peak_above_baseline_over_largest_tensor']:.2f}x", ctx),
        ("apply: allocated (anonymous) memory above baseline / largest tensor",
         f"{r['peak_anon_above_baseline_over_largest_tensor']:.2f}x", "the rest: the source tensor, mmap'd"),
        ("apply: peak RSS (incl. interpreter) / checkpoint size", f"{r['peak_rss_over_checkpoint']:.2f}x",
         f"baseline {r['baseline_bytes'] / mb:.0f} MB = python + torch"),
    ]


def rows_recovery(r: dict) -> list[Row]:
    rows = []
    for noise, v in r["noise"].items():
        for method, m in v["methods"].items():
            need = m["tokens_to_target"]
            rows.append((f"tokens for {r['target']:.0%} recovery, {method} (noise {noise})",
                         fmt(need, ",") if need else "never",
                         f"final accuracy {m['final_accuracy']:.1%} at {r['budgets'][-1]:,} tokens"))
    return rows


def rows_ray(r: dict) -> list[Row]:
    return [
        (f"ray speed-up, {r['workers']} workers vs 1 process (warm)", f"{r['speedup_warm']:.2f}x",
         f"{r['n_tokens']:,} tokens, d={r['d_model']}; load avg {r.get('load_average_1min_before', 0):.1f} "
         f"on {r.get('cpu_count')} cores"),
        (f"ray speed-up, {r['workers']} workers incl. Ray start", f"{r['speedup_cold']:.2f}x",
         f"start-up {r['ray_start_seconds']:.1f} s"),
        ("ray merged vs single-process moments, max |diff|", fmt(r["max_abs_diff_vs_single"], ".1e"),
         "float64 sums"),
    ]


RATIO_WORDS = ("ratio", "speedup", "overhead")


def rows_generic(r: Any, prefix: str = "") -> list[Row]:
    """Numeric leaves whose key says they are a ratio or speed-up (benchmarks without an extractor)."""
    rows: list[Row] = []
    if isinstance(r, dict):
        for k, v in r.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict | list):
                rows += rows_generic(v, key + ".")
            elif isinstance(v, int | float) and any(w in str(k).lower() for w in RATIO_WORDS):
                rows.append((key, f"{v:.3g}", ""))
    elif isinstance(r, list):
        for i, v in enumerate(r):
            rows += rows_generic(v, f"{prefix}{i}.")
    return rows


def rows_lap(r: Any) -> list[Row]:
    return _delegate(r)


def rows_collect(r: Any) -> list[Row]:
    return _delegate(r)


def rows_provenance(r: dict) -> list[Row]:
    rows: list[Row] = []
    c = r.get("calibration")
    if c:
        rows.append(("same: independent pairs with p >= 0.05", f"{c['independent_ok']}/{c['independent_total']}",
                     f"tiny Llama-style, {c['train_steps']} steps; min p "
                     f"{min(p['p_value'] for p in c['independent_pairs']):.3g}"))
        rows.append(("same: largest p-value of a gauged fine-tune", fmt(max(f["p_value"] for f in c["finetunes"])),
                     f"{len(c['finetunes'])} fine-tunes: "
                     + ", ".join(sorted({f["verdict"] for f in c["finetunes"]}))))
        rows.append(("permutation-only matcher p on a B_d copy", fmt(c["permutation_only_matcher"]["bd_copy"]),
                     f"S_d copy {c['permutation_only_matcher']['sd_copy']:.1e}; same "
                     f"{c['permutation_only_matcher']['same_bd_copy']:.1e}"))
    s = r.get("scale")
    if s:
        rows.append(("same (data-free) / read the weights once", f"{s['same_over_read']:.1f}x",
                     f"d={s['d_model']}, {s['n_layers']} layers; {s['same_s']:.1f} s vs {s['read_once_s']:.1f} s"))
        rows.append(("same: peak memory / checkpoint size", f"{s['peak_over_checkpoint']:.2f}x",
                     f"peak {s['peak_mb']:.0f} MB, {s['peak_above_baseline_mb']:.0f} MB above the child's baseline"))
    return rows


def _delegate(r: Any) -> list[Row]:
    """Benchmarks that name their own headline rows return them under "headline": [[figure, value, note]]."""
    if isinstance(r, dict) and isinstance(r.get("headline"), list):
        return [tuple(map(str, row)) for row in r["headline"]]  # type: ignore[misc]
    return rows_generic(r)


EXTRACTORS: dict[str, Callable[[Any], list[Row]]] = {
    "function_preservation": rows_function_preservation,
    "real_width": rows_real_width,
    "apply_memory": rows_apply_memory,
    "recovery": rows_recovery,
    "ray": rows_ray,
    "lap": rows_lap,
    "match": _delegate,
    "apply_throughput": _delegate,
    "collect": rows_collect,
    "provenance": rows_provenance,
    "cli_startup": _delegate,
}
# Run cheap-to-noisy order: timing benchmarks last would see a warmer page cache; keep a fixed order.
ORDER = ["function_preservation", "real_width", "lap", "match", "collect", "recovery", "apply_memory",
         "apply_throughput", "ray"]


# ---------------------------------------------------------------------- running
def discover() -> list[str]:
    names = [p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py")]
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def load_main(name: str) -> Callable[[list[str]], Any]:
    path = HERE / f"bench_{name}.py"
    spec = importlib.util.spec_from_file_location(f"gaugeport_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # dataclasses and pickling look their module up here
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.main


def bench_argv(name: str, quick: bool, scratch: Path) -> list[str]:
    src = (HERE / f"bench_{name}.py").read_text()
    argv = ["--quick"] if quick and '"--quick"' in src else []
    if name == "real_width" and "--quick" not in argv and not _has_cuda():
        argv.append("--quick")  # real widths need a GPU; on a CPU the 1/8-width shapes
    if '"--out"' in src:
        argv += ["--out", str(scratch / f"{name}.json")]
    return argv


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_one(name: str, quick: bool, scratch: Path) -> dict[str, Any]:
    print(f"\n=== bench_{name} ===", flush=True)
    t0 = time.perf_counter()
    try:
        main = load_main(name)
        argv = bench_argv(name, quick, scratch)
        result = main(argv)
        rows = EXTRACTORS.get(name, rows_generic)(result)
        return {"argv": argv, "seconds": time.perf_counter() - t0, "result": _jsonable(result),
                "headline": [list(r) for r in rows]}
    except (Exception, SystemExit) as exc:  # one broken benchmark must not hide the others' figures
        traceback.print_exc()
        return {"seconds": time.perf_counter() - t0, "error": f"{type(exc).__name__}: {exc}"}


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def environment() -> dict[str, Any]:
    import torch

    return {"date": dt.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
            "torch": torch.__version__, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "load_average_at_start": os.getloadavg(), "platform": platform.platform()}


def print_table(results: dict[str, dict[str, Any]]) -> None:
    rows = [("benchmark", "figure", "value", "baseline / context")]
    for name, r in results.items():
        if "error" in r:
            rows.append((name, "FAILED", "", r["error"][:70]))
        for fig, val, note in r.get("headline", []):
            rows.append((name, fig, val, note))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    print()
    for k, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| benchmark | figure | value | baseline / context |", "|---|---|---|---|"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | FAILED | | {r['error'][:70]} |")
        lines += [f"| {name} | {fig} | {val} | {note} |" for fig, val, note in r.get("headline", [])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="each benchmark's --quick sizes")
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    ap.add_argument("--only", nargs="*", default=None, help="benchmark names (e.g. lap ray); default: all")
    args = ap.parse_args(argv)
    names = [n for n in discover() if not args.only or n in args.only]
    env = environment()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gaugeport-bench-out-") as scratch:
        results = {name: run_one(name, args.quick, Path(scratch)) for name in names}
    print_table(results)
    failed = [n for n, r in results.items() if "error" in r]
    payload = {"quick": args.quick, "environment": env, "total_seconds": time.perf_counter() - t0,
               "benchmarks": results, "table_markdown": markdown_table(results), "failed": failed}
    atomic_write_json(args.out, payload)
    print(f"\nwrote {args.out}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
