"""`make interop`: the real steering and dictionary libraries, each in its own cached virtual environment.

steering-vectors (pins transformers<5), repeng (pins numpy<2) and dictionary-learning (pins nnsight<0.4,
which would replace torch) cannot share gaugeport's environment. For each, in its own venv
(``.interop/<library>``, created on first use, rebuilt when its requirements file changes):

1. the library trains a vector (saves a dictionary) on a tiny Llama A, into a file;
2. gaugeport (this environment) makes B = G A with ``gaugeport apply`` and carries the file into B's
   coordinates with ``gaugeport transport``;
3. the library loads the transported file and applies it to B: B's steered logits must equal A's
   steered logits (logits are gauge-invariant), while the untransported vector applied to B must not.

Prints one line per library and writes ``reports/interop.json``. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LIBRARIES = ("steering-vectors", "repeng", "dictionary-learning")
TOL = 1e-4  # logits / features, float32


def venv(lib: str, cache: Path) -> Path:
    """``cache/<lib>/bin/python``, (re)built when the requirements file changed."""
    req = HERE / f"requirements-{lib}.txt"
    stamp_text = hashlib.sha256(req.read_bytes()).hexdigest()
    root = cache / lib
    stamp = root / ".installed"
    if stamp.is_file() and stamp.read_text().strip() in (stamp_text, ""):  # "": stamped by hand
        return root / "bin" / "python"
    print(f"[{lib}] creating {root} (cached for later runs)", flush=True)
    subprocess.run([os.environ.get("PYTHON", "python3"), "-m", "venv", str(root)], check=True)
    pip = [str(root / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)  # first: no dependency drags in a CUDA build
    subprocess.run([*pip, "-r", str(req)], check=True)
    if lib == "dictionary-learning":  # without its pins (see the requirements file)
        subprocess.run([*pip, "--no-deps", "nnsight==0.3.7", "dictionary-learning==0.1.0"], check=True)
    stamp.write_text(stamp_text)
    return root / "bin" / "python"


def lib_run(python: Path, script: str, *args: object) -> None:
    env = {**os.environ, "PYTHONPATH": str(HERE), "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run([str(python), str(HERE / script), *map(str, args)], check=True, env=env)


def gaugeport(*args: object) -> None:
    subprocess.run([sys.executable, "-c", "from gaugeport.cli import main; main()", *map(str, args)], check=True)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def steering(lib: str, python: Path, work: Path, a: Path, b: Path, gauge: Path) -> dict:
    from gaugeport.core.gauge import load_gauge

    g = load_gauge(gauge)
    script = "steering_vectors_check.py" if lib == "steering-vectors" else "repeng_check.py"
    src, dst = ("sv.pt", "sv_b.pt") if lib == "steering-vectors" else ("cv.gguf", "cv_b.gguf")
    lib_run(python, script, "train", a, work)
    gaugeport("transport", work / src, "--gauge", gauge, "--out", work / dst)
    gaugeport("transport", work / src, "--gauge", gauge, "--out", work / f"perm_{dst}", "--perm-only")
    lib_run(python, script, "apply", b, work / dst, work / "b.pt")
    lib_run(python, script, "apply", b, work / f"perm_{dst}", work / "b_perm.pt")
    ref = torch.load(work / "a_logits.pt", weights_only=True)
    got = torch.load(work / "b.pt", weights_only=True)
    perm = torch.load(work / "b_perm.pt", weights_only=True)
    effect = max_diff(ref["steered"], ref["plain"])
    diff = max_diff(got["steered"], ref["steered"])
    baseline = max_diff(perm["steered"], ref["steered"])
    # the library trained on B itself: the transported vector is G v (mean difference: exactly;
    # repeng's PCA: up to the sign PCA leaves free)
    agree = []
    for layer, v in got["transported"].items():
        w = got["retrained"][int(layer)]
        cos = float(torch.nn.functional.cosine_similarity(v.float(), w.float(), dim=0))
        agree.append(abs(cos) if lib == "repeng" else cos)
    ok = diff <= TOL and baseline > 100 * max(diff, 1e-6) and effect > 10 * TOL and min(agree) > 0.999
    return {"ok": ok, "steered_logits_max_abs_diff_B_vs_A": diff, "steering_effect_on_A_max_abs": effect,
            "perm_only_baseline_max_abs_diff": baseline, "min_cosine_transported_vs_trained_on_B": min(agree),
            "gauge": g.fingerprint()}


def dictionary(python: Path, work: Path, gauge: Path) -> dict:
    from gaugeport.core.gauge import load_gauge

    g = load_gauge(gauge)
    lib_run(python, "dictionary_learning_check.py", "save", work / "dl", g.d)
    for name in ("AutoEncoder", "JumpReluAutoEncoder", "BatchTopKSAE"):
        gaugeport("transport", work / "dl" / name / "ae.pt", "--gauge", gauge, "--out", work / "dl_b" / name / "ae.pt")
    x = torch.randn(256, g.d, generator=torch.Generator().manual_seed(0))
    torch.save(x, work / "x.pt")
    torch.save(g.apply(x, axis=-1), work / "gx.pt")
    lib_run(python, "dictionary_learning_check.py", "check", work / "dl", work / "dl_b", work / "x.pt",
            work / "gx.pt", work / "dl.pt")
    res = torch.load(work / "dl.pt", weights_only=True)
    out = {}
    for name, r in res.items():
        fa, fb = r["features"]
        ra, rb = r["recon"]
        out[name] = {"features_max_abs_diff": max_diff(fa, fb),
                     "reconstruction_max_abs_diff_vs_G": max_diff(rb, g.apply(ra, axis=-1)),
                     "fraction_active": r["fraction_active"]}
    ok = all(v["features_max_abs_diff"] <= TOL and v["reconstruction_max_abs_diff_vs_G"] <= TOL
             and v["fraction_active"] > 0.01 for v in out.values())
    return {"ok": ok, "classes": out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=ROOT / ".interop", help="where the venvs are kept")
    ap.add_argument("--only", nargs="*", choices=LIBRARIES, default=list(LIBRARIES))
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "interop.json")
    args = ap.parse_args(argv)
    from gaugeport.models.tiny import save_tiny

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="gaugeport-interop-") as tmp:
        work = Path(tmp)
        a, b, gauge = work / "a", work / "b", work / "g.safetensors"
        save_tiny("llama", a, seed=0)
        gaugeport("apply", a, "--random-seed", 11, "--save-gauge", gauge, "--out", b, "--quiet")
        for lib in args.only:
            t0 = time.perf_counter()
            try:
                python = venv(lib, args.cache)
                lib_work = work / lib
                lib_work.mkdir()
                results[lib] = (dictionary(python, lib_work, gauge) if lib == "dictionary-learning"
                                else steering(lib, python, lib_work, a, b, gauge))
            except (subprocess.CalledProcessError, OSError) as exc:
                results[lib] = {"ok": False, "error": str(exc)}
            results[lib]["seconds"] = time.perf_counter() - t0
            print(f"{lib:<20} {'PASS' if results[lib]['ok'] else 'FAIL'}  "
                  + json.dumps({k: v for k, v in results[lib].items() if k not in ("ok",)}, default=str), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "numpy": np.__version__, "torch": torch.__version__},
                                   indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
