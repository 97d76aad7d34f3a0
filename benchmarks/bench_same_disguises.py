"""`same` against every function-preserving disguise: verdict and p-value per disguise, for the disguised
copy and for a fine-tune under it, and for every combination of two disguises (copies).

The base is the tiny Llama-family model of the provenance tests (d=32, 64 MLP units, 2 layers, 4 query
heads in 2 key/value groups; 200 AdamW steps on the built-in corpus), the fine-tune 150 more steps on
other data (seeded; nothing downloaded). Each disguise is applied to the state dict
(`gaugeport.provenance.disguise.DISGUISES`), its logits are compared with the original's (max relative
difference), and `same base disguised` is run data-free.

    PYTHONPATH=src python benchmarks/bench_same_disguises.py [--out benchmarks/bench_same_disguises.json]
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
BASE_STEPS, FINETUNE_STEPS = 200, 150


def run(work: Path) -> dict:
    import torch

    from gaugeport.core.archspec import get_spec
    from gaugeport.models.tiny import probe_ids
    from gaugeport.provenance.disguise import DISGUISES
    from gaugeport.provenance.same import same
    from gaugeport.study.provenance_runs import finetuned, trained

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    base = trained(0, BASE_STEPS).eval()
    ft = finetuned(base, FINETUNE_STEPS, data_seed=77).eval()
    base.save_pretrained(work / "base")
    spec, cfg = get_spec("llama"), base.config.to_dict()
    ids = probe_ids(base.config.vocab_size)

    def disguised(model: torch.nn.Module, names: tuple[str, ...], seed: int, tag: str) -> tuple[Path, float]:
        sd = model.state_dict()
        for i, name in enumerate(names):
            sd = DISGUISES[name](sd, spec, cfg, seed + i)
        out = type(model)(model.config)
        out.load_state_dict(sd)
        out.eval()
        with torch.no_grad():
            a, b = model(input_ids=ids).logits, out(input_ids=ids).logits
        path = work / tag
        out.save_pretrained(path)
        return path, float((a - b).abs().max() / a.abs().max())

    def row(names: tuple[str, ...], model: torch.nn.Module, seed: int, tag: str) -> dict:
        path, logit_diff = disguised(model, names, seed, tag)
        r = same(work / "base", path)
        shutil.rmtree(path, ignore_errors=True)
        return {"disguise": "+".join(names), "verdict": r.verdict, "p_value": r.p_value, "log10_p": r.log10_p,
                "logits_max_rel_diff_vs_undisguised": logit_diff, "residual": r.residual.get("kind")}

    singles = [{"copy": row((n,), base, 5, "copy"), "finetune": row((n,), ft, 7, "ft")} for n in DISGUISES]
    pairs = [row(p, base, 5, "pair") for p in itertools.combinations(DISGUISES, 2)]
    plain = same(work / "base", _save(ft, work / "ft-plain"))
    return {"singles": singles, "pairs": pairs,
            "pairs_identical": sum(p["verdict"] == "identical" for p in pairs), "n_pairs": len(pairs),
            "undisguised_finetune": {"verdict": plain.verdict, "log10_p": plain.log10_p},
            "seconds": time.perf_counter() - t0}


def _save(model, path: Path) -> Path:  # noqa: ANN001
    model.save_pretrained(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "bench_same_disguises.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="same-disguises-"))
    try:
        res = run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=2))
    tmp.replace(args.out)
    for s in res["singles"]:
        c, f = s["copy"], s["finetune"]
        print(f"{c['disguise']:24s} copy {c['verdict']:12s} log10p {c['log10_p']:8.1f}   "
              f"ft {f['verdict']:12s} log10p {f['log10_p']:8.1f}")
    print(f"pairs identical: {res['pairs_identical']}/{res['n_pairs']}; seconds {res['seconds']:.0f}")


if __name__ == "__main__":
    main()
