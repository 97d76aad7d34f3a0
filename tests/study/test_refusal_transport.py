"""Row 5b's transport step: a direction carried through the gauge that relates two models keeps its effect
signed, and loses it permutation-only (the readout of the target is the source's under that gauge)."""

from __future__ import annotations

import numpy as np
import torch

from gaugeport.core.gauge import SignedPermutation
from gaugeport.study import steer
from gaugeport.transport import transport_vector


def test_signed_transport_keeps_the_refusal_effect_and_perm_only_does_not(monkeypatch):
    d, gauge = 32, SignedPermutation.random(32, seed=7)
    gen = torch.Generator().manual_seed(0)
    readout = torch.randn(d, generator=gen, dtype=torch.float64)  # the source's per-prompt effect is <v, readout>
    target_readout = transport_vector(readout, gauge)  # the gauged target reads the gauged stream
    direction = torch.randn(d, generator=gen, dtype=torch.float64)
    scales = np.linspace(0.8, 1.2, 8)  # per-prompt variation, so the bootstrap has something to resample
    monkeypatch.setattr(steer, "per_prompt_effect",
                        lambda model, probe, v, layer: scales * float(v.double() @ target_readout))
    kept: dict[str, object] = {}

    def keep(name, iv):
        kept[name] = iv
        return float((iv.to_dict() if hasattr(iv, "to_dict") else iv)["value"])

    source = scales * float(direction @ readout)
    row = steer.refusal_under_transport(keep, None, None, direction, transport_vector(direction, gauge), gauge, 0,
                                        source)
    assert row["refusal_cosine"]["signed"] > 1 - 1e-9
    assert row["refusal_cosine"]["perm_only"] < 0.9
    assert abs(row["refusal_effect"]["signed"] - 1.0) < 1e-9
    assert abs(row["refusal_effect"]["perm_only"] - 1.0) > 0.05
    assert row["refusal_effect"]["source_effect"] == source.mean()
    assert {"refusal.source_effect", "refusal.signed", "refusal.perm_only"} <= set(kept)


def test_signed_transport_keeps_the_steering_effect_and_perm_only_does_not(monkeypatch):
    """Row 5a's transport step (steer.transported), on the same linear stand-in for the target's readout."""
    d, gauge = 32, SignedPermutation.random(32, seed=7)
    gen = torch.Generator().manual_seed(1)
    readout = torch.randn(d, generator=gen, dtype=torch.float64)
    target_readout = transport_vector(readout, gauge)
    direction = torch.randn(d, generator=gen, dtype=torch.float64)
    scales = np.linspace(0.8, 1.2, 8)
    monkeypatch.setattr(steer, "per_prompt_effect",
                        lambda model, probe, v, layer: scales * float(v.double() @ target_readout))
    kept: dict[str, object] = {}

    def keep(name, iv):
        kept[name] = iv
        return float((iv.to_dict() if hasattr(iv, "to_dict") else iv)["value"])

    choice = {"vector": direction, "layer": 0, "effects": scales * float(direction @ readout)}
    own = 2.0 * transport_vector(direction, gauge)  # the target's own direction, twice as long
    row = steer.transported(keep, choice, None, None, gauge, own, {"signed": False, "perm_only": True})
    assert abs(row["signed"] - 1.0) < 1e-9
    assert abs(row["perm_only"] - 1.0) > 0.05
    assert abs(row["native_target"] - 2.0) < 1e-9
    assert row["source_effect"] == choice["effects"].mean()
    assert {"steering.source_effect", "steering.signed", "steering.perm_only", "steering.native_target"} <= set(kept)
