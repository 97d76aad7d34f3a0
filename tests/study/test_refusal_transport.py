"""Rows 5a and 5b's transport step: a direction carried through the gauge that relates two models keeps its effect
signed, and loses it permutation-only (the readout of the target is the source's under that gauge)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from gaugeport.core.gauge import SignedPermutation
from gaugeport.study import steer
from gaugeport.transport import transport_vector


@dataclass
class LinearStandIn:
    """A target whose per-prompt effect is <v, readout of the source pushed through the gauge> times a scale."""

    gauge: SignedPermutation
    readout: torch.Tensor
    direction: torch.Tensor
    scales: np.ndarray
    kept: dict[str, object] = field(default_factory=dict)

    def keep(self, name, iv):
        self.kept[name] = iv
        return float((iv.to_dict() if hasattr(iv, "to_dict") else iv)["value"])


def stand_in(monkeypatch, seed: int) -> LinearStandIn:
    d, gauge = 32, SignedPermutation.random(32, seed=7)
    gen = torch.Generator().manual_seed(seed)
    readout = torch.randn(d, generator=gen, dtype=torch.float64)
    target_readout = transport_vector(readout, gauge)  # the gauged target reads the gauged stream
    direction = torch.randn(d, generator=gen, dtype=torch.float64)
    scales = np.linspace(0.8, 1.2, 8)  # per-prompt variation, so the bootstrap has something to resample
    monkeypatch.setattr(steer, "per_prompt_effect",
                        lambda model, probe, v, layer: scales * float(v.double() @ target_readout))
    return LinearStandIn(gauge, readout, direction, scales)


@pytest.fixture
def refusal(monkeypatch) -> LinearStandIn:
    return stand_in(monkeypatch, seed=0)


@pytest.fixture
def steering(monkeypatch) -> LinearStandIn:
    return stand_in(monkeypatch, seed=1)


def test_signed_transport_keeps_the_refusal_effect_and_perm_only_does_not(refusal):
    s = refusal
    source = s.scales * float(s.direction @ s.readout)
    row = steer.refusal_under_transport(s.keep, None, None, s.direction, transport_vector(s.direction, s.gauge),
                                        s.gauge, 0, source)
    assert row["refusal_cosine"]["signed"] > 1 - 1e-9
    assert row["refusal_cosine"]["perm_only"] < 0.9
    assert abs(row["refusal_effect"]["signed"] - 1.0) < 1e-9
    assert abs(row["refusal_effect"]["perm_only"] - 1.0) > 0.05
    assert row["refusal_effect"]["source_effect"] == source.mean()
    assert {"refusal.source_effect", "refusal.signed", "refusal.perm_only"} <= set(s.kept)


def test_signed_transport_keeps_the_steering_effect_and_perm_only_does_not(steering):
    """Row 5a's transport step (steer.transported)."""
    s = steering
    choice = {"vector": s.direction, "layer": 0, "effects": s.scales * float(s.direction @ s.readout)}
    own = 2.0 * transport_vector(s.direction, s.gauge)  # the target's own direction, twice as long
    row = steer.transported(s.keep, choice, None, None, s.gauge, own, {"signed": False, "perm_only": True})
    assert abs(row["signed"] - 1.0) < 1e-9
    assert abs(row["perm_only"] - 1.0) > 0.05
    assert abs(row["native_target"] - 2.0) < 1e-9
    assert row["source_effect"] == choice["effects"].mean()
    assert {"steering.source_effect", "steering.signed", "steering.perm_only", "steering.native_target"} <= set(s.kept)
