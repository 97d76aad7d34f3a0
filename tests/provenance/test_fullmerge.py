"""``merge --full``: B brought into A's coordinates by the whole estimated gauge, then averaged.

Function checks (float32, 1e-5 relative): at alpha=1 the merge is B rewritten in A's coordinates and
must compute B's logits; a gauged copy merged with its source under full alignment is the source.
"""

from __future__ import annotations

from gaugeport.core.fullgauge import apply_full_gauge_to_checkpoint, random_full_gauge_for, save_full_gauge
from gaugeport.core.verify import compare_models, load_model
from gaugeport.models.tiny import probe_ids
from gaugeport.provenance.fullmerge import estimate_full_gauge, merge_checkpoints_full

REL_TOL = 1e-5


def test_full_merge_of_a_gauged_copy_is_the_source(tiny_dir, tmp_path):
    a = tiny_dir("llama")
    truth = random_full_gauge_for(a, 4)
    apply_full_gauge_to_checkpoint(a, truth, tmp_path / "copy", progress=False)
    est, hidden = estimate_full_gauge(a, tmp_path / "copy")
    assert est == truth
    assert all(m.min() > 0 for m in hidden.mlp_margin)  # per-unit confidence: every match has a margin
    used = merge_checkpoints_full(a, tmp_path / "copy", None, tmp_path / "m", alpha=0.5)
    assert used == truth
    res = compare_models(load_model(a), load_model(tmp_path / "m"), probe_ids(96), None, REL_TOL)
    assert res.max_rel_diff <= REL_TOL, res


def test_full_merge_at_alpha_one_computes_b(tiny_dir, tmp_path, cli):
    a, b = tiny_dir("llama"), tiny_dir("llama", 1)
    code, out, err = cli("merge", a, b, "--full", "--alpha", "1.0", "--out", tmp_path / "m", "--quiet")
    assert code == 0, err
    assert "full-network alignment" in out
    res = compare_models(load_model(b), load_model(tmp_path / "m"), probe_ids(96), None, REL_TOL)
    assert res.max_rel_diff <= REL_TOL, res
    # a version-2 gauge file is used as is
    g, _ = estimate_full_gauge(a, b)
    save_full_gauge(g, tmp_path / "g.safetensors")
    code, _, err = cli("merge", a, b, "--full", "--gauge", tmp_path / "g.safetensors", "--alpha", "1.0", "--out",
                       tmp_path / "m2", "--quiet")
    assert code == 0, err
    assert compare_models(load_model(b), load_model(tmp_path / "m2"), probe_ids(96), None).max_rel_diff <= REL_TOL


def test_merge_without_gauge_needs_full(tiny_dir, tmp_path, cli):
    code, _, err = cli("merge", tiny_dir("llama"), tiny_dir("llama", 1), "--out", tmp_path / "m")
    assert code == 2 and "--gauge" in err and "hint:" in err
