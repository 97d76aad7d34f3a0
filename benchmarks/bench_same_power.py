"""Power of `same`'s sampled path at Llama-2-7B width: how much noise a derived pair survives.

MLPs wider than ``2 * SAMPLE_UNITS`` units are tested on a seeded sample of ``SAMPLE_UNITS`` of A's
units per layer, each matched to its nearest input-side neighbour in B, and scored against the second
input-side candidate (:func:`gaugeport.estimate.hidden.held_out_statistic`). This benchmark measures
that path's power at the real sample size: synthetic bf16 checkpoints of the shapes of
``bench_same_scale.py`` (d=4096, 11008 MLP units, 32 heads in 8 key/value groups, vocab 32000), two
blocks, written under ``--work`` and deleted pair by pair:

* A: random weights (norm gains of both signs around 1);
* derived at noise ``s``: (A + Gaussian noise of ``s`` times the weights' scale, every tensor) under a
  random full gauge (residual, MLP units with signs, heads), one pair per level of ``--noise``;
* independent: random weights from another seed.

Each pair runs `same A B` data-free in a fresh subprocess. Recorded per pair: verdict, log10 p, the
wall time, and per layer the held-out entry (z, z_uncorrected, units tested, top-1 fraction) with the
layer's status. Computed from them: the Stouffer z, the ratio of corrected to uncorrected z, the per-unit
effect z / sqrt(n), and the z the same per-unit effect would give on 16 units (the sample size of
``bench_same_calibration.py --sample 16``; a projection, since z grows with the square root of the
units tested); and the largest noise still called derived.

These random-weight pairs carry no trained structure: the noise is isotropic and independent of A, so
the figures bound power only for that kind of derivation (a fine-tune moves weights along structured
directions).

    PYTHONPATH=src python benchmarks/bench_same_power.py [--noise 0.25 1 2 4 5.66 8 11.3 16 32] [--work DIR]
    PYTHONPATH=src python benchmarks/bench_same_power.py --quick   # d=1024, 2816 units: a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_same_scale import SHAPES, _write  # noqa: E402

DEFAULT_NOISE = (0.25, 1.0, 2.0, 4.0, 5.66, 8.0, 11.3, 16.0, 32.0)
STRESS_UNITS = 16  # the sample size of the calibration benchmark's stress test (--sample 16)
HELD_OUT_KEYS = ("z", "z_uncorrected", "n", "k", "units", "sampled", "second_candidate_reference", "top1_fraction",
                 "matched_in_score", "matched_out_cos", "null_mean_cos")


def child(a: str, b: str, sample: int | None) -> None:
    """`same a b` with every layer's held-out entry recorded; one JSON line on stdout."""
    import gaugeport.provenance.same as same_mod

    if sample is not None:
        same_mod.SAMPLE_UNITS = sample  # the quick shapes: the 7B sample ratio at d=1024
    held_out: list[dict] = []
    inner = same_mod.held_out_statistic

    def recorded(*args, **kwargs):
        h = inner(*args, **kwargs)
        held_out.append({k: h.get(k) for k in HELD_OUT_KEYS})
        return h

    same_mod.held_out_statistic = recorded
    t0 = time.perf_counter()
    r = same_mod.same(a, b)
    wall = time.perf_counter() - t0
    layers = []
    for lay, h in zip(r.layers, held_out, strict=True):
        if lay["z"] != h["z"]:
            raise RuntimeError(f"layer {lay['layer']}: recorded held-out z {h['z']} is not the reported {lay['z']}")
        layers.append({"layer": lay["layer"], "status": lay["status"], "log10_p": math.log10(lay["p_value"])
                       if lay["p_value"] > 0 else None, "matched_early": lay["mlp_mean_confidence"] is not None, **h})
    print(json.dumps({"verdict": r.verdict, "log10_p": r.log10_p, "alpha": r.alpha, "same_s": wall,
                      "residual": r.residual.get("kind"),
                      "residual_fingerprint": r.residual.get("fingerprint"), "layers": layers}))


def summarise(rec: dict) -> dict:
    """Figures computed from one pair's per-layer entries."""
    lays = [x for x in rec["layers"] if x["n"]]
    zs = [x["z"] for x in lays]
    zu = [x["z_uncorrected"] for x in lays]
    out = {
        "stouffer_z": sum(zs) / math.sqrt(len(zs)) if zs else 0.0,
        "mean_layer_z": sum(zs) / len(zs) if zs else None,
        "mean_layer_z_uncorrected": sum(zu) / len(zu) if zu else None,
        "z_over_uncorrected": [z / u if u else None for z, u in zip(zs, zu, strict=True)],
        "effect_per_unit": [x["z"] / math.sqrt(x["n"]) for x in lays],  # z / sqrt(n)
        "z_at_stress_units": [x["z"] * math.sqrt(STRESS_UNITS / x["n"]) for x in lays],
        "layers_derived": sum(x["status"] == "derived" for x in rec["layers"]),
        "all_sampled": all(x["sampled"] for x in lays) and bool(lays),
    }
    return out


def run_pair(a: Path, b: Path, sample: int | None) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, __file__, "--child", str(a), str(b)] + ([] if sample is None else ["--sample", str(sample)])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:], "process_s": time.perf_counter() - t0}
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    rec["process_s"] = time.perf_counter() - t0
    rec.update(summarise(rec))
    return rec


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="d=1024 shapes, sample at the 7B ratio (a smoke run)")
    ap.add_argument("--noise", type=float, nargs="+", default=list(DEFAULT_NOISE),
                    help="noise levels, relative to the weights' scale")
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=None, help="folder for the temporary checkpoints (default: temp)")
    ap.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--sample", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child, args.sample)
        return {}
    from gaugeport.core.fullgauge import apply_full_gauge_to_checkpoint, random_full_gauge_for
    from gaugeport.provenance.same import SAMPLE_UNITS

    d, inter, heads, kv, vocab = shape = SHAPES["quick" if args.quick else "full"]
    d7, inter7 = SHAPES["full"][:2]
    # the quick shapes are narrower than 2 * SAMPLE_UNITS: sample them at the 7B ratio instead
    sample = None if inter > 2 * SAMPLE_UNITS else max(2, round(inter * SAMPLE_UNITS / inter7))
    result: dict = {"shape": {"d_model": d, "intermediate": inter, "heads": heads, "kv_heads": kv, "vocab": vocab,
                              "dtype": "bfloat16", "blocks": args.blocks},
                    "sample_units": SAMPLE_UNITS if sample is None else sample, "stress_units": STRESS_UNITS,
                    "pairs": []}
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="same-power-", dir=args.work))
    t_all = time.perf_counter()
    try:
        a = _write(work, "a", shape, args.blocks, seed=0)
        for i, s in enumerate(sorted(args.noise)):
            t0 = time.perf_counter()
            # seeds from the level, so a pair does not change with the other levels asked for
            native = _write(work, f"native-{i}", shape, args.blocks, seed=10 + round(100 * s), base=a, noise=s)
            g = random_full_gauge_for(native, 1 + round(100 * s))
            b = apply_full_gauge_to_checkpoint(native, g, work / f"derived-{i}", progress=False)
            shutil.rmtree(native)
            prep = time.perf_counter() - t0
            rec = {"kind": "derived", "noise": s, "write_s": prep, **run_pair(a, b, sample)}
            # the residual map `same` fitted, against the one applied (either direction of the convention)
            rec["residual_recovered"] = rec.get("residual_fingerprint") in (g.residual.fingerprint(),
                                                                           g.residual.inverse().fingerprint())
            shutil.rmtree(b)
            result["pairs"].append(rec)
            print(json.dumps({k: rec.get(k) for k in ("kind", "noise", "verdict", "log10_p", "stouffer_z",
                                                       "mean_layer_z", "mean_layer_z_uncorrected", "same_s")}),
                  flush=True)
        b = _write(work, "independent", shape, args.blocks, seed=2)
        rec = {"kind": "independent", "noise": None, **run_pair(a, b, sample)}
        shutil.rmtree(b)
        result["pairs"].append(rec)
        print(json.dumps({k: rec.get(k) for k in ("kind", "verdict", "log10_p", "stouffer_z", "same_s")}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    derived = [p for p in result["pairs"] if p["kind"] == "derived"]
    called = [p["noise"] for p in derived if p.get("verdict") == "derived"]
    missed = [p["noise"] for p in derived if p.get("verdict") not in (None, "derived")]
    result["largest_noise_called_derived"] = max(called) if called else None
    result["smallest_noise_called_independent"] = min(missed) if missed else None
    result["total_s"] = time.perf_counter() - t_all
    out = args.out or HERE / ("bench_same_power_quick.json" if args.quick else "bench_same_power.json")
    from gaugeport.core.fileio import atomic_write_json

    atomic_write_json(out, result, force=True)
    return result


if __name__ == "__main__":
    main()
