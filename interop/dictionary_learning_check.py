"""dictionary_learning, inside its own environment (nnsight<0.4).

save OUT D:            random AutoEncoder / JumpReluAutoEncoder / BatchTopKSAE, saved as OUT/<class>/ae.pt
check SRC DST X GX OUT: load both with the library's from_pretrained; features of X (A) and of GX (B)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from dictionary_learning.dictionary import AutoEncoder, JumpReluAutoEncoder
from dictionary_learning.trainers.batch_top_k import BatchTopKSAE

CLASSES = {"AutoEncoder": AutoEncoder, "JumpReluAutoEncoder": JumpReluAutoEncoder, "BatchTopKSAE": BatchTopKSAE}
F = 64


def save(out: str, d: str) -> None:
    gen = torch.Generator().manual_seed(0)
    for name, cls in CLASSES.items():
        ae = cls(int(d), F, k=6) if name == "BatchTopKSAE" else cls(int(d), F)
        with torch.no_grad():
            for pname, p in ae.named_parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.4 + (0.05 if pname == "threshold" else 0.0))
            if name == "JumpReluAutoEncoder":
                ae.threshold.abs_()
            if name == "BatchTopKSAE":
                ae.threshold.fill_(0.05)
        (Path(out) / name).mkdir(parents=True)
        torch.save(ae.state_dict(), Path(out) / name / "ae.pt")


def _load(name: str, path: Path):
    cls = CLASSES[name]
    if name == "AutoEncoder":
        return cls.from_pretrained(path, normalize_decoder=False)
    return cls.from_pretrained(path)


def _features(name: str, ae, x: torch.Tensor) -> torch.Tensor:
    return ae.encode(x, use_threshold=True) if name == "BatchTopKSAE" else ae.encode(x)


def check(src: str, dst: str, x: str, gx: str, out: str) -> None:
    xa, xb = torch.load(x, weights_only=True), torch.load(gx, weights_only=True)
    res = {}
    with torch.no_grad():
        for name in CLASSES:
            a, b = _load(name, Path(src) / name / "ae.pt"), _load(name, Path(dst) / name / "ae.pt")
            fa, fb = _features(name, a, xa), _features(name, b, xb)
            res[name] = {"features": (fa, fb), "recon": (a.decode(fa), b.decode(fb)),
                         "fraction_active": float((fa > 0).float().mean())}
    torch.save(res, out)


if __name__ == "__main__":
    {"save": save, "check": check}[sys.argv[1]](*sys.argv[2:])
