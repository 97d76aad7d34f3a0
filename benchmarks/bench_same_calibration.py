"""Calibration of `same`'s p-value on independently trained pairs (the null it claims to test).

Four groups of tiny Llama-family models, trained here with AdamW on the built-in corpus (seeded;
nothing downloaded), every pair inside a group compared with `same` data-free:

=========  ====================================================  ===================  =====
group      shape                                                  training             pairs
=========  ====================================================  ===================  =====
g32        d=32, 64 units, 2 layers, 4 heads in 2 groups (GQA)    200 steps, own data  10
mha48      d=48, 128 units, 3 layers, 4 heads, 4 groups (MHA)     300 steps, own data  6
same100    d=32, 64 units, 2 layers, GQA                          100 steps, SAME data 10
same400    d=32, 64 units, 2 layers, GQA                          400 steps, SAME data 6
=========  ====================================================  ===================  =====

"Own data": each model sees its own data order (data seed = 1000 + init seed); "same data": one
data order for every model of the group, only the initialisation differs. Under the null every
p-value is uniform on (0, 1): the JSON reports them all, a one-sample Kolmogorov-Smirnov test
against U(0, 1) (statistic and p-value), the fraction below alpha = 1e-3 and 0.05 (the false-positive
rates), the verdicts, and the per-layer z-scores (mean and standard deviation: N(0, 1) under the null).

    PYTHONPATH=src python benchmarks/bench_same_calibration.py [--out benchmarks/bench_same_calibration.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GROUPS = {  # name: (TinyRun overrides, steps, seeds, same data)
    "g32": ({}, 200, 5, False),
    "mha48": ({"d_model": 48, "d_ff": 128, "n_layers": 3, "n_heads": 4, "n_kv_heads": 4}, 300, 4, False),
    "same100": ({}, 100, 5, True),
    "same400": ({}, 400, 4, True),
}


def run(workdir: Path) -> dict:
    import numpy as np
    import torch
    from scipy import stats

    from gaugeport.provenance.same import same
    from gaugeport.study.provenance_runs import TinyRun, fresh_model, train

    torch.set_num_threads(1)
    pairs = []
    t0 = time.perf_counter()
    for group, (over, steps, seeds, same_data) in GROUPS.items():
        run_cfg = TinyRun(**over)
        paths = []
        for s in range(seeds):
            m = fresh_model(100 + s, run_cfg)
            train(m, steps, data_seed=5000 if same_data else 1000 + s, run=run_cfg)
            p = workdir / f"{group}-{s}"
            m.save_pretrained(p)
            paths.append(p)
        for i, j in itertools.combinations(range(seeds), 2):
            r = same(paths[i], paths[j])
            pairs.append({"group": group, "a": i, "b": j, "p_value": r.p_value, "verdict": r.verdict,
                          "residual": r.residual["kind"], "z": [lay["z"] for lay in r.layers],
                          "layer_status": [lay["status"] for lay in r.layers]})
    p = np.array([x["p_value"] for x in pairs])
    z = np.concatenate([x["z"] for x in pairs])
    ks = stats.kstest(p, "uniform")
    return {
        "pairs": pairs, "n_pairs": len(pairs),
        "ks_uniform": {"statistic": float(ks.statistic), "p_value": float(ks.pvalue)},
        "fpr_alpha_1e-3": float(np.mean(p < 1e-3)), "fpr_alpha_0.05": float(np.mean(p < 0.05)),
        "verdicts": {v: sum(x["verdict"] == v for x in pairs) for v in ("identical", "derived", "independent")},
        "layers_called_derived": sum(s == "derived" for x in pairs for s in x["layer_status"]),
        "layer_z_mean": float(z.mean()), "layer_z_sd": float(z.std()), "n_layer_z": int(z.size),
        "p_deciles": [float(q) for q in np.quantile(p, np.linspace(0.1, 0.9, 9))],
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "bench_same_calibration.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="same-cal-"))
    try:
        res = run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=2))
    tmp.replace(args.out)
    print(json.dumps({k: v for k, v in res.items() if k != "pairs"}, indent=2))


if __name__ == "__main__":
    main()
