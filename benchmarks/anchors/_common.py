"""Shared readers for the anchors: tensors by name, token rows shared by two checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gaugeport.core.checkpoint import Checkpoint
from gaugeport.provenance.lineage import token_pairs


class Weights:
    """A checkpoint's tensors by name (float64 numpy), read on demand."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.ckpt = Checkpoint.open(path)
        cfg = self.ckpt.config.get("text_config", self.ckpt.config)
        self.n_layers = int(cfg["num_hidden_layers"])
        self.vocab = int(cfg["vocab_size"])

    def has(self, name: str) -> bool:
        return name in self.ckpt.names

    def __call__(self, name: str) -> np.ndarray:
        return self.ckpt.tensor(name).to(torch.float64).numpy()


def shared_tokens(a: Weights, b: Weights) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the two embeddings holding the same token (strings when both ship a tokenizer, else ids)."""
    ia, ib, _ = token_pairs(a.path, b.path, a.vocab, b.vocab)
    return ia, ib
