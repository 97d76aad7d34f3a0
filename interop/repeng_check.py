"""repeng, inside its own environment (numpy<2).

train A OUT:      train a ControlVector on checkpoint A, export it as GGUF, record A's controlled logits
apply B GGUF OUT: import the transported GGUF, control B with the library, record B's controlled logits
"""

from __future__ import annotations

import sys

import torch
from common import load, pairs, probes, tokenizer
from repeng import ControlModel, ControlVector, DatasetEntry

LAYERS, COEFF = [0, 1], 3.0


def logits(model, tok, texts: list[str]) -> torch.Tensor:
    """One prompt at a time: repeng 0.4's padding mask assumes position_ids per batch row, which
    transformers 4.5x passes as a single row."""
    out = []
    with torch.no_grad():
        for t in texts:
            out.append(model(**tok([t], return_tensors="pt")).logits)
    return torch.cat(out)


def _dataset() -> list[DatasetEntry]:
    return [DatasetEntry(positive=p, negative=n) for p, n in pairs()]


def train(a_dir: str, out: str) -> None:
    model, tok = load(a_dir), tokenizer()
    cm = ControlModel(model, LAYERS)
    cv = ControlVector.train(cm, tok, _dataset(), hidden_layers=LAYERS, method="pca_diff", batch_size=1)
    cv.export_gguf(f"{out}/cv.gguf")
    plain = logits(cm, tok, probes())
    cm.set_control(cv, COEFF)
    steered = logits(cm, tok, probes())
    torch.save({"plain": plain, "steered": steered}, f"{out}/a_logits.pt")


def apply(b_dir: str, gguf: str, out: str) -> None:
    model, tok = load(b_dir), tokenizer()
    cm = ControlModel(model, LAYERS)
    cv = ControlVector.import_gguf(gguf)
    cm.set_control(cv, COEFF)
    steered = logits(cm, tok, probes())
    cm.reset()
    retrained = ControlVector.train(cm, tok, _dataset(), hidden_layers=LAYERS, method="pca_diff", batch_size=1)
    torch.save({"steered": steered, "retrained": {k: torch.from_numpy(v) for k, v in retrained.directions.items()},
                "transported": {k: torch.from_numpy(v) for k, v in cv.directions.items()}}, out)


if __name__ == "__main__":
    {"train": train, "apply": apply}[sys.argv[1]](*sys.argv[2:])
