"""Measurement 8: audit verdicts on index-level claims made about the base model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaugeport.core.fileio import atomic_write_json
from gaugeport.core.gauge import SignedPermutation
from gaugeport.study.context import Context
from gaugeport.study.corpus import request_prompts, sample_documents
from gaugeport.study.models import in_gauge
from gaugeport.study.probes import site_name, token_residuals
from gaugeport.study.stages import derived_seed
from gaugeport.transport.audit import Claim, Evidence, audit_claims, effect_sizes, gauge_sweep, write_audit

FRAME = "study-base"  # the explicit gauge the covariant claims are stated in


def _evidence(ctx: Context, model: torch.nn.Module) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Polarity: every token of positive vs negative reviews; refusal: the assistant's turn."""
    cfg, layer, n = ctx.cfg, ctx.cfg.site_layer, ctx.cfg.steering_docs
    pos = [d.text for d in sample_documents(n, derived_seed(cfg.seed, 110), "review", polarity=1)]
    neg = [d.text for d in sample_documents(n, derived_seed(cfg.seed, 111), "review", polarity=-1)]
    bad = request_prompts(n, derived_seed(cfg.seed, 112), forbidden=True)
    good = request_prompts(n, derived_seed(cfg.seed, 113), forbidden=False)
    out = {}
    for key, (a, b, last) in {"polarity": (pos, neg, False), "refusal": (bad, good, True)}.items():
        xa, xb = token_residuals(model, a, layer, last), token_residuals(model, b, layer, last)
        out[key] = (torch.cat([xa, xb]).double().numpy(), np.r_[np.ones(len(xa)), np.zeros(len(xb))].astype(bool))
    return out


def study_claims(acts: dict[str, tuple[np.ndarray, np.ndarray]], site: str) -> list[dict[str, Any]]:
    """Claims of the kind papers make, each stated bare and relative to an explicit gauge."""
    claims: list[dict[str, Any]] = []
    for key in ("polarity", "refusal"):
        x, y = acts[key]
        eff = effect_sizes(x, y)
        top = np.argsort(-np.abs(eff))
        direction = (x[y].mean(0) - x[~y].mean(0)).tolist()
        common = {"site": site, "evidence": key}
        claims += [
            {"name": f"{key} neuron", "kind": "coordinates", "indices": [int(top[0])],
             "signs": [int(np.sign(eff[top[0]]))], **common},
            {"name": f"{key} top-8 coordinates", "kind": "coordinates", "indices": top[:8].tolist(),
             "signs": np.sign(eff[top[:8]]).astype(int).tolist(), "frame": FRAME, **common},
            {"name": f"{key} direction (bare)", "kind": "direction", "vector": direction, **common},
            {"name": f"{key} direction", "kind": "direction", "vector": direction, "frame": FRAME, **common},
            {"name": f"{key} top-10 attributions (bare)", "kind": "attribution",
             "attributions": [[int(i), float(eff[i])] for i in top[:10]], **common},
            {"name": f"{key} top-10 attributions", "kind": "attribution",
             "attributions": [[int(i), float(eff[i])] for i in top[:10]], "frame": FRAME, **common},
        ]
    return claims


def audit(ctx: Context, out: Path) -> dict[str, Any]:
    """Claims about the base, swept over identity, random gauges, and the gauge *estimated* between the
    base and a copy of it saved in a hidden gauge (that copy's own activations are the evidence there:
    the same network in unknown coordinates, as when a checkpoint is re-released)."""
    from gaugeport.study.transport_checks import estimated_gauge

    site = site_name(ctx.cfg.site_layer)
    base = ctx.model(ctx.art.base)
    hidden = in_gauge(base, SignedPermutation.random(ctx.d, seed=derived_seed(ctx.cfg.seed, 121)))
    base_acts, hidden_acts = _evidence(ctx, base), _evidence(ctx, hidden)
    return audit_with_claims(base_acts, hidden_acts, site, ctx.d, ctx.cfg.audit_random_gauges,
                             derived_seed(ctx.cfg.seed, 120) % 10_000, estimated_gauge(ctx, base, hidden), out)


def audit_with_claims(base_acts: dict[str, tuple[np.ndarray, np.ndarray]],
                      hidden_acts: dict[str, tuple[np.ndarray, np.ndarray]], site: str, d: int, n_random: int,
                      seed: int, estimated: SignedPermutation, out: Path) -> dict[str, Any]:
    """The study's claims made on the base's evidence, swept over identity, ``n_random`` random gauges and
    the ``estimated`` gauge to the hidden copy (whose activations are the evidence there); writes
    ``claims.json`` and ``audit/`` under ``out`` and returns the summary both presets report."""
    raw = study_claims(base_acts, site)
    claims = [Claim.from_dict(c) for c in raw]
    evidence = {k: Evidence(x, y, in_gauge={"estimated": hidden_acts[k][0]}) for k, (x, y) in base_acts.items()}
    sweep = gauge_sweep(d, n_random, seed, {"estimated": estimated})
    report = audit_claims(claims, sweep, evidence=evidence)
    atomic_write_json(out / "claims.json", {"claims": raw})
    write_audit(report, out / "audit", force=True)
    summary = report.to_dict()
    return {"n_claims": len(claims), "n_covariant": summary["n_covariant"],
            "n_index_bound": summary["n_index_bound"],
            "bare_index_bound": sum(v.verdict == "index-bound" for v in report.verdicts if not v.claim.frame),
            "framed_covariant": sum(v.verdict == "gauge-covariant" for v in report.verdicts if v.claim.frame),
            "claims": [{"name": v.claim.name, "stated": v.claim.stated, "verdict": v.verdict, "note": v.note()}
                       for v in report.verdicts]}
