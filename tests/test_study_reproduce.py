"""`gaugeport reproduce --micro`: the whole study at seconds scale, its schema and its headline facts."""

from __future__ import annotations

import json
import math

import pytest

REQUIRED = {
    "matching": ("signed", "raw", "perm_only"),
    "trajectory": ("composed", "endpoint", "via_base"),
    "sae_nmse": ("signed", "perm_only"),
    "steering_preserved": ("signed", "perm_only"),
    "refusal_cosine": ("signed", "perm_only"),
    "merge_loss": ("signed", "perm_only", "none"),
    "adamw_divergence": ("signed", "perm_only"),
    "function_max_logit_diff": ("rmsnorm_signed", "layernorm_signed"),
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One cold micro run with its own cache, then a second run that must reuse that cache."""
    root = tmp_path_factory.mktemp("study")
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
    from gaugeport.study.config import preset
    from gaugeport.study.run import run_study

    first = run_study(preset("micro"), root / "report", progress=False)
    second = run_study(preset("micro"), root / "report", progress=False)  # replaces its own earlier report
    mp.undo()
    return root / "report", first, second


def test_results_json_has_every_required_key_as_a_finite_number(study):
    out, _, _ = study
    results = json.loads((out / "results.json").read_text())
    for group, keys in REQUIRED.items():
        for key in keys:
            value = results[group][key]
            assert isinstance(value, float | int) and math.isfinite(value), f"{group}.{key} = {value!r}"
    assert results["config"]["preset"] == "micro"
    assert results["timings"]["total"] > 0


def test_report_plots_and_audit_are_written(study):
    out, _, _ = study
    report = (out / "report.md").read_text()
    assert "| measurement |" in report and "paper" in report
    for name in ("ceiling.png", "trajectory.png", "transport.png", "claims.json", "audit/audit.json"):
        assert (out / name).stat().st_size > 0, name


def test_signed_transport_beats_permutation_only_on_every_artifact(study):
    _, r, _ = study
    assert r["sae_nmse"]["signed"] < r["sae_nmse"]["perm_only"]
    assert abs(1 - r["steering_preserved"]["signed"]) < abs(1 - r["steering_preserved"]["perm_only"])
    assert r["refusal_cosine"]["signed"] > r["refusal_cosine"]["perm_only"]
    assert r["merge_loss"]["signed"] < min(r["merge_loss"]["perm_only"], r["merge_loss"]["none"])
    assert r["adamw_divergence"]["signed"] < r["adamw_divergence"]["perm_only"]


def test_signs_matter_for_rmsnorm_and_break_layernorm(study):
    _, r, _ = study
    f = r["function_max_logit_diff"]
    assert f["rmsnorm_signed"] < 1e-4 * f["logit_scale"] < f["layernorm_signed"]
    assert r["matching"]["signed"] > r["matching"]["raw"] and r["matching"]["signed"] > r["matching"]["perm_only"]


def test_the_second_run_reuses_every_cached_stage_and_measures_the_same(study):
    _, first, second = study
    assert set(first["cache"]["misses"]) == {"base", "control", "run-1", "run-2", "sae"}
    assert second["cache"]["misses"] == [] and set(second["cache"]["hits"]) == set(first["cache"]["misses"])
    assert second["matching"] == first["matching"] and second["sae_nmse"] == first["sae_nmse"]


def test_reproduce_refuses_to_replace_a_directory_that_is_not_a_report(cli, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code, _, err = cli("reproduce", "--micro", "--out", tmp_path / "mine", "--quiet")
    assert code == 2 and "not a previous" in err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
