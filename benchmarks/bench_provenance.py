"""Provenance: calibration of `same` on trained tiny models, and its cost at d=4096 against one read.

Calibration (`--part calibration`): five Llama-style models (d=32, 2 layers, GQA) trained 300 steps
from seeds 0..4 give 10 independent pairs; three fine-tunes of seed 0 (200 steps on other data, each
re-saved under a random full gauge) and three gauged copies of it. Reports every p-value and verdict,
and the permutation-only matcher's p-value on a B_d-gauged and an S_d-gauged copy.

Scale (`--part scale`): two synthetic Llama-shaped checkpoints (d=4096, 8 blocks, 11008 MLP units,
32 heads in 8 groups, vocab 32000, bf16): A random, B = A plus noise (a quarter of the weights' scale)
under a random full gauge. In a fresh subprocess: the time to read every weight of both once
(safetensors -> float32), then `same A B` data-free, its wall time and peak memory (VmHWM, and above
the child's own baseline after imports). `--quick`: d=1024, 4 blocks.
"""

from __future__ import annotations

import argparse
import itertools
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
# d, intermediate, layers, heads, kv heads, vocab, shard MB
SHAPES = {"full": (4096, 11008, 8, 32, 8, 32000, 1000), "quick": (1024, 2816, 4, 8, 2, 8000, 200)}


# ---------------------------------------------------------------------- calibration
def calibration(workdir: Path, steps: int = 300, ft_steps: int = 200) -> dict:
    import torch

    from gaugeport.core.apply import apply_gauge_to_checkpoint
    from gaugeport.core.fullgauge import apply_full_gauge_to_checkpoint, random_full_gauge_for
    from gaugeport.core.gauge import SignedPermutation
    from gaugeport.provenance.baseline import permutation_matcher_test
    from gaugeport.provenance.same import same
    from gaugeport.study.provenance_runs import finetuned, trained

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    seeds = range(5)
    models = {}
    for s in seeds:
        m = trained(s, steps)
        m.save_pretrained(workdir / f"seed{s}")
        models[s] = m
    pairs = []
    for i, j in itertools.combinations(seeds, 2):
        r = same(workdir / f"seed{i}", workdir / f"seed{j}")
        pairs.append({"a": i, "b": j, "verdict": r.verdict, "p_value": r.p_value,
                      "layer_z": [lay["z"] for lay in r.layers]})
    fts = []
    for k in range(3):
        native = workdir / f"ft{k}-native"
        finetuned(models[0], ft_steps, data_seed=500 + k).save_pretrained(native)
        apply_full_gauge_to_checkpoint(native, random_full_gauge_for(native, 600 + k), workdir / f"ft{k}",
                                       progress=False)
        r = same(workdir / "seed0", workdir / f"ft{k}")
        fts.append({"finetune": k, "verdict": r.verdict, "p_value": r.p_value, "log10_p": r.log10_p})
    copies = []
    for k in range(3):
        truth = random_full_gauge_for(workdir / "seed0", 700 + k)
        apply_full_gauge_to_checkpoint(workdir / "seed0", truth, workdir / f"copy{k}", progress=False)
        r = same(workdir / "seed0", workdir / f"copy{k}")
        copies.append({"copy": k, "verdict": r.verdict, "p_value": r.p_value, "log10_p": r.log10_p,
                       "exact_gauge": r.gauge == truth})
    g = SignedPermutation.random(32, seed=3)
    apply_gauge_to_checkpoint(workdir / "seed0", g, workdir / "bd", progress=False)
    apply_gauge_to_checkpoint(workdir / "seed0", g.perm_only(), workdir / "sd", progress=False)
    baseline = {"bd_copy": permutation_matcher_test(workdir / "seed0", workdir / "bd")["p_value"],
                "sd_copy": permutation_matcher_test(workdir / "seed0", workdir / "sd")["p_value"],
                "same_bd_copy": same(workdir / "seed0", workdir / "bd").p_value}
    n_ok = sum(p["p_value"] >= 0.05 and p["verdict"] == "independent" for p in pairs)
    return {"independent_pairs": pairs, "independent_ok": n_ok, "independent_total": len(pairs),
            "finetunes": fts, "copies": copies, "permutation_only_matcher": baseline,
            "train_steps": steps, "finetune_steps": ft_steps, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------- scale
def write_pair(root: Path, shape: tuple) -> dict:
    """A (random) and B = gauged (A + noise); both written tensor by tensor."""
    import torch

    from gaugeport.core.checkpoint import INDEX_FILE, SafetensorsStreamWriter
    from gaugeport.core.fullgauge import apply_full_gauge_to_checkpoint, random_full_gauge_for
    from gaugeport.models.synthetic import LlamaShape, llama_config, llama_layout, shard_names

    d, inter, layers, heads, kv, vocab, shard_mb = shape
    ls = LlamaShape(d, inter, layers, heads, kv, vocab, shard_mb)
    shapes = llama_layout(ls)
    shards = shard_names(shapes, 2, shard_mb * MB)
    for tag in ("a", "b-native"):
        (root / tag).mkdir(parents=True)
    weight_map = {}
    gen_a, gen_n = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    writers = {}
    for k, names in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        layout = {n: (torch.bfloat16, shapes[n]) for n in names}
        writers = {tag: SafetensorsStreamWriter(root / tag / file, layout, {"format": "pt"})
                   for tag in ("a", "b-native")}
        for name in writers["a"].order:
            shp = shapes[name]
            t = torch.empty(shp).normal_(1.0 if len(shp) == 1 else 0.0, 0.3 if len(shp) == 1 else 0.02,
                                         generator=gen_a)
            noise = torch.empty(shp).normal_(0.0, 0.3 if len(shp) == 1 else 0.005, generator=gen_n)
            writers["a"].write(name, t.to(torch.bfloat16))
            writers["b-native"].write(name, (t + noise).to(torch.bfloat16))
            weight_map[name] = file
        for w in writers.values():
            w.close()
    for tag in ("a", "b-native"):
        (root / tag / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        (root / tag / "config.json").write_text(json.dumps(llama_config(ls, torch.bfloat16)))
    truth = random_full_gauge_for(root / "b-native", 5)
    apply_full_gauge_to_checkpoint(root / "b-native", truth, root / "b", progress=False)
    shutil.rmtree(root / "b-native")
    total = sum(f.stat().st_size for f in (root / "a").glob("*.safetensors"))
    from gaugeport.core.fullgauge import save_full_gauge

    save_full_gauge(truth, root / "truth.safetensors")
    return {"checkpoint_bytes": total, "d_model": d, "intermediate": inter, "n_layers": layers, "heads": heads,
            "kv_heads": kv, "vocab": vocab}


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def child(root: str) -> None:
    import torch

    from gaugeport.core.checkpoint import Checkpoint
    from gaugeport.core.fullgauge import load_full_gauge
    from gaugeport.provenance.same import same

    base = _status_kb("VmHWM")
    t0 = time.perf_counter()
    total = 0.0
    for tag in ("a", "b"):
        for _, t in Checkpoint.open(Path(root) / tag).iter_tensors():
            total += float(t.float().sum())
    read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = same(Path(root) / "a", Path(root) / "b")
    same_s = time.perf_counter() - t0
    truth = load_full_gauge(Path(root) / "truth.safetensors")
    acc = truth.accuracy(r.gauge) if r.gauge is not None else {}
    print(json.dumps({"read_once_s": read_s, "same_s": same_s, "vmhwm_kb": _status_kb("VmHWM"),
                      "baseline_kb": base, "verdict": r.verdict, "p_value": r.p_value, "log10_p": r.log10_p,
                      "accuracy": acc, "threads": torch.get_num_threads(), "checksum": total}))


def scale(workdir: Path, quick: bool) -> dict:
    shape = SHAPES["quick" if quick else "full"]
    info = write_pair(workdir, shape)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, __file__, "--child", str(workdir)], capture_output=True, text=True,
                         env=env, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res.update(info)
    res["same_over_read"] = res["same_s"] / res["read_once_s"]
    res["peak_mb"] = res["vmhwm_kb"] / 1024
    res["peak_above_baseline_mb"] = (res["vmhwm_kb"] - res["baseline_kb"]) / 1024
    res["peak_over_checkpoint"] = res["vmhwm_kb"] * 1024 / info["checkpoint_bytes"]
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small scale shapes, short training")
    ap.add_argument("--part", choices=("all", "calibration", "scale"), default="all")
    ap.add_argument("--out", type=Path, default=HERE / "bench_provenance.json")
    ap.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child)
        return {}
    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="gp-prov-") as tmp:
        if args.part in ("all", "calibration"):
            (Path(tmp) / "cal").mkdir()
            result["calibration"] = calibration(Path(tmp) / "cal", steps=100 if args.quick else 300,
                                                ft_steps=100 if args.quick else 200)
            print(json.dumps({k: v for k, v in result["calibration"].items() if k != "independent_pairs"}))
        if args.part in ("all", "scale"):
            result["scale"] = scale(Path(tmp) / "scale", args.quick)
            print(json.dumps(result["scale"]))
    from gaugeport.core.fileio import atomic_write_json

    atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
