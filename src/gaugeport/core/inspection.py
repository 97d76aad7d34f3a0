"""Which gauge group does a checkpoint have? Reads config and norm gains only (streamed).

RMSNorm with generic (pairwise distinct) gains: B_d, signed permutations. Coordinates whose
gains agree in *every* norm can be rotated into each other, so uniform gains give all of O(d)
and coordinates lose their meaning. LayerNorm: permutations plus one global sign; with uniform
gains and biases, any rotation fixing the all-ones direction as well.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaugeport.core.archspec import ArchSpec
from gaugeport.core.checkpoint import Checkpoint


@dataclass
class Inspection:
    model_type: str
    d_model: int
    n_layers: int
    norm: str
    group: str
    gain_min_gap: float  # smallest gap between two coordinates' gain fingerprints (0: tied coordinates)
    tied_coordinate_blocks: int  # groups of >= 2 coordinates with identical gains in every norm
    n_tensors: int
    n_residual_tensors: int  # tensors that read, write or scale the residual axis
    tied_embeddings: bool
    gain_offset: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gain_fingerprints(gains: list[torch.Tensor], offset: float) -> np.ndarray:
    """Effective gains (``offset + w``) stacked as ``[n_norms, d]`` in float64."""
    return np.stack([offset + g.detach().double().cpu().numpy() for g in gains])


def min_fingerprint_gap(fp: np.ndarray) -> tuple[float, int]:
    """Gain genericity: (gap, tied blocks).

    ``tied blocks``: groups of coordinates whose gains agree in every norm (exact, via unique columns).
    ``gap``: the best single norm's smallest gap between two of its gains (0 when blocks are tied).
    One norm whose gains are pairwise apart by ``gap`` already pins every coordinate's identity.
    """
    cols = fp.T  # [d, n_norms]
    _, counts = np.unique(cols, axis=0, return_counts=True)
    tied_blocks = int(np.sum(counts > 1))
    if tied_blocks:
        return 0.0, tied_blocks
    gaps = [float(np.min(np.diff(np.sort(row)))) if row.size > 1 else 0.0 for row in fp]
    return max(gaps), 0


def inspect_checkpoint(path: str | Path) -> Inspection:
    ckpt = Checkpoint.open(path)
    spec = ckpt.spec
    rules = spec.classify_all(ckpt.names)
    ckpt.check_widths(spec)
    gains = []
    for name, tensor in ckpt.iter_tensors():  # one streamed pass: every tensor is checked for NaN / Inf
        if rules[name].role == "gain":
            gains.append(tensor)
    tied = bool(ckpt.config.get("tie_word_embeddings", False)) or not any(
        n.endswith(("lm_head.weight", "embed_out.weight")) for n in ckpt.names)
    return _summarise(spec, ckpt.d_model, ckpt.n_layers, gains, len(rules),
                      sum(r.role != "untouched" for r in rules.values()), tied)


def inspect_model(model: torch.nn.Module) -> Inspection:
    from gaugeport.core.archspec import spec_for_config

    spec = spec_for_config(model.config)
    state = model.state_dict()
    rules = spec.classify_all(list(state))
    cfg = model.config
    gains = [state[n] for n, r in rules.items() if r.role == "gain"]
    return _summarise(spec, int(getattr(cfg, "hidden_size", None) or cfg.n_embd),
                      int(getattr(cfg, "num_hidden_layers", None) or cfg.n_layer), gains, len(rules),
                      sum(r.role != "untouched" for r in rules.values()),
                      bool(getattr(cfg, "tie_word_embeddings", False)))


def _summarise(spec: ArchSpec, d: int, n_layers: int, gains: list[torch.Tensor], n_tensors: int,
               n_residual: int, tied: bool) -> Inspection:
    fp = gain_fingerprints(gains, spec.gain_offset) if gains else np.ones((1, d))
    gap, blocks = min_fingerprint_gap(fp)
    uniform = bool(np.all(fp == fp[:, :1]))
    warnings = []
    if spec.norm == "rms":
        if uniform:
            group = "O(d)"
            warnings.append("all norm gains are uniform: every rotation is a symmetry (O(d)), so individual "
                            "coordinates carry no meaning and coordinate matching is ill-posed")
        elif blocks:
            group = "B_d x O(k) on tied blocks"
            warnings.append(f"{blocks} block(s) of coordinates share identical gains in every norm: those can be "
                            "rotated into each other, so matching them is ambiguous")
        else:
            group = "B_d"
    else:
        group = "S_d x {+-1}"
        if uniform:
            warnings.append("uniform LayerNorm gains: if the norm biases are uniform too, any rotation fixing "
                            "the all-ones direction is a symmetry, and coordinates carry no meaning")
    return Inspection(spec.model_type, d, n_layers, spec.norm, group, gap, blocks, n_tensors, n_residual,
                      tied, spec.gain_offset, warnings)
