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
from dataclasses import dataclass
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
    "index-maps-tensor-to-wrong-shard": (_wrong_shard, 2, "which does not contain it"),
    "index-lists-absent-tensor": (_index_lists_absent, 2, "model.layers.9.mlp.up_proj.weight"),
    # 6. no tracebacks: malformed files
    "config-json-is-a-list": (
        lambda w: ["inspect", (lambda a: (a / "config.json").write_text("[1, 2]") and a)(w.ckpt())], 2,
        "not an object"),
    "config-hidden-size-string": (
        lambda w: ["apply", w.edit_config(w.ckpt(), hidden_size="abc"), "--random-seed", "0",
                   "--out", w.root / "o"], 2, "hidden_size = 'abc'"),
    "index-weight-map-is-list": (
        lambda w: ["inspect", (lambda a: w.index(a, ["x"]) or a)(w.shard(w.ckpt()))], 2, "weight_map is list"),
    # 9. messages
    "inspect-config-file-not-dir": (lambda w: ["inspect", w.ckpt() / "config.json"], 2, "is a file, not a"),
    "inspect-missing": (lambda w: ["inspect", w.root / "nope"], 2, "not found"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case: str, cli, tiny_dir, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build, want_code, fragment = CASES[case]
    ws = tmp_path / "ws"
    ws.mkdir()
    argv = build(Workspace(ws, tiny_dir))
    before = tree_state(ws)
    capsys.readouterr()  # whatever building the inputs printed
    code, _, err = cli(*argv)
    assert code == want_code, err
    assert fragment in err, err
    assert "Traceback" not in err
    lines = err.replace("\r", "\n").splitlines()
    at = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert at and at[0] + 1 < len(lines) and lines[at[0] + 1].startswith("hint: "), err
    assert tree_state(ws) == before, "the workspace changed (something written or an input modified)"
