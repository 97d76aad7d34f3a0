"""Calibration of `same`'s p-value on independently trained pairs (the null it claims to test).

Groups of tiny models of three architecture families, trained here with AdamW on the built-in
corpus (seeded; nothing downloaded), every pair inside a group compared with `same` data-free:

=============  =========  ==============================================  ===================  =====
group          family     shape                                           training             pairs
=============  =========  ==============================================  ===================  =====
g32            llama      d=32, 64 units, 2 layers, 4 heads in 2 groups   200 steps, own data  10
mha48          llama      d=48, 128 units, 3 layers, 4 heads (MHA)        300 steps, own data  6
same100        llama      d=32, 64 units, 2 layers, GQA                   100 steps, SAME data 10
same400        llama      d=32, 64 units, 2 layers, GQA                   400 steps, SAME data 6
neox32         gpt_neox   d=32, 64 units, 2 layers, 4 heads (LayerNorm)   200 steps, own data  10
neox_same100   gpt_neox   d=32, 64 units, 2 layers                        100 steps, SAME data 10
phi3_32        phi3       d=32, 64 units, 2 layers, fused qkv / gate_up   200 steps, own data  10
phi3_same400   phi3       d=48, 96 units, 2 layers                        400 steps, SAME data 6
=============  =========  ==============================================  ===================  =====

GPT-NeoX is a LayerNorm family (ungated GELU MLP, interleaved fused q/k/v: the residual map is the
data-free signed permutation); Phi-3 is an RMSNorm family with other tensor names (fused
``qkv_proj`` and ``gate_up_proj``: the residual map is chosen by fit after folding).

"Own data": each model sees its own data order (data seed = 1000 + init seed); "same data": one
data order for every model of the group, only the initialisation differs. Under the null every
p-value is uniform on (0, 1): the JSON reports them all, a one-sample Kolmogorov-Smirnov test
against U(0, 1) (statistic and p-value), the fraction below alpha = 1e-3 and 0.05 (the false-positive
rates), the verdicts, and the per-layer z-scores (mean and standard deviation: N(0, 1) under the null).

    PYTHONPATH=src python benchmarks/bench_same_calibration.py [--out benchmarks/bench_same_calibration.json]

``--sample N`` calibrates the path `same` takes at large widths instead (MLPs wider than
``2 * SAMPLE_UNITS``, 4096 units by default): ``SAMPLE_UNITS`` is lowered to ``N`` so that every layer of
these tiny models is tested on a seeded sample of ``N`` units, each matched to its nearest input-side
neighbour (no assignment), exactly as a 7B-width layer is on 2048 of its units; every layer is checked
to have been sampled. JSON in ``benchmarks/bench_same_calibration_sampled.json`` by default.

    PYTHONPATH=src python benchmarks/bench_same_calibration.py --sample 16
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
GROUPS = {  # name: (family, TinyRun overrides, steps, seeds, same data)
    "g32": ("llama", {}, 200, 5, False),
    "mha48": ("llama", {"d_model": 48, "d_ff": 128, "n_layers": 3, "n_heads": 4, "n_kv_heads": 4}, 300, 4, False),
    "same100": ("llama", {}, 100, 5, True),
    "same400": ("llama", {}, 400, 4, True),
    "neox32": ("gpt_neox", {}, 200, 5, False),
    "neox_same100": ("gpt_neox", {}, 100, 5, True),
    "phi3_32": ("phi3", {"n_kv_heads": 4}, 200, 5, False),
    "phi3_same400": ("phi3", {"d_model": 48, "d_ff": 96, "n_kv_heads": 4}, 400, 4, True),
}


def fresh(family: str, seed: int, run):  # noqa: ANN001, ANN201 - a tiny model of ``family`` shaped by ``run``
    from gaugeport.models.tiny import tiny_model
    from gaugeport.study.corpus import tokenizer
    from gaugeport.study.provenance_runs import fresh_model

    if family == "llama":
        return fresh_model(seed, run)
    over = {"hidden_size": run.d_model, "intermediate_size": run.d_ff, "num_attention_heads": run.n_heads,
            "num_hidden_layers": run.n_layers, "vocab_size": tokenizer().vocab_size,
            "max_position_embeddings": run.seq_len, "tie_word_embeddings": False}
    if family != "gpt_neox":
        over.update(num_key_value_heads=run.n_kv_heads, head_dim=run.d_model // run.n_heads)
    return tiny_model(family, seed, **over)


def summary(pairs: list[dict]) -> dict:
    """KS test against U(0, 1) and false-positive rates of a list of pairs' p-values."""
    import numpy as np
    from scipy import stats

    p = np.array([x["p_value"] for x in pairs])
    ks = stats.kstest(p, "uniform")
    return {"n_pairs": len(pairs), "ks_uniform": {"statistic": float(ks.statistic), "p_value": float(ks.pvalue)},
            "fpr_alpha_1e-3": float(np.mean(p < 1e-3)), "fpr_alpha_0.05": float(np.mean(p < 0.05)),
            "min_p": float(p.min()),
            "verdicts": {v: sum(x["verdict"] == v for x in pairs) for v in ("identical", "derived", "independent")}}


def run(workdir: Path, groups: list[str], sample: int | None = None) -> dict:
    import numpy as np
    import torch
    from scipy import stats

    from gaugeport.provenance import same as same_mod
    from gaugeport.provenance.same import same
    from gaugeport.study.provenance_runs import TinyRun, train

    torch.set_num_threads(1)
    if sample is not None:
        same_mod.SAMPLE_UNITS = sample  # wider MLPs (here: all of them) take the sampled, nearest-neighbour path
    pairs = []
    t0 = time.perf_counter()
    for group in groups:
        family, over, steps, seeds, same_data = GROUPS[group]
        run_cfg = TinyRun(**over)
        paths = []
        for s in range(seeds):
            m = fresh(family, 100 + s, run_cfg)
            train(m, steps, data_seed=5000 if same_data else 1000 + s, run=run_cfg)
            p = workdir / f"{group}-{s}"
            m.save_pretrained(p)
            paths.append(p)
        for i, j in itertools.combinations(range(seeds), 2):
            r = same(paths[i], paths[j])
            if sample is not None and not all(lay["mlp_units_sampled"] for lay in r.layers):
                raise RuntimeError(f"{group} {i}-{j}: a layer was not sampled with SAMPLE_UNITS={sample}")
            pairs.append({"units_tested": [lay["mlp_units_tested"] for lay in r.layers],
                          "group": group, "family": family, "a": i, "b": j, "p_value": r.p_value, "verdict": r.verdict,
                          "residual": r.residual["kind"], "z": [lay["z"] for lay in r.layers],
                          "layer_status": [lay["status"] for lay in r.layers]})
    p = np.array([x["p_value"] for x in pairs])
    z = np.concatenate([x["z"] for x in pairs])
    ks = stats.kstest(p, "uniform")
    return {
        "pairs": pairs, "n_pairs": len(pairs), "sample_units": sample,
        "by_family": {f: summary([x for x in pairs if x["family"] == f])
                      for f in dict.fromkeys(x["family"] for x in pairs)},
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
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--groups", nargs="+", choices=list(GROUPS), default=list(GROUPS))
    ap.add_argument("--sample", type=int, default=None,
                    help="calibrate the sampled path: SAMPLE_UNITS lowered to this (every layer sampled)")
    ap.add_argument("--work", type=Path, default=None, help="folder for the temporary checkpoints (default: temp)")
    args = ap.parse_args()
    if args.out is None:
        args.out = HERE / f"bench_same_calibration{'' if args.sample is None else '_sampled'}.json"
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="same-cal-", dir=args.work))
    try:
        res = run(work, args.groups, args.sample)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=2))
    tmp.replace(args.out)
    print(json.dumps({k: v for k, v in res.items() if k != "pairs"}, indent=2))


if __name__ == "__main__":
    main()
