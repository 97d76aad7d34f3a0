"""Shared readers for the anchors: tensors by name, token rows shared by two checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gaugeport.core.checkpoint import Checkpoint
from gaugeport.provenance.lineage import token_pairs

# The tensors the anchors read, by role, per naming scheme (Llama-style, and BERT encoders such as MiniLM);
# ``{i}`` is the block. The scheme is the first whose embedding the checkpoint holds.
NAMES: dict[str, dict[str, str]] = {
    "llama": {"emb": "model.embed_tokens.weight", "q": "model.layers.{i}.self_attn.q_proj.weight",
              "k": "model.layers.{i}.self_attn.k_proj.weight", "v": "model.layers.{i}.self_attn.v_proj.weight",
              "o": "model.layers.{i}.self_attn.o_proj.weight", "up": "model.layers.{i}.mlp.up_proj.weight",
              "down": "model.layers.{i}.mlp.down_proj.weight"},
    "bert": {"emb": "embeddings.word_embeddings.weight", "q": "encoder.layer.{i}.attention.self.query.weight",
             "k": "encoder.layer.{i}.attention.self.key.weight", "v": "encoder.layer.{i}.attention.self.value.weight",
             "o": "encoder.layer.{i}.attention.output.dense.weight",
             "up": "encoder.layer.{i}.intermediate.dense.weight", "down": "encoder.layer.{i}.output.dense.weight"},
}


class Weights:
    """A checkpoint's tensors by name (float64 numpy), read on demand; ``role(r, i)`` names block ``i``'s tensor
    of role ``r`` (``emb``, ``q``, ``k``, ``v``, ``o``, ``up``, ``down``) in the checkpoint's naming scheme."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.ckpt = Checkpoint.open(path)
        cfg = self.ckpt.config.get("text_config", self.ckpt.config)
        self.n_layers = int(cfg["num_hidden_layers"])
        self.vocab = int(cfg["vocab_size"])
        found = [k for k, t in NAMES.items() if t["emb"] in self.ckpt.names]
        self.scheme = NAMES[found[0] if found else "llama"]

    def role(self, r: str, i: int = 0) -> str:
        return self.scheme[r].format(i=i)

    def has(self, name: str) -> bool:
        return name in self.ckpt.names

    def __call__(self, name: str) -> np.ndarray:
        return self.ckpt.tensor(name).to(torch.float64).numpy()


def shared_tokens(a: Weights, b: Weights) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the two embeddings holding the same token (strings when both ship a tokenizer, else ids)."""
    ia, ib, _ = token_pairs(a.path, b.path, a.vocab, b.vocab)
    return ia, ib
