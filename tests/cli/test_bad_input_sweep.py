"""The bad-input sweep: one row per case an attacker or a careless user tried.

Each row builds its inputs in a fresh workspace, runs ``gaugeport ARGS`` through the real entry
point and checks: the exit code, a fragment of the message, an ``error:`` line with a ``hint:``
line and no traceback, and that the workspace is byte-for-byte what it was before (nothing written,
no input changed, no temp litter). To add a case, add a row.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from gaugeport.core.gauge import SignedPermutation, save_gauge


def tree_state(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (symlinks not followed) with its kind, mode and content hash."""
    state = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            state[rel] = f"link:{os.readlink(p)}"
        elif p.is_dir():
            state[rel] = "dir"
        else:
            state[rel] = f"file:{p.stat().st_mode & 0o777:o}:{hashlib.sha256(p.read_bytes()).hexdigest()}"
    return state


@dataclass
class Workspace:
    root: Path
    tiny: Callable[..., Path]
    env: dict[str, str] = field(default_factory=dict)  # set while the command runs

    def ckpt(self, name: str = "a", model: str = "llama", seed: int = 0) -> Path:
        dst = self.root / name
        dst.mkdir(parents=True)
        for p in self.tiny(model, seed).iterdir():
            (dst / p.name).write_bytes(p.read_bytes())
        return dst

    def gauge(self, name: str = "g.safetensors", d: int = 32, seed: int = 0) -> Path:
        return save_gauge(SignedPermutation.random(d, seed=seed), self.root / name)

    def file(self, name: str, content: str | bytes = "") -> Path:
        p = self.root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
        return p

    def edit_config(self, ckpt: Path, **changes: object) -> Path:
        cfg = json.loads((ckpt / "config.json").read_text())
        cfg.update(changes)
        (ckpt / "config.json").write_text(json.dumps(cfg))
        return ckpt

    def shard(self, ckpt: Path, n: int = 2) -> Path:
        """Split ckpt/model.safetensors into ``n`` shards with an index."""
        tensors = load_file(str(ckpt / "model.safetensors"))
        (ckpt / "model.safetensors").unlink()
        names = sorted(tensors)
        weight_map = {}
        for i in range(n):
            shard = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            part = {k: tensors[k] for k in names[i::n]}
            save_file(part, str(ckpt / shard), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, shard))
        self.index(ckpt, weight_map)
        return ckpt

    def index(self, ckpt: Path, weight_map: object) -> None:
        (ckpt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    def weight_map(self, ckpt: Path) -> dict[str, str]:
        return json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]

    def poison(self, ckpt: Path, name: str, value: float) -> Path:
        tensors = load_file(str(ckpt / "model.safetensors"))
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[3] = value
        save_file(tensors, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
        return ckpt

    def reserved(self, name: str) -> Path:
        """``name`` reserved by another running gaugeport process (its reservation file, as that run made it)."""
        from gaugeport.core.fileio import TMP_DIR_NAME, _lock_name

        lock = self.root / TMP_DIR_NAME / _lock_name(name)
        lock.parent.mkdir(exist_ok=True)
        lock.write_text(f"{os.getppid()}\n")  # a live process that is not this one
        return self.root / name

    def dir_with_file(self, name: str) -> Path:
        return self.file(f"{name}/keep.txt", "precious").parent

    def raw_gauge(self, name: str, perm: torch.Tensor, signs: torch.Tensor, **meta: str) -> Path:
        p = self.root / name
        metadata = {"format": "gaugeport.signed_permutation", "version": "1", "d": str(perm.numel()), **meta}
        save_file({"perm": perm, "signs": signs}, str(p), metadata=metadata)
        return p


# ---------------------------------------------------------------------------------------------- cases
def _traversal(w: Workspace, escape: str) -> list[object]:
    """A sharded checkpoint whose index names its first shard by ``escape``; the shard is moved there."""
    a = w.shard(w.ckpt("deep/a"))
    wm = w.weight_map(a)
    first = sorted(set(wm.values()))[0]
    target = (a / escape).resolve()
    if w.root.resolve() in target.parents:  # the crafted shard really is where the name points
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((a / first).read_bytes())
        (a / first).unlink()
    w.index(a, {k: (escape if v == first else v) for k, v in wm.items()})
    return ["apply", a, "--random-seed", "0", "--out", w.root / "deep" / "out"]


def _nan(w: Workspace, verb: str, value: float) -> list[object]:
    a = w.poison(w.ckpt("a"), "model.layers.0.mlp.down_proj.weight", value)
    if verb == "inspect":
        return ["inspect", a]
    if verb == "apply":
        return ["apply", a, "--random-seed", "0", "--out", w.root / "out"]
    b = w.ckpt("b", seed=1)
    return ["merge", b, a, "--gauge", w.gauge(), "--out", w.root / "out", "--quiet"]


def _wrong_shard(w: Workspace) -> list[object]:
    a = w.shard(w.ckpt("a"))
    wm = w.weight_map(a)
    first = sorted(wm)[0]
    wm[first] = next(s for s in sorted(set(wm.values())) if s != wm[first])
    w.index(a, wm)
    return ["apply", a, "--random-seed", "0", "--out", w.root / "out"]


def _index_lists_absent(w: Workspace) -> list[object]:
    a = w.shard(w.ckpt("a"))
    wm = w.weight_map(a)
    wm["model.layers.9.mlp.up_proj.weight"] = sorted(set(wm.values()))[0]
    w.index(a, wm)
    return ["apply", a, "--random-seed", "0", "--out", w.root / "out"]


def _hidden_size_disagrees(w: Workspace) -> list[object]:
    a = w.edit_config(w.ckpt("a"), hidden_size=48)
    return ["apply", a, "--gauge", w.gauge(d=48), "--out", w.root / "out"]


def _symlinked_out(w: Workspace) -> list[object]:
    a = w.ckpt("a")
    (w.root / "alias").symlink_to(a)
    return ["apply", a, "--random-seed", "0", "--out", w.root / "alias", "--force"]


def _symlinked_save_gauge(w: Workspace) -> list[object]:
    a = w.ckpt("a")
    (w.root / "g.safetensors").symlink_to(a / "model.safetensors")
    return ["apply", a, "--random-seed", "0", "--save-gauge", w.root / "g.safetensors", "--out", w.root / "b",
            "--force"]


def _merge_hidden_size_disagrees(w: Workspace) -> list[object]:
    a, b = w.edit_config(w.ckpt("a"), hidden_size=48), w.edit_config(w.ckpt("b", seed=1), hidden_size=48)
    return ["merge", a, b, "--gauge", w.gauge(d=48), "--out", w.root / "out", "--quiet"]


def _hardlinked_gauge(w: Workspace) -> list[object]:
    g = w.gauge()
    os.link(g, w.root / "g2.safetensors")
    return ["transport", w.file("v.npy", _npy(np.ones(32, np.float32))), "--gauge", g,
            "--out", w.root / "g2.safetensors", "--force"]


def _npy(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _npy_lying_header(shape: tuple[int, ...], dtype: str = "<i8") -> bytes:
    """A .npy whose header promises ``shape`` but that holds 64 bytes of data."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + bytes(64)


def _bad_signs(w: Workspace, value: int, dtype: torch.dtype = torch.int8) -> Path:
    signs = torch.ones(32, dtype=dtype)
    signs[5] = value
    return w.raw_gauge("bad.safetensors", torch.randperm(32, generator=torch.Generator().manual_seed(0)), signs)


def _vector(w: Workspace) -> Path:
    return w.file("v.npy", _npy(np.ones(32, np.float32)))


def _sae(w: Workspace, d_in_cfg: int = 32, drop: str | None = None) -> Path:
    sae = w.root / "sae"
    sae.mkdir()
    tensors = {"W_enc": torch.randn(32, 8), "b_enc": torch.zeros(8), "W_dec": torch.randn(8, 32),
               "b_dec": torch.zeros(32)}
    save_file({k: v for k, v in tensors.items() if k != drop}, str(sae / "sae_weights.safetensors"))
    (sae / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": d_in_cfg, "d_sae": 8}))
    return sae


def _sparsify(w: Workspace, drop: str | None = None, **cfg: object) -> list[object]:
    """A sparsify hookpoint directory (8 latents on a 32-wide stream), its cfg.json changed by ``cfg``."""
    sae = w.root / "layers.1"
    sae.mkdir()
    tensors = {"encoder.weight": torch.randn(8, 32), "encoder.bias": torch.zeros(8), "W_dec": torch.randn(8, 32),
               "b_dec": torch.zeros(32)}
    save_file({k: v for k, v in tensors.items() if k != drop}, str(sae / "sae.safetensors"))
    (sae / "cfg.json").write_text(json.dumps({"expansion_factor": 32, "normalize_decoder": True, "num_latents": 8,
                                              "k": 4, "d_in": 32, **cfg}))
    return ["transport", sae, "--gauge", w.gauge(), "--out", w.root / "o"]


def _hub(w: Workspace, ref: str | None = None) -> Path:
    """A hub cache holding org/tiny at commit 'a' * 40 (its refs/main changed to ``ref``), and a checkpoint
    outside the cache, ``ws/evil``, that a crafted ref could point at."""
    import hashlib

    hub = w.root / "hf" / "hub"
    repo = hub / "models--org--tiny"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in sorted(w.tiny("llama", 0).iterdir()):
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40 if ref is None else ref)
    w.ckpt("evil")
    w.env.update(HF_HUB_CACHE=str(hub), HF_HUB_OFFLINE="1")
    return hub


def _via(w: Workspace, hop: str) -> list[object]:
    """align with one intermediate checkpoint named by the relative path ``hop`` (missing), from the workspace."""
    w.ckpt("a"), w.ckpt("b", seed=1), (w.root / "ckpt").mkdir()
    w.env.update(HF_HUB_CACHE=str(w.root / "no-hub-cache"), HF_HUB_OFFLINE="1")
    return ["align", "a", "b", "--via", hop, "--data", "builtin", "--tokens", "64", "--seq-len", "16",
            "--out", "g.safetensors"]


def _evil_pt(w: Workspace) -> Path:
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(w.root / "pwned"),))

    return w.file("evil.pt", pickle.dumps(Evil()))


def _compose_bad_confidence(w: Workspace) -> list[object]:
    g = SignedPermutation.random(32, seed=0)
    p = w.root / "g1.safetensors"
    save_file({"perm": torch.from_numpy(g.perm.copy()), "signs": torch.from_numpy(g.signs.copy()),
               "confidence": torch.ones(7)}, str(p),
              metadata={"format": "gaugeport.signed_permutation", "version": "1", "d": "32"})
    return ["compose", p, w.gauge("g2.safetensors", seed=1), "--out", w.root / "o.safetensors"]


def _long_rows(w: Workspace, verb: str) -> list[object]:
    a, b = w.ckpt("a", model="gpt2"), w.ckpt("b", model="gpt2", seed=1)
    if verb == "verify":
        ids = w.file("ids.npy", _npy(np.ones((1, 200), np.int64)))
        return ["verify", a, b, "--data", ids]
    return ["align", a, b, "--data", "builtin", "--tokens", "400", "--seq-len", "200", "--out", w.root / "g"]


def _full_gauge(w: Workspace, **meta: str | None) -> Path:
    """A version-2 (full) gauge file for the tiny llama, its metadata changed by ``meta`` (None: key removed)."""
    from safetensors import safe_open

    from gaugeport.core.fullgauge import FullGauge, hidden_dims_for, save_full_gauge

    cfg = json.loads((w.tiny("llama", 0) / "config.json").read_text())
    made = save_full_gauge(FullGauge.random(32, hidden_dims_for(cfg), seed=0), w.root / "made.safetensors")
    with safe_open(str(made), framework="pt") as f:
        metadata = {**(f.metadata() or {}), **meta}
    tensors = load_file(str(made))
    made.unlink()
    p = w.root / "full.safetensors"
    save_file(tensors, str(p), metadata={k: v for k, v in metadata.items() if v is not None})
    return p


def _dataset(w: Workspace, rows: list[list[object]], escape: str | None = None, dtype: str | None = None) -> Path:
    """A ``datasets.save_to_disk`` directory with an ``input_ids`` column; ``escape``: its state.json then
    names its data file by that path (the file moved there)."""
    import datasets

    ds = w.root / "ds"
    if dtype is None:
        datasets.Dataset.from_dict({"input_ids": rows}).save_to_disk(str(ds))
    else:  # an explicit arrow type (ids past int64 need uint64)
        import pyarrow as pa

        column = pa.array([np.array(r, dtype=dtype) for r in rows], type=pa.list_(pa.from_numpy_dtype(dtype)))
        datasets.Dataset(pa.table({"input_ids": column})).save_to_disk(str(ds))
    if escape is not None:
        state = json.loads((ds / "state.json").read_text())
        name = state["_data_files"][0]["filename"]
        target = (ds / escape).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        (ds / name).rename(target)
        state["_data_files"][0]["filename"] = escape
        (ds / "state.json").write_text(json.dumps(state))
    return ds


def _align_data(w: Workspace, data: Path, tokens: int = 32) -> list[object]:
    return ["align", w.ckpt("a"), w.ckpt("b", seed=1), "--data", data, "--tokens", str(tokens), "--seq-len", "8",
            "--out", w.root / "g"]


def _fp8(w: Workspace, scale: float | None = None, **quant: object) -> Path:
    """The tiny llama with one FP8 weight (16 x 16 scale blocks); ``scale`` overrides every scale."""
    a = w.ckpt("fp8")
    tensors = load_file(str(a / "model.safetensors"))
    name = "model.layers.0.mlp.down_proj.weight"
    weight = tensors[name]
    s = float(weight.abs().max()) / 448.0
    tensors[name] = (weight / s).to(torch.float8_e4m3fn)
    rows, cols = weight.shape
    tensors[name + "_scale_inv"] = torch.full((-(-rows // 16), -(-cols // 16)), s if scale is None else scale)
    save_file(tensors, str(a / "model.safetensors"), metadata={"format": "pt"})
    return w.edit_config(a, quantization_config={"quant_method": "fp8", "weight_block_size": [16, 16], **quant})


def _dequantize(w: Workspace, ckpt: Path, dtype: str = "bf16", quiet: bool = True) -> list[object]:
    return ["apply", ckpt, "--dequantize", dtype, "--random-seed", "0", "--out", w.root / "o",
            *(["--quiet"] if quiet else [])]


def _gptq_config(w: Workspace, **quant: object) -> Path:
    return w.edit_config(w.ckpt("q"), quantization_config={"quant_method": "gptq", "bits": 4, "group_size": 16,
                                                           **quant})


def _trainer_with_bad_gauge(w: Workspace) -> list[object]:
    run = w.ckpt("run/checkpoint-1")
    (run / "optimizer.pt").write_bytes(b"")
    return ["transport", run, "--gauge", _bad_signs(w, 0), "--out", w.root / "out"]


CLAIMS = json.dumps({"claims": [{"name": "c", "site": "resid_post.0", "kind": "coordinates", "indices": [1]}]})

# id -> (build argv in a workspace, expected exit code, expected message fragment)
CASES: dict[str, tuple[Callable[[Workspace], list[object]], int, str]] = {
    # 1. path traversal through the shard index
    "index-shard-parent-traversal": (lambda w: _traversal(w, "../x.safetensors"), 2, "not a plain *.safetensors"),
    "index-shard-deep-traversal": (lambda w: _traversal(w, "../../../ws/x.safetensors"), 2, "not a plain"),
    "index-shard-absolute-path": (lambda w: _traversal(w, "/tmp/x.safetensors"), 2, "not a plain"),
    "index-shard-subdirectory": (lambda w: _traversal(w, "sub/x.safetensors"), 2, "not a plain"),
    "index-shard-not-safetensors": (lambda w: _traversal(w, "weights.bin"), 2, "not a plain *.safetensors"),
    # 2. --force never destroys an input; outputs never collide
    "apply-save-gauge-into-input": (
        lambda w: ["apply", w.ckpt(), "--random-seed", "0", "--save-gauge", w.root / "a" / "model.safetensors",
                   "--out", w.root / "b", "--force"], 2, "lies inside the input"),
    "apply-out-is-save-gauge": (
        lambda w: ["apply", w.ckpt(), "--random-seed", "0", "--save-gauge", w.root / "o", "--out", w.root / "o"],
        2, "would overwrite each other"),
    "apply-out-is-input-force": (
        lambda w: ["apply", w.ckpt(), "--random-seed", "0", "--out", w.root / "a", "--force"], 2, "is the input"),
    "apply-out-contains-input-force": (
        lambda w: ["apply", w.ckpt("d/a"), "--random-seed", "0", "--out", w.root / "d", "--force"], 2,
        "contains the input"),
    "apply-out-symlink-to-input": (_symlinked_out, 2, "the input"),
    "apply-save-gauge-symlink-into-input": (_symlinked_save_gauge, 2, "overlaps the input"),
    "transport-out-is-gauge-force": (
        lambda w: ["transport", w.file("v.npy", _npy(np.ones(32, np.float32))), "--gauge", w.gauge(),
                   "--out", w.root / "g.safetensors", "--force"], 2, "is the input"),
    "transport-out-hardlink-of-gauge": (_hardlinked_gauge, 2, "is the input"),
    "compose-out-is-input-force": (
        lambda w: ["compose", w.gauge("g1.safetensors"), w.gauge("g2.safetensors", seed=1),
                   "--out", w.root / "g2.safetensors", "--force"], 2, "is the input"),
    "audit-out-is-claims-force": (
        lambda w: ["audit", w.file("c.json", CLAIMS), "--d", "32", "--out", w.root / "c.json", "--force"], 2,
        "is the input"),
    "align-report-is-out": (
        lambda w: ["align", w.ckpt("a"), w.ckpt("b", seed=1), "--method", "weights", "--out", w.root / "g",
                   "--report", w.root / "g"], 2, "would overwrite each other"),
    "align-out-into-input-checkpoint": (
        lambda w: ["align", w.ckpt("a"), w.ckpt("b", seed=1), "--method", "weights",
                   "--out", w.root / "b" / "g.safetensors", "--force"], 2, "lies inside the input"),
    "collect-out-is-data-force": (
        lambda w: ["collect", w.ckpt("a"), w.ckpt("b", seed=1), "--data", w.file("t.npy", _npy(np.ones((2, 8),
                   np.int64))), "--out", w.root / "t.npy", "--force"], 2, "is the input"),
    # 2b. one output-ownership rule: reserved before any work, created exclusively, replaced (with --force)
    #     only by the same kind; a directory is never deleted to make room for a file
    "apply-out-reserved-by-a-running-apply": (
        lambda w: ["apply", w.ckpt(), "--random-seed", "0", "--out", w.reserved("out")], 2,
        "being written by another gaugeport run"),
    "apply-out-reserved-force": (
        lambda w: ["apply", w.ckpt(), "--random-seed", "0", "--out", w.reserved("out"), "--force"], 2,
        "being written by another gaugeport run"),
    "apply-save-gauge-reserved": (
        lambda w: ["apply", w.ckpt(), "--random-seed", "0", "--save-gauge", w.reserved("g.safetensors"),
                   "--out", w.root / "b"], 2, "being written by another"),
    "transport-out-reserved": (
        lambda w: ["transport", _vector(w), "--gauge", w.gauge(), "--out", w.reserved("o.npy")], 2,
        "being written by another"),
    "compose-out-reserved": (
        lambda w: ["compose", w.gauge("g1.safetensors"), w.gauge("g2.safetensors", seed=1),
                   "--out", w.reserved("o.safetensors")], 2, "being written by another"),
    "apply-save-gauge-directory-force": (
        lambda w: ["apply", w.ckpt(), "--random-seed", "0", "--save-gauge", w.dir_with_file("gdir"),
                   "--out", w.root / "b", "--force"], 2, "never replaces a directory with a file"),
    "apply-full-save-gauge-directory-force": (
        lambda w: ["apply", w.ckpt(), "--random-seed", "0", "--full", "--save-gauge", w.dir_with_file("gdir"),
                   "--out", w.root / "b", "--force"], 2, "never replaces a directory with a file"),
    "transport-out-directory-force": (
        lambda w: ["transport", _vector(w), "--gauge", w.gauge(), "--out", w.dir_with_file("o.npy"), "--force"],
        2, "never replaces a directory with a file"),
    "compose-out-directory-force": (
        lambda w: ["compose", w.gauge("g1.safetensors"), w.gauge("g2.safetensors", seed=1),
                   "--out", w.dir_with_file("o.safetensors"), "--force"], 2, "never replaces a directory"),
    "apply-out-is-a-file-force": (
        lambda w: ["apply", w.ckpt(), "--random-seed", "0", "--out", w.file("notes.txt", "mine"), "--force"], 2,
        "never replaces a file with a directory"),
    "out-under-a-file": (
        lambda w: ["apply", w.ckpt(), "--random-seed", "0", "--out", w.file("f.txt", "x") / "sub"], 2,
        "is a file, not a directory"),
    # 4. NaN / Inf weights are refused with the tensor's name
    "inspect-nan-weight": (lambda w: _nan(w, "inspect", float("nan")), 2, "down_proj.weight' in"),
    "apply-nan-weight": (lambda w: _nan(w, "apply", float("nan")), 2, "contains NaN"),
    "apply-inf-weight": (lambda w: _nan(w, "apply", float("inf")), 2, "contains infinite"),
    "merge-nan-weight": (lambda w: _nan(w, "merge", float("nan")), 2, "model.layers.0.mlp.down_proj.weight"),
    # 5. config and tensors agree
    "config-hidden-size-disagrees": (_hidden_size_disagrees, 2, "says the hidden size is 48"),
    "merge-config-hidden-size-disagrees": (_merge_hidden_size_disagrees, 2, "says the hidden size is 48"),
    "verify-nan-weight-without-gauge": (
        lambda w: ["verify", w.ckpt("a"), w.poison(w.ckpt("b"), "model.layers.0.mlp.down_proj.weight",
                   float("nan"))], 2, "model B produced NaN or infinite logits"),
    "index-maps-tensor-to-wrong-shard": (_wrong_shard, 2, "which does not contain it"),
    "index-lists-absent-tensor": (_index_lists_absent, 2, "model.layers.9.mlp.up_proj.weight"),
    # 5b. config numbers checked against the tensors before any work sized by them
    "apply-full-num-layers-50000000": (
        lambda w: ["apply", w.edit_config(w.ckpt(), num_hidden_layers=50_000_000), "--full", "--random-seed", "0",
                   "--out", w.root / "o"], 2, "says there are 50000000 layers, but the weights hold 2"),
    "verify-num-layers-50000000": (
        lambda w: ["verify", w.edit_config(w.ckpt("a"), num_hidden_layers=50_000_000), w.ckpt("b")], 2,
        "says there are 50000000 layers"),
    "fingerprint-num-layers-50000000": (
        lambda w: ["fingerprint", w.edit_config(w.ckpt("a"), num_hidden_layers=50_000_000)], 2,
        "says there are 50000000 layers"),
    "apply-full-intermediate-size-huge": (
        lambda w: ["apply", w.edit_config(w.ckpt(), intermediate_size=10**9), "--full", "--random-seed", "0",
                   "--out", w.root / "o"], 2, "of length 1000000000"),
    "apply-full-gauge-num-layers-disagrees": (
        lambda w: ["apply", w.edit_config(w.ckpt(), num_hidden_layers=3), "--gauge", _full_gauge(w),
                   "--out", w.root / "o"], 2, "says there are 3 layers, but the weights hold 2"),
    "verify-full-gauge-heads-disagree": (
        lambda w: ["verify", w.edit_config(w.ckpt("a"), num_attention_heads=8), w.ckpt("b"), "--gauge",
                   _full_gauge(w)], 2, "config.json and the weights disagree"),
    # 6. no tracebacks: malformed files
    "config-json-is-a-list": (
        lambda w: ["inspect", (lambda a: (a / "config.json").write_text("[1, 2]") and a)(w.ckpt())], 2,
        "not an object"),
    "config-hidden-size-string": (
        lambda w: ["apply", w.edit_config(w.ckpt(), hidden_size="abc"), "--random-seed", "0",
                   "--out", w.root / "o"], 2, "hidden_size = 'abc'"),
    "index-weight-map-is-list": (
        lambda w: ["inspect", (lambda a: w.index(a, ["x"]) or a)(w.shard(w.ckpt()))], 2, "weight_map is list"),
    # 3. signs validated on load, for every dtype (int8 included), and on construction
    "apply-gauge-sign-0-int8": (
        lambda w: ["apply", w.ckpt(), "--gauge", _bad_signs(w, 0), "--out", w.root / "o"], 2, "signs[5] = 0"),
    "apply-gauge-sign-2-int8": (
        lambda w: ["apply", w.ckpt(), "--gauge", _bad_signs(w, 2), "--out", w.root / "o"], 2, "+1 or -1 only"),
    "apply-gauge-sign-2-int64": (
        lambda w: ["apply", w.ckpt(), "--gauge", _bad_signs(w, 2, torch.int64), "--out", w.root / "o"], 2,
        "+1 or -1 only"),
    "apply-gauge-sign-half-float32": (
        lambda w: ["apply", w.ckpt(), "--gauge", _bad_signs(w, 0, torch.float32), "--out", w.root / "o"], 2,
        "+1 or -1 only"),
    "transport-gauge-sign-0": (
        lambda w: ["transport", _vector(w), "--gauge", _bad_signs(w, 0), "--out", w.root / "o.npy"], 2,
        "+1 or -1 only"),
    "compose-gauge-sign-2": (
        lambda w: ["compose", _bad_signs(w, 2), w.gauge(), "--out", w.root / "o.safetensors"], 2, "+1 or -1 only"),
    "trainer-transport-gauge-sign-0": (_trainer_with_bad_gauge, 2, "+1 or -1 only"),
    "gauge-perm-bf16": (
        lambda w: ["apply", w.ckpt(), "--gauge", w.raw_gauge("p.safetensors", torch.arange(32).bfloat16(),
                   torch.ones(32, dtype=torch.int8)), "--out", w.root / "o"], 2, "perm is stored as torch.bfloat16"),
    "gauge-perm-repeated": (
        lambda w: ["apply", w.ckpt(), "--gauge", w.raw_gauge("p.safetensors", torch.zeros(32, dtype=torch.int64),
                   torch.ones(32, dtype=torch.int8)), "--out", w.root / "o"], 2, "not a permutation"),
    # 3b. one reader for gauge files, used by every verb: versions, labels and --full checked
    "apply-gauge-version-3": (
        lambda w: ["apply", w.ckpt(), "--gauge", _full_gauge(w, version="3"), "--out", w.root / "o"], 2,
        "version '3' is newer than this gaugeport understands"),
    "apply-gauge-version-0": (
        lambda w: ["apply", w.ckpt(), "--gauge", _full_gauge(w, version="0"), "--out", w.root / "o"], 2,
        "version '0' is not a gauge file version"),
    "apply-gauge-full-labelled-version-1": (
        lambda w: ["apply", w.ckpt(), "--gauge", _full_gauge(w, version="1"), "--out", w.root / "o"], 2,
        "says version 1 (residual only) but holds per-layer tensors"),
    "apply-gauge-no-version": (
        lambda w: ["apply", w.ckpt(), "--gauge", _full_gauge(w, version=None), "--out", w.root / "o"], 2,
        "has no version in its metadata"),
    "apply-full-with-a-version-1-gauge": (
        lambda w: ["apply", w.ckpt(), "--gauge", w.gauge(), "--full", "--out", w.root / "o"], 2,
        "--full asks for a full-network gauge"),
    "verify-gauge-version-0": (
        lambda w: ["verify", w.ckpt("a"), w.ckpt("b"), "--gauge", _full_gauge(w, version="0")], 2,
        "not a gauge file version"),
    "transport-gauge-full-labelled-version-1": (
        lambda w: ["transport", _vector(w), "--gauge", _full_gauge(w, version="1"), "--out", w.root / "o.npy"], 2,
        "holds per-layer tensors"),
    "compose-gauge-no-version": (
        lambda w: ["compose", _full_gauge(w, version=None), w.gauge(), "--out", w.root / "o.safetensors"], 2,
        "has no version"),
    "merge-gauge-version-3": (
        lambda w: ["merge", w.ckpt("a"), w.ckpt("b", seed=1), "--gauge", _full_gauge(w, version="3"),
                   "--out", w.root / "o", "--quiet"], 2, "newer than this gaugeport"),
    "apply-gauge-full-n-layers-huge": (
        lambda w: ["apply", w.ckpt(), "--gauge", _full_gauge(w, n_layers="99999"), "--out", w.root / "o"], 2,
        "lacks layers.2.mlp.perm"),
    "gauge-is-a-folder": (lambda w: ["apply", w.ckpt(), "--gauge", w.root / "a", "--out", w.root / "o"], 2,
                          "is a directory, not a file"),
    "gauge-missing": (lambda w: ["apply", w.ckpt(), "--gauge", w.root / "nope.safetensors", "--out", w.root / "o"],
                      2, "gauge file not found"),
    "compose-wrong-length-confidence": (_compose_bad_confidence, 2, "'confidence' has shape (7,)"),
    "attribution-csv-sign-0": (
        lambda w: ["transport", w.file("a.csv", "coordinate,score,sign\n1,0.5,0\n"), "--gauge", w.gauge(),
                   "--out", w.root / "o.csv"], 2, "sign must be -1 or +1"),
    "attribution-json-sign-5": (
        lambda w: ["transport", w.file("a.json", json.dumps([{"coordinate": 1, "score": 0.5, "sign": 5}])),
                   "--gauge", w.gauge(), "--out", w.root / "o.json"], 2, "sign must be -1 or +1"),
    "coordinates-json-signs-2": (
        lambda w: ["transport", w.file("c.json", json.dumps({"coordinates": [1, 2], "signs": [1, 2]})),
                   "--gauge", w.gauge(), "--out", w.root / "o.json"], 2, "signs must be -1 or +1"),
    "attribution-json-scores-strings": (
        lambda w: ["transport", w.file("a.json", json.dumps({"coordinates": [1, 2], "scores": ["x", "y"]})),
                   "--gauge", w.gauge(), "--out", w.root / "o.json"], 2, "score 'x' is not a number"),
    "attribution-csv-extra-field": (
        lambda w: ["transport", w.file("a.csv", "coordinate,score\n1,0.5,oops\n"), "--gauge", w.gauge(),
                   "--out", w.root / "o.csv"], 2, "more fields than the header"),
    "sae-cfg-d-in-disagrees": (
        lambda w: ["transport", _sae(w, d_in_cfg=48), "--gauge", w.gauge(), "--out", w.root / "o"], 2,
        "cfg.json says d_in=48"),
    "saelens-sae-without-w-dec": (
        lambda w: ["transport", _sae(w, drop="W_dec"), "--gauge", w.gauge(), "--out", w.root / "o"], 2,
        "the SAE lacks W_dec"),
    "saelens-sae-without-b-dec": (
        lambda w: ["transport", _sae(w, drop="b_dec"), "--gauge", w.gauge(), "--out", w.root / "o"], 2,
        "the SAE lacks b_dec"),
    "sparsify-cfg-d-in-disagrees": (lambda w: _sparsify(w, d_in=48), 2, "says d_in=48 but encoder.weight"),
    "sparsify-cfg-num-latents-disagrees": (lambda w: _sparsify(w, num_latents=16), 2, "says num_latents=16"),
    "sparsify-cfg-d-in-string": (lambda w: _sparsify(w, d_in="32"), 2, "d_in = '32' is not a non-negative"),
    "sparsify-skip-connection-without-w-skip": (lambda w: _sparsify(w, skip_connection=True), 2,
                                                "says skip_connection=True but the weights lack W_skip"),
    "sparsify-without-b-dec": (lambda w: _sparsify(w, drop="b_dec"), 2, "the sparsify SAE lacks b_dec"),
    # 6. more malformed input that used to end in a traceback
    "random-seed-negative": (
        lambda w: ["apply", w.ckpt(), "--random-seed", "-1", "--out", w.root / "o"], 2, "non-negative integer"),
    "verify-long-sequences": (lambda w: _long_rows(w, "verify"), 2, "learned positions"),
    "align-long-sequences": (lambda w: _long_rows(w, "align"), 2, "learned positions"),
    "verify-data-object-npy": (
        lambda w: ["verify", w.ckpt("a"), w.ckpt("b"), "--data",
                   w.file("o.npy", _npy(np.array([{"x": 1}], dtype=object)))], 2, "holds Python objects"),
    "verify-data-jsonl": (
        lambda w: ["verify", w.ckpt("a"), w.ckpt("b"), "--data", w.file("d.jsonl", '{"text": "hi"}\n')], 2,
        "from a .npy file"),
    "verify-data-folder": (
        lambda w: ["verify", w.ckpt("a"), w.ckpt("b"), "--data", w.ckpt("c")], 2, "is a directory, not a file"),
    "verify-tol-negative": (lambda w: ["verify", w.ckpt("a"), w.ckpt("b"), "--tol", "-1"], 2, "finite number >= 0"),
    "verify-tol-nan": (lambda w: ["verify", w.ckpt("a"), w.ckpt("b"), "--tol", "nan"], 2, "finite number >= 0"),
    "audit-d-negative": (
        lambda w: ["audit", w.file("c.json", CLAIMS), "--d", "-5", "--out", w.root / "o"], 2, "positive integer"),
    "audit-random-negative": (
        lambda w: ["audit", w.file("c.json", CLAIMS), "--d", "32", "--random", "-1", "--out", w.root / "o"], 2,
        "must be >= 0"),
    "audit-evidence-npy": (
        lambda w: ["audit", w.file("c.json", CLAIMS), "--d", "32", "--evidence",
                   w.file("x.npy", _npy(np.ones((4, 32), np.float32))), "--out", w.root / "o"], 2,
        "not an .npz archive"),
    "audit-claims-folder": (
        lambda w: ["audit", w.ckpt(), "--d", "32", "--out", w.root / "o"], 2, "is a directory, not a file"),
    "align-one-token-rows": (
        lambda w: ["align", w.ckpt("a"), w.ckpt("b", seed=1), "--data", w.file("t.npy", _npy(
            np.full((2, 1), 5, np.int64))), "--tokens", "2", "--out", w.root / "g"], 2, "needs at least 16"),
    "index-json-is-a-list": (
        lambda w: ["inspect", (lambda a: (a / "model.safetensors.index.json").write_text("[]") and a)(
            w.shard(w.ckpt()))], 2, "not an object"),
    "index-shard-name-not-a-string": (
        lambda w: ["inspect", (lambda a: w.index(a, dict.fromkeys(w.weight_map(a), 7)) or a)(w.shard(w.ckpt()))],
        2, "not a plain"),
    # 13. quantized releases: every number of quantization_config checked before any work; overflow refused
    "fp8-block-size-zero": (lambda w: _dequantize(w, _fp8(w, weight_block_size=[0, 0])), 2,
                            "weight_block_size = [0, 0] is not two positive integers"),
    "fp8-block-size-three-values": (lambda w: _dequantize(w, _fp8(w, weight_block_size=[16, 16, 16])), 2,
                                    "is not two positive integers"),
    "fp8-block-size-string": (lambda w: _dequantize(w, _fp8(w, weight_block_size="128")), 2,
                              "is not two positive integers"),
    "fp8-block-size-float": (lambda w: _dequantize(w, _fp8(w, weight_block_size=[16.5, 16])), 2,
                             "is not two positive integers"),
    "fp8-scale-overflows-bf16": (lambda w: _dequantize(w, _fp8(w, scale=1e38), quiet=False), 2,
                                 "gives values beyond bfloat16"),  # with the progress bar drawn
    "fp8-scale-overflows-fp32": (lambda w: _dequantize(w, _fp8(w, scale=1e38), "fp32"), 2,
                                 "gives values beyond float32"),
    "fp8-scale-nan": (lambda w: _dequantize(w, _fp8(w, scale=float("nan"))), 2, "weight_scale_inv' in"),
    "dequantize-fp16": (lambda w: _dequantize(w, _fp8(w), "fp16"), 2, "--dequantize takes bf16 or fp32"),
    "gptq-bits-zero": (lambda w: _dequantize(w, _gptq_config(w, bits=0)), 2, "bits = 0 is not valid for gptq"),
    "gptq-bits-string": (lambda w: _dequantize(w, _gptq_config(w, bits="4")), 2, "bits = '4' is not valid"),
    "gptq-group-size-zero": (lambda w: _dequantize(w, _gptq_config(w, group_size=0)), 2, "group_size = 0"),
    "gptq-checkpoint-format-unknown": (lambda w: _dequantize(w, _gptq_config(w, checkpoint_format=3)), 2,
                                       "checkpoint_format = 3"),
    "inspect-fp8-names-the-scheme": (lambda w: ["inspect", _fp8(w)], 2, "quantized checkpoint (FP8 with block"),
    "verify-fp8-names-the-scheme": (lambda w: ["verify", _fp8(w), w.ckpt("b")], 2, "(FP8 with block scales"),
    # 12. every number and path read from a data file is checked: token ids, encodings, dataset file names
    "dataset-uint64-id-past-int64": (
        lambda w: _align_data(w, _dataset(w, [[1, 2, 2**63 + 5, 3] * 4], dtype="uint64")), 2,
        "token id 9223372036854775813 is too large"),
    "dataset-id-past-vocab": (
        lambda w: _align_data(w, _dataset(w, [[1, 2, 10**6, 3] * 4])), 2, "out of range for a vocabulary"),
    "dataset-negative-id": (
        lambda w: _align_data(w, _dataset(w, [[1, 2, -3, 4] * 4])), 2, "negative token id -3"),
    "dataset-float-ids": (
        lambda w: _align_data(w, _dataset(w, [[1.5, 2.0, 3.0, 4.0] * 4])), 2, "token ids must be integers"),
    "dataset-string-ids": (
        lambda w: _align_data(w, _dataset(w, [["a", "b", "c", "d"] * 4])), 2, "token ids must be integers"),
    "dataset-state-json-names-outside-file": (
        lambda w: _align_data(w, _dataset(w, [[1, 2, 3, 4] * 4], escape="../stolen.arrow")), 2,
        "which is not a plain file of"),
    "dataset-state-json-absolute-file": (
        lambda w: _align_data(w, _dataset(w, [[1, 2, 3, 4] * 4], escape=str(w.root / "abs.arrow"))), 2,
        "which is not a plain file of"),
    "npy-uint64-id-past-int64": (
        lambda w: _align_data(w, w.file("t.npy", _npy(np.full((4, 8), 2**63 + 1, np.uint64)))), 2,
        "too large for any vocabulary"),
    "txt-undecodable-bytes": (
        lambda w: _align_data(w, w.file("t.txt", b"hello\n\xff\xfe world\n")), 2, "is not UTF-8 text"),
    "jsonl-undecodable-bytes": (
        lambda w: _align_data(w, w.file("t.jsonl", b'{"text": "caf\xe9"}\n')), 2, "is not UTF-8 text"),
    # 14. hub references: a ref or a revision never leads outside the cache
    "hub-refs-main-relative-escape": (
        lambda w: _hub(w, "../../../../evil") and ["inspect", "org/tiny"], 2, "not a commit hash"),
    "hub-refs-main-absolute": (
        lambda w: _hub(w, str(w.root / "evil")) and ["inspect", "org/tiny"], 2, "not a commit hash"),
    "hub-revision-absolute-path": (
        lambda w: _hub(w) and ["inspect", f"org/tiny@{w.root / 'evil'}"], 2, "is not a branch, tag or commit name"),
    "hub-revision-parent-segments": (
        lambda w: _hub(w) and ["apply", "org/tiny@refs/../../evil", "--random-seed", "0", "--out", w.root / "o"], 2,
        "checkpoint directory not found"),
    "hub-refs-main-not-text": (
        lambda w: _hub(w, "\x00\x01") and ["inspect", "org/tiny"], 2, "not a commit hash"),
    "verify-npy-header-promises-terabytes": (
        lambda w: ["verify", w.ckpt("a"), w.ckpt("b"), "--data", w.file("t.npy", _npy_lying_header((10**6, 10**6)))],
        2, "header says shape (1000000, 1000000)"),
    "align-npy-header-promises-more": (
        lambda w: _align_data(w, w.file("t.npy", _npy_lying_header((4, 8)))), 2, "but the file holds 64 bytes"),
    "transport-npy-header-promises-more": (
        lambda w: ["transport", w.file("v.npy", _npy_lying_header((10**9, 32), "<f4")), "--gauge", w.gauge(),
                   "--out", w.root / "o.npy"], 2, "the .npy file is truncated or its header was edited"),
    "align-via-missing-local-path": (lambda w: _via(w, "ckpt/c1"), 2, "ckpt/ exists here but holds no c1"),
    "align-via-missing-hub-id": (lambda w: _via(w, "org/c1"), 2, "neither a local path nor a snapshot cached"),
    # 11. a pickle with code objects: refused for safety, and the check is never to be disabled
    "transport-malicious-pickle": (
        lambda w: ["transport", _evil_pt(w), "--gauge", w.gauge(), "--out", w.root / "o.pt"], 2,
        "contains code objects (it names posix.mkdir)"),
    # 9b. usage errors are bad input like any other: error:, hint: naming the verb's --help, exit 2
    "same-unknown-option-full": (lambda w: ["same", w.ckpt("a"), w.ckpt("b"), "--full"], 2,
                                 "No such option: --full"),
    "merge-unknown-option-kind": (lambda w: ["merge", w.ckpt("a"), w.ckpt("b"), "--kind", "sae", "--out",
                                             w.root / "o"], 2, "No such option: --kind"),
    "verify-tol-not-a-number": (lambda w: ["verify", w.ckpt("a"), w.ckpt("b"), "--tol", "abc"], 2,
                                "Invalid value for '--tol'"),
    "apply-missing-out": (lambda w: ["apply", w.ckpt()], 2, "Missing option '--out'"),
    "unknown-verb": (lambda w: ["aply", w.ckpt()], 2, "No such command 'aply'"),
    # 9c. range checks of options, with hints for the option that is wrong
    "same-tol-negative": (lambda w: ["same", w.ckpt("a"), w.ckpt("b"), "--tol", "-1"], 2,
                          "--tol -1 is not a finite number >= 0"),
    "same-alpha-above-one": (lambda w: ["same", w.ckpt("a"), w.ckpt("b"), "--alpha", "5"], 2,
                             "--alpha is the p-value below which"),
    "same-tokens-zero": (lambda w: ["same", w.ckpt("a"), w.ckpt("b"), "--tokens", "0"], 2, "--tokens 0"),
    "merge-alpha-above-one": (
        lambda w: ["merge", w.ckpt("a"), w.ckpt("b", seed=1), "--gauge", w.gauge(), "--alpha", "2",
                   "--out", w.root / "o", "--quiet"], 2, "alpha is B's weight"),
    "merge-different-architectures": (
        lambda w: ["merge", w.ckpt("a"), w.ckpt("b", model="gpt2"), "--gauge", w.gauge(), "--out", w.root / "o",
                   "--quiet"], 2, "merges need two checkpoints of one architecture"),
    "audit-claim-index-1e23": (
        lambda w: ["audit", w.file("c.json", CLAIMS.replace("[1]", "[100000000000000000000000]")), "--d", "32",
                   "--out", w.root / "o"], 2, "not a coordinate index"),
    "audit-claim-index-float": (
        lambda w: ["audit", w.file("c.json", CLAIMS.replace("[1]", "[1e23]")), "--d", "32", "--out", w.root / "o"],
        2, "must be a non-empty list of integers (found 1e+23)"),
    "audit-claim-index-negative": (
        lambda w: ["audit", w.file("c.json", CLAIMS.replace("[1]", "[-4]")), "--d", "32", "--out", w.root / "o"],
        2, "indices name residual coordinates"),
    "audit-claim-index-past-d": (
        lambda w: ["audit", w.file("c.json", CLAIMS.replace("[1]", "[40]")), "--d", "32", "--out", w.root / "o"],
        2, "indices name residual coordinates"),
    "same-family-without-hidden-rows": (
        lambda w: ["same", w.ckpt("a", model="olmoe"), w.ckpt("b", model="olmoe")], 2,
        "residual gauges work (apply without --full"),
    # 9. messages
    "inspect-config-file-not-dir": (lambda w: ["inspect", w.ckpt() / "config.json"], 2, "is a file, not a"),
    "inspect-missing": (lambda w: ["inspect", w.root / "nope"], 2, "not found"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case: str, cli, tiny_dir, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                   monkeypatch: pytest.MonkeyPatch) -> None:
    build, want_code, fragment = CASES[case]
    ws = tmp_path / "ws"
    ws.mkdir()
    workspace = Workspace(ws, tiny_dir)
    argv = build(workspace)
    for key, value in workspace.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(ws)  # relative paths in a row start from the workspace
    before = tree_state(ws)
    capsys.readouterr()  # whatever building the inputs printed
    code, _, err = cli(*argv)
    assert code == want_code, err
    assert fragment in err, err
    assert "Traceback" not in err
    lines = err.split("\n")  # the error starts a fresh line, even after a progress bar's carriage returns
    at = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert at and at[0] + 1 < len(lines) and lines[at[0] + 1].startswith("hint: "), err
    assert tree_state(ws) == before, "the workspace changed (something written or an input modified)"
    assert "weights_only=False" not in err
