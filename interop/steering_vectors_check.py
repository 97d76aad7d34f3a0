"""steering-vectors, inside its own environment (transformers<5).

train A OUT:         train a SteeringVector on checkpoint A, save it as a .pt, record A's steered logits
apply B VEC OUT:     load the transported vector, apply it to B with the library, record B's steered logits
"""

from __future__ import annotations

import dataclasses
import sys

import torch
from common import load, logits, pairs, probes, tokenizer
from steering_vectors import SteeringVector, train_steering_vector

LAYERS, MULTIPLIER = [0, 1], 4.0


def train(a_dir: str, out: str) -> None:
    model, tok = load(a_dir), tokenizer()
    sv = train_steering_vector(model, tok, pairs(), layers=LAYERS, read_token_index=-1, show_progress=False)
    torch.save(dataclasses.asdict(sv), f"{out}/sv.pt")  # {"layer_activations": {layer: (d,)}, "layer_type": ...}
    plain = logits(model, tok, probes())
    with sv.apply(model, multiplier=MULTIPLIER):
        steered = logits(model, tok, probes())
    torch.save({"plain": plain, "steered": steered}, f"{out}/a_logits.pt")


def apply(b_dir: str, vec: str, out: str) -> None:
    model, tok = load(b_dir), tokenizer()
    raw = torch.load(vec, weights_only=True)
    sv = SteeringVector(layer_activations={int(k): v for k, v in raw["layer_activations"].items()},
                        layer_type=raw["layer_type"])
    with sv.apply(model, multiplier=MULTIPLIER):
        steered = logits(model, tok, probes())
    retrained = train_steering_vector(model, tok, pairs(), layers=LAYERS, read_token_index=-1, show_progress=False)
    torch.save({"steered": steered, "retrained": dict(retrained.layer_activations),
                "transported": sv.layer_activations}, out)


if __name__ == "__main__":
    {"train": train, "apply": apply}[sys.argv[1]](*sys.argv[2:])
