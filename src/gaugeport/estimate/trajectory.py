"""Gauges along a trajectory: estimate local gauges between consecutive checkpoints, compose them.

Endpoint matching between checkpoints that drifted far apart fails; consecutive checkpoints of a
saved trajectory stay close, so their local gauges are reliable and their composition
``G_total = G_k @ ... @ G_1`` recovers the endpoint gauge (docs/estimation.md). A chain is only as good
as its weakest hop, so every hop's confidence is reported and the weakest is flagged.

Order: a chain ``[A, C1, ..., B]`` is aligned hop by hop, ``A -> C1``, ``C1 -> C2``, ..., and the
composed gauge maps A's coordinates to B's (``compose(g1, g2, ...)`` applies ``g1`` first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from gaugeport.core.errors import GaugeError, GaugeportError
from gaugeport.core.gauge import SignedPermutation, compose, read_gauge_file, save_gauge
from gaugeport.estimate.matching import ConfidenceSummary

ModelRef = str | Path | torch.nn.Module


@dataclass(frozen=True)
class Hop(ConfidenceSummary):
    """One local gauge of a chain, with the per-coordinate confidence of its estimate."""

    source: str
    target: str
    gauge: SignedPermutation
    confidence: np.ndarray  # per coordinate of the source


@dataclass(frozen=True)
class Chain:
    """Local gauges ``hops[0]`` (first) ... ``hops[-1]`` (last) and their composition."""

    hops: tuple[Hop, ...]
    method: str = "signed"

    def __post_init__(self) -> None:
        if not self.hops:
            raise GaugeError("a chain needs at least one hop (two checkpoints)")

    @property
    def gauge(self) -> SignedPermutation:
        return compose(*(h.gauge for h in self.hops))

    @property
    def confidence(self) -> np.ndarray:
        """Per coordinate of the first checkpoint: the lowest confidence met along its path."""
        return chain_confidence([h.gauge for h in self.hops], [h.confidence for h in self.hops])

    @property
    def weakest(self) -> int:
        """Index of the hop with the lowest mean confidence (where to save more checkpoints)."""
        return int(np.argmin([h.mean_confidence for h in self.hops]))

    def prefix(self, n_hops: int) -> Chain:
        return Chain(self.hops[:n_hops], self.method)

    def to_dict(self) -> dict[str, Any]:
        return {
            "order": "hops[0] first; the composed gauge maps the first checkpoint's coordinates to the last's",
            "hops": [{"source": h.source, "target": h.target, "fingerprint": h.gauge.fingerprint(),
                      "mean_confidence": h.mean_confidence, "min_confidence": h.min_confidence,
                      "weakest": i == self.weakest} for i, h in enumerate(self.hops)],
            "weakest_hop": self.weakest,
            "composed_fingerprint": self.gauge.fingerprint(),
            "composed_mean_confidence": float(np.mean(self.confidence)),
        }

    def save(self, path: str | Path, *, force: bool = False, provenance: dict[str, Any] | None = None) -> Path:
        """Write the composed gauge with its per-coordinate confidence and the hop report (``chain``) as
        provenance; ``provenance`` adds keys (``gaugeport align --via`` adds the sites and token count)."""
        meta = {"method": f"{self.method} (chain)", "mean_confidence": float(self.confidence.mean()),
                "min_confidence": float(self.confidence.min()), "chain": self.to_dict(), **(provenance or {})}
        return save_gauge(self.gauge, path, meta, {"confidence": self.confidence.astype(np.float32)}, force=force)

    def summary(self) -> str:
        lines = [f"{'hop':>4}  {'mean conf':>9}  {'min conf':>8}  source -> target"]
        for i, h in enumerate(self.hops):
            flag = "  <- weakest" if i == self.weakest else ""
            lines.append(f"{i + 1:>4}  {h.mean_confidence:>9.3f}  {h.min_confidence:>8.3f}  "
                         f"{h.source} -> {h.target}{flag}")
        lines.append(f"composed: {len(self.hops)} hops, mean per-coordinate confidence "
                     f"{float(np.mean(self.confidence)):.3f}")
        return "\n".join(lines)


def chain_confidence(gauges: Sequence[SignedPermutation], confidences: Sequence[np.ndarray]) -> np.ndarray:
    """Follow each coordinate through the chain and keep the minimum confidence on its way."""
    if len(gauges) != len(confidences) or not gauges:
        raise GaugeError("chain_confidence needs one confidence array per gauge")
    d = gauges[0].d
    where = np.arange(d)  # where coordinate i of the first checkpoint currently sits
    out = np.full(d, np.inf)
    for g, conf in zip(gauges, confidences, strict=True):
        conf = np.broadcast_to(np.asarray(conf, dtype=np.float64), (g.d,))
        out = np.minimum(out, conf[where])
        where = g.perm[where]
    return out


def estimate_hop(model_a: torch.nn.Module, model_b: torch.nn.Module, batches: Any, *, method: str = "signed",
                 sites: Any = None, source: str = "A", target: str = "B") -> Hop:
    """One local gauge ``source -> target`` with its per-coordinate confidence."""
    from gaugeport.estimate.align import align_models

    res = align_models(model_a, model_b, batches, method=method, sites=sites, progress=False)
    conf = np.broadcast_to(np.asarray(res.confidence, dtype=np.float64), (res.gauge.d,)).copy()
    return Hop(source, target, res.gauge, conf)


def align_chain(checkpoints: Sequence[ModelRef], batches: Any = None, *, method: str = "signed",
                sites: Any = None, progress: bool = True, names: Sequence[str] | None = None) -> Chain:
    """Align ``[A, C1, ..., B]`` hop by hop and compose (at most two models are held in memory).

    ``batches``: probe token batches for every hop (default: the built-in corpus).
    """
    if len(checkpoints) < 2:
        raise GaugeportError("align_chain needs at least two checkpoints (A and B)")
    names = list(names) if names is not None else [_name(c, i) for i, c in enumerate(checkpoints)]
    if len(names) != len(checkpoints):
        raise GaugeportError(f"{len(names)} names given for {len(checkpoints)} checkpoints")
    if method == "weights":  # data-free: each hop reads the stored weights (a layer-streamed model holds none)
        return Chain(tuple(_weights_hop(checkpoints[i - 1], checkpoints[i], names[i - 1], names[i])
                           for i in tqdm(range(1, len(checkpoints)), desc="chain", unit="hop",
                                         disable=not progress)), method)
    hops = []
    prev = _load(checkpoints[0])
    batches = _default_batches(prev) if batches is None else batches
    for i in tqdm(range(1, len(checkpoints)), desc="chain", unit="hop", disable=not progress):
        cur = _load(checkpoints[i])
        hops.append(estimate_hop(prev, cur, batches, method=method, sites=sites, source=names[i - 1],
                                 target=names[i]))
        prev = cur
    return Chain(tuple(hops), method)


def compose_gauge_files(paths: Sequence[str | Path], out: str | Path, *, force: bool = False) -> SignedPermutation:
    """``gaugeport compose G1 G2 ... --out G``: ``G1`` is applied first (chain order A -> ... -> B).

    Widths are checked pairwise (naming the files). When every input carries a per-coordinate
    ``confidence``, the output carries the chain's path-wise minimum.
    """
    if not paths:
        raise GaugeportError("compose needs at least one gauge file")
    files = [read_gauge_file(p) for p in paths]
    for i in range(1, len(files)):
        if files[i].gauge.d != files[0].gauge.d:
            raise GaugeError(f"cannot compose {paths[0]} (d={files[0].gauge.d}) with {paths[i]} "
                             f"(d={files[i].gauge.d}): widths differ",
                             hint="every gauge of a chain must be estimated at the same hidden size")
    gauges = [f.gauge for f in files]
    extras = {}
    if all("confidence" in f.extras for f in files):
        extras["confidence"] = chain_confidence(gauges, [f.extras["confidence"] for f in files])
    composed = compose(*gauges)
    provenance = {"composed_from": [str(p) for p in paths], "order": "first file applied first",
                  "fingerprints": [g.fingerprint() for g in gauges]}
    save_gauge(composed, out, provenance=provenance, extras=extras, force=force)
    return composed


def _weights_hop(a: ModelRef, b: ModelRef, source: str, target: str) -> Hop:
    from gaugeport.estimate.align import align_by_weights

    res = align_by_weights(a, b)
    conf = np.broadcast_to(np.asarray(res.confidence, dtype=np.float64), (res.gauge.d,)).copy()
    return Hop(source, target, res.gauge, conf)


def _name(ref: ModelRef, i: int) -> str:
    return str(ref) if isinstance(ref, str | Path) else f"model[{i}]"


def _load(ref: ModelRef) -> torch.nn.Module:
    if isinstance(ref, torch.nn.Module):
        return ref
    from gaugeport.core.stream import load_streamed

    return load_streamed(ref)


def _default_batches(model: torch.nn.Module) -> list[Any]:
    from gaugeport.estimate.data import BUILTIN, load_token_batches

    return load_token_batches(BUILTIN, n_tokens=4096, batch_size=8, seq_len=64,
                              vocab_size=int(model.config.vocab_size))
