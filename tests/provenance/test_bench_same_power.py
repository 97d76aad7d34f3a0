"""The power benchmark's figures (benchmarks/bench_same_power.py): computed from the per-layer entries."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_same_power as P  # noqa: E402


def _layer(z: float, z_unc: float, n: int, status: str = "derived") -> dict:
    return {"z": z, "z_uncorrected": z_unc, "n": n, "status": status, "sampled": True}


def test_stouffer_z_is_the_sum_of_the_tested_layers_z_over_the_root_of_their_count():
    rec = {"layers": [_layer(3.0, 4.0, 2048), _layer(1.0, 2.0, 2048), _layer(0.0, 0.0, 0, "independent")]}
    assert P.summarise(rec)["stouffer_z"] == pytest.approx(4.0 / math.sqrt(2))


def test_the_16_unit_projection_keeps_the_per_unit_effect():
    s = P.summarise({"layers": [_layer(8.0, 16.0, 1024)]})
    assert s["effect_per_unit"] == [pytest.approx(8.0 / 32.0)]
    assert s["z_at_stress_units"] == [pytest.approx(8.0 * 4.0 / 32.0)]


def test_corrected_over_uncorrected_z_is_reported_per_layer():
    s = P.summarise({"layers": [_layer(3.0, 6.0, 64), _layer(1.0, 0.0, 64)]})
    assert s["z_over_uncorrected"] == [pytest.approx(0.5), None]
