"""Run by tests/packaging/test_wheel.py with the python of a fresh venv that holds the gaugeport wheel and no
extra: every core verb on files, in-process through the real entry point. Prints one JSON object of facts.

Usage: python wheel_smoke.py WORKDIR
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

import gaugeport
from gaugeport.cli import main
from gaugeport.models.tiny import save_tiny


def run(*argv: object) -> dict[str, object]:
    out, err = io.StringIO(), io.StringIO()
    code: object = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code if exc.code is not None else 0
    return {"code": code, "out": out.getvalue().strip().splitlines(),
            "err": [ln for ln in err.getvalue().splitlines() if ln.startswith(("error:", "hint:"))]}


def main_(work: Path) -> dict[str, object]:
    facts: dict[str, object] = {"gaugeport_file": gaugeport.__file__}
    facts["absent"] = {m: importlib.util.find_spec(m) is None for m in ("sae_lens", "sparsify", "datasets",
                                                                          "matplotlib", "ray", "numba")}
    script = Path(sys.executable).with_name("gaugeport")
    facts["script_version"] = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                                             check=False).stdout.strip()
    a, b = work / "a", work / "b"
    save_tiny("llama", a, seed=0)
    g_path = work / "g.safetensors"
    v: dict[str, dict[str, object]] = {}
    v["inspect"] = run("inspect", a, "--json")
    v["apply"] = run("apply", a, "--random-seed", 3, "--save-gauge", g_path, "--out", b, "--quiet")
    v["verify"] = run("verify", a, b, "--gauge", g_path)
    v["collect"] = run("collect", a, b, "--out", work / "m.safetensors", "--tokens", 2048, "--seq-len", 32,
                       "--quiet")
    v["align"] = run("align", a, b, "--moments", work / "m.safetensors", "--out", work / "g_est.safetensors",
                     "--truth", g_path)
    v["compose"] = run("compose", g_path, g_path, "--out", work / "gg.safetensors")
    v["inverse"] = run("inverse", g_path, "--out", work / "g_inv.safetensors")
    v["merge"] = run("merge", a, b, "--gauge", g_path, "--out", work / "merged", "--quiet")
    v["same"] = run("same", a, b, "--json")
    v["canonicalize"] = run("canonicalize", b, "--out", work / "canon", "--quiet")
    v["fingerprint_a"] = run("fingerprint", a)
    v["fingerprint_b"] = run("fingerprint", b)

    # an SAELens-format SAE directory (cfg.json + sae_weights.safetensors), written without sae_lens
    d = json.loads((a / "config.json").read_text())["hidden_size"]
    gen = torch.Generator().manual_seed(0)
    w = {"W_enc": torch.randn(d, 2 * d, generator=gen), "W_dec": torch.randn(2 * d, d, generator=gen),
         "b_enc": torch.randn(2 * d, generator=gen), "b_dec": torch.randn(d, generator=gen)}
    (work / "sae").mkdir()
    save_file(w, str(work / "sae" / "sae_weights.safetensors"))
    (work / "sae" / "cfg.json").write_text(json.dumps({
        "architecture": "standard", "d_in": d, "d_sae": 2 * d, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none",
        "metadata": {"sae_lens_version": "6.0.0", "hook_name": "blocks.0.hook_resid_post", "model_name": "tiny"}}))
    v["transport_sae"] = run("transport", work / "sae", "--gauge", g_path, "--out", work / "sae_b")
    np.save(work / "vec.npy", w["b_dec"].numpy())
    v["transport_vector"] = run("transport", work / "vec.npy", "--gauge", g_path, "--out", work / "vec_b.npy")
    (work / "claims.json").write_text(json.dumps({"claims": [
        {"name": "unit", "site": "resid_post.0", "kind": "coordinates", "indices": [1]}]}))
    v["audit"] = run("audit", work / "claims.json", "--gauge", g_path, "--out", work / "audit")
    # the optional parts: bad input naming the extra, nothing written
    v["reproduce"] = run("reproduce", "--micro", "--out", work / "study")
    (work / "ds").mkdir()
    (work / "ds" / "dataset_info.json").write_text("{}")
    v["collect_dataset"] = run("collect", a, b, "--data", work / "ds", "--out", work / "m2.safetensors", "--quiet")
    facts["verbs"] = v

    from gaugeport import load_gauge
    from gaugeport.core.fileio import read_safetensors

    g = load_gauge(g_path)
    moved, _ = read_safetensors(work / "sae_b" / "sae_weights.safetensors")
    facts["sae_max_err"] = max(float((moved["W_enc"] - g.apply(w["W_enc"], axis=0)).abs().max()),
                               float((moved["W_dec"] - g.apply(w["W_dec"], axis=1)).abs().max()),
                               float((moved["b_dec"] - g.apply(w["b_dec"])).abs().max()),
                               float((moved["b_enc"] - w["b_enc"]).abs().max()))
    facts["vector_max_err"] = float(np.abs(np.load(work / "vec_b.npy") - g.apply(w["b_dec"].numpy())).max())
    facts["outputs_of_refused"] = sorted(p.name for p in work.iterdir() if p.name in ("study", "m2.safetensors"))
    return facts


if __name__ == "__main__":
    print(json.dumps(main_(Path(sys.argv[1]))))
