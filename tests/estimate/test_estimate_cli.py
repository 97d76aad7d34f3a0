"""`gaugeport collect` and `gaugeport align` end to end on tiny checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gaugeport.core.gauge import load_gauge, read_gauge_file
from gaugeport.estimate.moments import MomentSet

SMALL = ("--tokens", "1024", "--seq-len", "32", "--batch-size", "8", "--quiet")


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Checkpoint A, B = a random gauge applied to A (through the apply verb), and that gauge."""
    from gaugeport.core.apply import apply_gauge_to_checkpoint
    from gaugeport.core.gauge import SignedPermutation, save_gauge
    from gaugeport.models.tiny import save_tiny

    root = tmp_path_factory.mktemp("pair")
    a = save_tiny("llama", root / "a", seed=0)
    truth = SignedPermutation.random(32, seed=5)
    apply_gauge_to_checkpoint(a, truth, root / "b", progress=False)
    return a, root / "b", save_gauge(truth, root / "truth.safetensors")


def test_collect_then_align_from_two_moment_shards(cli, pair, tmp_path) -> None:
    a, b, truth = pair
    for seed in (0, 1):
        code, out, err = cli("collect", a, b, "--data", "builtin", "--seed", seed, "--out",
                             tmp_path / f"m{seed}.safetensors", *SMALL)
        assert code == 0, err
    shards = [MomentSet.load(tmp_path / f"m{s}.safetensors") for s in (0, 1)]
    code, out, err = cli("align", a, b, "--moments", tmp_path / "m0.safetensors", tmp_path / "m1.safetensors",
                         "--truth", truth, "--out", tmp_path / "g.safetensors")
    assert code == 0, err
    assert "full 100.00%" in out
    f = read_gauge_file(tmp_path / "g.safetensors")
    assert f.gauge == load_gauge(truth)
    assert f.provenance["n_tokens"] == sum(s.n_tokens for s in shards)
    assert set(f.extras) == {"confidence", "margin"}


def test_align_from_data_writes_a_report_with_accuracy(cli, pair, tmp_path) -> None:
    a, b, truth = pair
    code, out, err = cli("align", a, b, "--data", "builtin", "--method", "raw", "--truth", truth,
                         "--out", tmp_path / "g.safetensors", "--report", tmp_path / "r.json", *SMALL)
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["method"] == "raw" and report["accuracy"]["full"] < 0.75  # the naive baseline's ceiling
    assert read_gauge_file(tmp_path / "g.safetensors").provenance["method"] == "raw"


def test_align_reads_npy_token_ids_and_restricts_sites(cli, pair, tmp_path) -> None:
    a, b, truth = pair
    np.save(tmp_path / "ids.npy", np.random.default_rng(0).integers(3, 96, size=(16, 64)))
    code, out, err = cli("align", a, b, "--data", tmp_path / "ids.npy", "--site", "resid_post.1",
                         "--truth", truth, "--out", tmp_path / "g.safetensors", *SMALL)
    assert code == 0, err
    assert read_gauge_file(tmp_path / "g.safetensors").provenance["sites"] == ["resid_post.1"]
    assert "full 100.00%" in out


def test_weights_method_needs_no_data(cli, pair, tmp_path) -> None:
    a, b, truth = pair
    code, out, err = cli("align", a, b, "--method", "weights", "--out", tmp_path / "g.safetensors")
    assert code == 0, err
    assert load_gauge(tmp_path / "g.safetensors") == load_gauge(truth)


def test_moments_of_another_pair_are_refused(cli, pair, tiny_dir, tmp_path) -> None:
    a, b, _ = pair
    code, _, err = cli("collect", a, b, "--out", tmp_path / "m.safetensors", *SMALL)
    assert code == 0, err
    code, _, err = cli("align", a, tiny_dir("llama", 1), "--moments", tmp_path / "m.safetensors",
                       "--out", tmp_path / "g.safetensors")
    assert code == 2 and "not collected from these checkpoints" in err
    assert not (tmp_path / "g.safetensors").exists()


def test_the_same_shard_twice_is_refused(cli, pair, tmp_path) -> None:
    a, b, _ = pair
    cli("collect", a, b, "--out", tmp_path / "m.safetensors", *SMALL)
    code, _, err = cli("align", a, b, "--moments", tmp_path / "m.safetensors", tmp_path / "m.safetensors",
                       "--out", tmp_path / "g.safetensors")
    assert code == 2 and "counted twice" in err


@pytest.mark.parametrize(("args", "message"), [
    (("--method", "magic"), "unknown method"),
    (("--method", "weights", "--data", "builtin"), "uses no data"),
    (("--data", "builtin", "--moments", "m.safetensors"), "not both"),
])
def test_contradictory_options_are_refused(cli, pair, tmp_path, args: tuple[str, ...], message: str) -> None:
    a, b, _ = pair
    code, _, err = cli("align", a, b, *args, "--out", tmp_path / "g.safetensors")
    assert code == 2 and message in err


def test_width_mismatch_between_checkpoints_is_refused(cli, pair, tmp_path) -> None:
    from gaugeport.models.tiny import save_tiny

    wide = save_tiny("llama", tmp_path / "wide", seed=0, hidden_size=48, num_attention_heads=6)
    code, _, err = cli("align", pair[0], wide, "--out", tmp_path / "g.safetensors", *SMALL)
    assert code == 2 and "width mismatch" in err


def test_existing_output_is_not_overwritten_without_force(cli, pair, tmp_path) -> None:
    a, b, _ = pair
    (tmp_path / "g.safetensors").write_text("keep me")
    code, _, err = cli("align", a, b, "--method", "weights", "--out", tmp_path / "g.safetensors")
    assert code == 2 and "already exists" in err
    assert (tmp_path / "g.safetensors").read_text() == "keep me"


def test_via_aligns_hop_by_hop_and_composes(cli, pair, tmp_path) -> None:
    from gaugeport.core.apply import apply_gauge_to_checkpoint
    from gaugeport.core.gauge import SignedPermutation

    a, b, truth = pair
    mid = apply_gauge_to_checkpoint(a, SignedPermutation.random(32, seed=9), tmp_path / "c", progress=False)
    code, out, err = cli("align", a, b, "--via", mid, "--truth", truth, "--out", tmp_path / "g.safetensors",
                         *SMALL)
    assert code == 0, err
    assert "full 100.00%" in out
    assert read_gauge_file(tmp_path / "g.safetensors").provenance["method"] == "signed (chain)"


def test_collect_refuses_moments_that_would_not_fit_and_names_the_sites_that_would(cli, pair, tmp_path,
                                                                                     monkeypatch) -> None:
    from gaugeport.estimate import moments

    a, b, _ = pair
    per_site = moments.moment_bytes(1, 32)
    monkeypatch.setattr(moments, "available_memory_bytes", lambda: 3 * per_site)  # room for 2 sites at 0.8
    out = tmp_path / "m.safetensors"
    code, _, err = cli("collect", a, b, "--data", "builtin", "--out", out, *SMALL)  # 5 default sites
    assert code == 2 and "the moments of 5 sites at d=32 need" in err
    assert "restrict --site to at most 2 sites" in err and not out.exists()
    code, _, err = cli("collect", a, b, "--data", "builtin", "--site", "resid_post.0", "--site", "resid_post.1",
                       "--out", out, *SMALL)
    assert code == 0, err


def test_moment_bytes_is_what_the_accumulator_holds() -> None:
    from gaugeport.estimate.moments import CrossMoments, moment_bytes

    cm = CrossMoments(48)
    held = sum(t.numel() * t.element_size() for t in (cm.mean_a, cm.mean_b, cm.m2_a, cm.m2_b, cm.comoment))
    assert moment_bytes(3, 48) == 3 * held
