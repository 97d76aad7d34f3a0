"""`reproduce --preset real` code path on its tiny stand-in (`real-micro`): schema, report, cache, facts.

The stand-in swaps SmolLM2 / MiniLM / their tokenizer for tiny random-init models and a byte tokenizer;
everything else (real text, lockstep trajectory, the 8 measurements, the three-column report) is the
real preset's code.
"""

from __future__ import annotations

import json
import math

import pytest

REQUIRED = {
    "matching": ("signed", "raw", "perm_only"),
    "trajectory": ("composed", "endpoint", "via_base"),
    "sae_nmse": ("signed", "perm_only"),
    "merge_loss": ("signed", "perm_only", "none"),
    "adamw_divergence": ("signed", "perm_only"),
    "function_max_logit_diff": ("rmsnorm_signed", "layernorm_signed", "layernorm_perm_only"),
}


@pytest.fixture(scope="module")
def real_micro(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    from gaugeport.study.config import preset
    from gaugeport.study.run import run_study

    results = run_study(preset("real-micro"), root / "report", progress=False, cache_root=root / "cache")
    return root, results


def test_results_have_the_quick_keys_plus_model_and_corpus(real_micro):
    root, _ = real_micro
    r = json.loads((root / "report" / "results.json").read_text())
    for group, keys in REQUIRED.items():
        for key in keys:
            assert isinstance(r[group][key], float | int) and math.isfinite(r[group][key]), f"{group}.{key}"
    assert r["config"]["preset"] == "real-micro" and r["model"]["d_model"] == 32
    assert "PSF" in r["corpus"]["license"] and r["corpus"]["provenance"]
    assert set(r["trajectory_regimes"]) == {"aggressive", "gentle"}
    assert [x["seed"] for x in r["trajectory_regimes"]["aggressive"]["seeds"]] == [0, 1]  # the stand-in runs 2
    for reg in r["trajectory_regimes"].values():
        assert reg["curve"] and all(0 <= c[k] <= 1 for c in reg["curve"] for k in ("composed", "endpoint"))


def test_report_has_three_columns_timings_and_plots(real_micro):
    root, r = real_micro
    out = root / "report"
    report = (out / "report.md").read_text()
    assert "| this run (real model) | quick toy run | paper |" in report
    for stage in ("train-trajectory-aggressive", "2-matching", "7-adamw", "8-audit", "total"):
        assert f"| {stage} |" in report
    for name in ("ceiling.png", "trajectory.png", "transport.png", "claims.json", "audit/audit.json"):
        assert (out / name).stat().st_size > 0, name
    from gaugeport.study.real.report import markdown, rows

    with_toy = rows(r, r)  # the middle column renders any toy-shaped results
    assert len(with_toy) == 9 and all(row[2] != "not run" and row[4].endswith(".") for row in with_toy)
    assert "quick-toy/" in markdown(r, r)


def test_rows_5a_5b_print_a_ratio_only_over_a_direction_that_passed_the_gate(real_micro):
    import copy

    from gaugeport.study.real.report import rows

    _, r = real_micro
    for ratio, sweep in (("steering_preserved", "steering_sweep"), ("refusal_effect", "refusal_sweep")):
        assert (r[ratio] is not None) == r[sweep]["passes"]
    failed = copy.deepcopy(r)
    failed["steering_preserved"] = failed["refusal_effect"] = None
    failed["steering_sweep"]["passes"] = failed["refusal_sweep"]["passes"] = False
    for t in failed["steering_sweep"]["tried"] + failed["refusal_sweep"]["tried"]:
        t["passes"] = False
    r5 = [row for row in rows(failed, None) if row[0].startswith("5")]
    assert len(r5) == 2 and all(row[1].startswith("no ratio") and "%" not in row[1] for row in r5)
    assert all("Not measurable" in row[4] for row in r5)


def test_exact_symmetries_on_the_pretrained_path(real_micro):
    _, r = real_micro
    f = r["function_max_logit_diff"]
    assert f["rmsnorm_signed"] < 1e-5 * f["logit_scale"]
    assert f["layernorm_perm_only"] < 1e-5 * f["control_scale"] < f["layernorm_signed"]
    assert r["matching"]["signed"] > max(r["matching"]["raw"], r["matching"]["perm_only"])
    assert r["transfer_gauge"]["accuracy"] > 0.9 and r["merge_loss"]["gauge_accuracy"] > 0.9


def test_signed_transport_beats_permutation_only(real_micro):
    _, r = real_micro
    assert r["sae_nmse"]["signed"] < r["sae_nmse"]["perm_only"]
    if r["refusal_cosine"] is not None:  # only over a direction that passed the gate on the base
        assert r["refusal_cosine"]["signed"] > r["refusal_cosine"]["perm_only"]
    assert r["merge_loss"]["signed"] < min(r["merge_loss"]["perm_only"], r["merge_loss"]["none"])
    assert r["adamw_divergence"]["signed"] < 1e-3 < r["adamw_divergence"]["perm_only"]


def test_a_second_build_reuses_every_stage(real_micro):
    root, first = real_micro
    from gaugeport.study.cache import StageCache
    from gaugeport.study.config import preset
    from gaugeport.study.real.stages import build_real

    cache = StageCache(True, root / "cache")
    build_real(preset("real-micro").real, 0, cache, progress=False)
    assert cache.misses == [] and set(cache.hits) == set(first["cache"]["misses"])


def test_cli_refuses_unknown_preset_and_missing_cuda(cli, tmp_path):
    code, _, err = cli("reproduce", "--preset", "huge", "--out", str(tmp_path / "x"))
    assert code == 2 and "unknown preset" in err
    import torch

    if not torch.cuda.is_available():
        code, _, err = cli("reproduce", "--preset", "real-micro", "--device", "cuda", "--out", str(tmp_path / "y"))
        assert code == 2 and "CUDA" in err
    code, _, err = cli("reproduce", "--quick", "--device", "cuda:0", "--out", str(tmp_path / "z"))
    assert code == 2


def test_trajectory_row_states_the_gap_only_when_measured(real_micro):
    import copy

    from gaugeport.study.real.report import rows

    _, r = real_micro
    r = copy.deepcopy(r)
    hard = r["trajectory_regimes"]["aggressive"]

    def row3() -> tuple[str, ...]:
        return next(row for row in rows(r, None) if row[0].startswith("3."))

    hard.update(composed=0.76, endpoint=0.02, warmup=10)
    assert "gap appears" in row3()[4] and "warm-up 10 steps" in row3()[1]
    hard["seeds"] = [{"seed": 0, "composed": 0.76, "endpoint": 0.02, "via_base": 0.07},
                     {"seed": 1, "composed": 1.0, "endpoint": 1.0, "via_base": 1.0}]
    assert "shows in 1 of 2 seeds" in row3()[4] and "not in seed 1" in row3()[4]
    assert "seeds 0 / 1: composed 76.0% / 100.0%" in row3()[1]
    hard.update(composed=1.0, endpoint=0.99)
    assert "does not appear" in row3()[4]


def test_steering_only_reuses_the_studys_stages_and_finds_the_same_sweep(real_micro):
    root, r = real_micro
    from gaugeport.study.real.steering_only import measure

    s = measure(root / "steering", stand_in=True, cache_root=root / "cache")
    assert s["cache_misses"] == []
    assert s["steering_sweep"] == r["steering_sweep"] and s["refusal_sweep"] == r["refusal_sweep"]
    md = (root / "steering" / "steering.md").read_text()
    assert "| 5a." in md and "| 5b." in md and "### Sentiment" in md


def test_an_older_results_json_without_a_sweep_renders_without_any_steering_ratio():
    """A run that predates the gate (as the committed one did) must not have its ratios printed."""
    from pathlib import Path

    from gaugeport.study.real.report import rows

    docs = Path(__file__).resolve().parents[2] / "docs" / "real-study"
    real = json.loads((docs / "results.json").read_text())
    quick = json.loads((docs / "quick-results.json").read_text())
    for key in ("steering_sweep", "refusal_sweep", "intervals"):
        real.pop(key, None)  # what an older run lacks
        quick.pop(key, None)
    real["steering_preserved"] = {"signed": 0.7, "perm_only": 3.4, "native_target": 0.9, "source_effect": -0.3}
    real["refusal_effect"] = {"signed": 0.97, "perm_only": 1.65, "source_effect": -0.6}
    real["refusal_cosine"] = {"signed": 1.0, "perm_only": -0.02}
    r5 = [row for row in rows(real, quick) if row[0].startswith("5")]
    assert all(row[1].startswith("no ratio") and row[2].startswith("no ratio") for row in r5)
