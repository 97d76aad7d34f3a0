"""`gaugeport reproduce --micro`: the whole study at seconds scale, its schema and its headline facts."""

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
    "function_max_logit_diff": ("rmsnorm_signed", "layernorm_signed"),
    "independent_merge": ("none", "residual", "full", "model_a", "model_b"),
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


def test_a_steering_ratio_is_reported_only_over_a_direction_that_passed_the_gate(study):
    _, r, _ = study
    for ratio, sweep in (("steering_preserved", "steering_sweep"), ("refusal_effect", "refusal_sweep")):
        rec = r[sweep]
        assert rec["passes"] == any(t["passes"] for t in rec["tried"])
        assert (r[ratio] is not None) == rec["passes"], ratio
        for t in rec["tried"]:
            assert len(t["random"]) == 20 and t["passes"] == all(t["checks"].values())


def test_every_headline_figure_has_an_interval_around_it(study):
    _, r, _ = study
    iv = r["intervals"]
    for group, keys in {"matching": ("signed", "raw", "perm_only"), "sae_nmse": ("signed", "perm_only"),
                        "merge_loss": ("signed", "perm_only", "none"), "adamw": ("signed", "perm_only"),
                        "trajectory": ("composed", "endpoint"), "function": ("rmsnorm_signed",),
                        "base": ("polarity_gap", "refusal_gap")}.items():
        for key in keys:
            x = iv[f"{group}.{key}"]
            assert x["lo"] <= x["value"] <= x["hi"] and x["n"] >= 2, f"{group}.{key}"


def test_report_plots_and_audit_are_written(study):
    out, _, _ = study
    report = (out / "report.md").read_text()
    assert "| measurement |" in report and "paper" in report
    for name in ("ceiling.png", "trajectory.png", "transport.png", "claims.json", "audit/audit.json"):
        assert (out / name).stat().st_size > 0, name


def test_signed_transport_beats_permutation_only_on_every_artifact(study):
    _, r, _ = study
    assert r["sae_nmse"]["signed"] < r["sae_nmse"]["perm_only"]
    if r["steering_preserved"] is not None:  # only over a direction that passed the gate on the base
        assert abs(1 - r["steering_preserved"]["signed"]) < abs(1 - r["steering_preserved"]["perm_only"])
    if r["refusal_cosine"] is not None:
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
    assert set(first["cache"]["misses"]) == {"base", "control", "run-1", "run-2", "sae", "base-2"}
    assert second["cache"]["misses"] == [] and set(second["cache"]["hits"]) == set(first["cache"]["misses"])
    assert second["matching"] == first["matching"] and second["sae_nmse"] == first["sae_nmse"]


def test_reproduce_refuses_to_replace_a_directory_that_is_not_a_report(cli, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code, _, err = cli("reproduce", "--micro", "--out", tmp_path / "mine", "--quiet")
    assert code == 2 and "not a previous" in err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_failed_stage_build_leaves_nothing_for_the_next_run_to_trust(tmp_path):
    from gaugeport.study.cache import BUILD_SECONDS, StageCache

    cache = StageCache(root=tmp_path)

    def broken(path):
        (path / "half-written").write_text("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        cache.stage("base", "k1", broken)
    built = cache.stage("base", "k1", lambda p: (p / "done").write_text("ok"))
    assert sorted(p.name for p in built.iterdir()) == sorted([BUILD_SECONDS, "done"])  # nothing half-written
    assert cache.stage("base", "k1", broken) == built and cache.hits == ["base"]


def test_no_cache_builds_in_a_scratch_directory_that_is_removed():
    from gaugeport.study.cache import StageCache

    cache = StageCache(use_cache=False)
    path = cache.stage("sae", "k", lambda p: (p / "w").write_text("1"))
    assert path.is_dir()
    cache.close()
    assert not path.exists()


@pytest.mark.parametrize("name", ["micro", "quick", "full"])
def test_every_preset_saves_the_checkpoints_its_measurements_use(name):
    from dataclasses import replace

    from gaugeport.core.errors import GaugeportError
    from gaugeport.study.config import preset

    cfg = preset(name)
    assert {cfg.transfer_step, cfg.merge_step, cfg.adamw_step} <= set(cfg.checkpoint_steps)
    parts = ("seed", "model", "base")
    assert cfg.key(*parts) == preset(name).key(*parts) != replace(cfg, seed=1).key(*parts)
    with pytest.raises(GaugeportError):
        replace(cfg, merge_step=cfg.finetune.steps + 1)


def test_the_study_sae_loads_with_saelens_and_reconstructs_like_the_study_measured(study):
    from pathlib import Path

    import torch
    from sae_lens import SAE

    from gaugeport.study.evaluate import sae_nmse
    from gaugeport.study.sae import load_saelens

    _, first, _ = study
    sae_dir = next(Path(first["cache"]["root"]).glob("sae-*/sae"))
    sae = SAE.load_from_disk(sae_dir)
    assert sae.cfg.metadata.hook_name == f"blocks.{first['config']['site_layer']}.hook_resid_post"
    x = torch.randn(32, first["config"]["model"]["d_model"])
    assert sae_nmse(sae, x) == pytest.approx(sae_nmse(load_saelens(sae_dir), x), rel=1e-5)



def test_a_stage_remembers_its_build_time_and_a_concurrent_builder_leaves_one_complete_copy(tmp_path):
    from gaugeport.study.cache import BUILD_SECONDS, StageCache

    first, second = StageCache(root=tmp_path), StageCache(root=tmp_path)

    def build_racing(path):  # another process finishes the same stage while this one builds it
        (path / "mine").write_text("late")
        first.stage("sae", "k", lambda p: (p / "theirs").write_text("first"))

    built = second.stage("sae", "k", build_racing)
    assert sorted(p.name for p in built.iterdir()) == sorted([BUILD_SECONDS, "mine"])
    third = StageCache(root=tmp_path)
    third.stage("sae", "k", lambda p: None)
    assert third.hits == ["sae"] and third.built_seconds["sae"] >= 0
