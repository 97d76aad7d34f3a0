"""``same A B``: identical / derived / independent, the p-value, and the recovered gauge as evidence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gaugeport.core.archspec import get_spec
from gaugeport.core.checkpoint import Checkpoint
from gaugeport.core.fullgauge import (
    apply_full_gauge_to_checkpoint,
    load_full_gauge,
    random_full_gauge_for,
)
from gaugeport.core.hidden import families_with_hidden, get_hidden_spec
from gaugeport.provenance.same import same


@pytest.mark.parametrize("seed", [3, 4])
def test_gauged_copy_is_identical_with_the_exact_gauge(zoo, tmp_path, seed, either_path):
    truth = random_full_gauge_for(zoo["base"], seed)
    apply_full_gauge_to_checkpoint(zoo["base"], truth, tmp_path / "copy", progress=False)
    res = same(zoo["base"], tmp_path / "copy")
    assert res.verdict == "identical"
    assert res.gauge == truth  # residual, every layer's MLP units (with signs) and heads
    assert res.identical_check["max_rel_weight_diff"] == 0.0
    assert res.identical_check["logits_max_rel_diff"] <= 1e-5
    assert res.p_value < 1e-10


def test_fold_gains_then_rotate_is_identical_and_the_rotation_is_recovered(zoo, tmp_path):
    from gaugeport.core.verify import load_model
    from gaugeport.provenance.disguise import fold_gains, random_orthogonal, rotate_residual

    model = load_model(zoo["base"])
    spec = get_spec("llama")
    q = random_orthogonal(32, seed=5)
    model.load_state_dict(rotate_residual(fold_gains(model.state_dict(), spec), spec, q))
    model.save_pretrained(tmp_path / "rotated")
    res = same(zoo["base"], tmp_path / "rotated")
    assert res.verdict == "identical"
    assert res.residual["kind"] == "orthogonal"
    assert np.abs(res.rotation - q).max() < 1e-5  # orthogonal Procrustes recovers the rotation
    assert res.identical_check["max_rel_weight_diff"] < 1e-5


def test_gauged_finetune_is_derived(zoo):
    res = same(zoo["base"], zoo["ft"])
    assert res.verdict == "derived"
    assert res.p_value < 1e-3
    assert all(lay["status"] == "derived" for lay in res.layers)  # localisation: every layer descends from A


@pytest.mark.parametrize("pair", [("base", "ind1"), ("base", "ind2"), ("ind1", "ind2")])
def test_independent_seeds_are_independent(zoo, pair):
    res = same(zoo[pair[0]], zoo[pair[1]])
    assert res.verdict == "independent"
    assert res.p_value >= 0.05


def test_permutation_only_matcher_loses_power_on_a_signed_copy_while_same_keeps_it(zoo, tmp_path):
    from gaugeport.core.apply import apply_gauge_to_checkpoint
    from gaugeport.core.gauge import SignedPermutation
    from gaugeport.provenance.baseline import permutation_matcher_test

    g = SignedPermutation.random(32, seed=3)
    apply_gauge_to_checkpoint(zoo["base"], g.perm_only(), tmp_path / "sd", progress=False)
    apply_gauge_to_checkpoint(zoo["base"], g, tmp_path / "bd", progress=False)
    assert permutation_matcher_test(zoo["base"], tmp_path / "sd")["p_value"] < 1e-10  # it works on S_d copies
    lost = permutation_matcher_test(zoo["base"], tmp_path / "bd")["p_value"]
    assert lost > 1e-3  # ... and cannot call the B_d copy derived
    res = same(zoo["base"], tmp_path / "bd")
    assert res.verdict == "identical" and res.p_value < 1e-10


def test_cli_same_json_report_and_gauge(zoo, tmp_path, cli):
    truth = random_full_gauge_for(zoo["base"], 8)
    apply_full_gauge_to_checkpoint(zoo["base"], truth, tmp_path / "copy", progress=False)
    code, out, err = cli("same", zoo["base"], tmp_path / "copy", "--json", "--report", tmp_path / "r.json",
                         "--save-gauge", tmp_path / "g.safetensors")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["verdict"] == "identical" and doc["p_value"] < 1e-10
    assert [lay["layer"] for lay in doc["layers"]] == [0, 1]
    assert json.loads((tmp_path / "r.json").read_text())["verdict"] == "identical"
    assert load_full_gauge(tmp_path / "g.safetensors") == truth
    code, out, _ = cli("same", zoo["base"], zoo["ind1"])
    assert code == 0 and "verdict     independent" in out


def test_cli_same_bad_input(zoo, tiny_dir, cli, tmp_path):
    code, _, err = cli("same", zoo["base"], tiny_dir("gpt2"))
    assert code == 2 and "different architectures" in err and "hint:" in err
    code, out, err = cli("same", zoo["base"], tiny_dir("llama"))  # another vocabulary: lineage, not a refusal
    assert code == 0 and "verdict     independent (lineage" in out, err
    code, _, err = cli("same", tiny_dir("llama"), tiny_dir("llama", 1), "--alpha", "2")
    assert code == 2 and "alpha" in err
    (tmp_path / "r.json").write_text("{}")
    code, _, err = cli("same", zoo["base"], zoo["ind1"], "--report", tmp_path / "r.json")
    assert code == 2 and "already exists" in err


def test_data_mode_recovers_the_full_gauge_from_activations(zoo, tmp_path):
    truth = random_full_gauge_for(zoo["base"], 6)
    apply_full_gauge_to_checkpoint(zoo["base"], truth, tmp_path / "copy", progress=False)
    res = same(zoo["base"], tmp_path / "copy", data="builtin", tokens=1024)
    assert res.residual["method"] != "weights"  # the residual gauge comes from activations, not weights
    assert any("activation correlations" in n for n in res.notes)
    assert res.verdict == "identical" and res.gauge == truth


def test_cli_same_with_data_calls_the_gauged_finetune_derived(zoo, cli):
    code, out, err = cli("same", zoo["base"], zoo["ft"], "--data", "builtin", "--tokens", "1024", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["verdict"] == "derived" and doc["p_value"] < 1e-3


@pytest.mark.parametrize("model_type", families_with_hidden())
def test_every_family_with_hidden_rows_gauged_on_disk_is_identical_with_the_exact_gauge(model_type, tmp_path,
                                                                                        either_path):
    """``apply --full``'s checkpoint path and ``same``'s data-free recovery, family by family (tiny
    untrained models with mixed-sign gains); the identical check compares the checkpoint's own logits."""
    from gaugeport.models.tiny import save_tiny

    a = save_tiny(model_type, tmp_path / "a", seed=1)
    truth = random_full_gauge_for(a, 5)
    apply_full_gauge_to_checkpoint(a, truth, tmp_path / "b", progress=False)
    res = same(a, tmp_path / "b")
    assert res.verdict == "identical" and res.gauge == truth
    assert res.identical_check["logits_max_rel_diff"] <= 1e-5


def _save_state(src, dest, edit):
    """Load ``src``, apply ``edit(state_dict) -> state_dict``, save to ``dest`` (a new checkpoint)."""
    from gaugeport.core.verify import load_model

    model = load_model(src)
    model.load_state_dict(edit(model.state_dict()))
    model.save_pretrained(dest)
    return dest


def _zero_units(units):
    def edit(sd):
        sd = {k: v.clone() for k, v in sd.items()}
        for k in sd:
            if k.endswith(("gate_proj.weight", "up_proj.weight")):
                sd[k][units] = 0.0
            elif k.endswith("down_proj.weight"):
                sd[k][:, units] = 0.0
        return sd
    return edit


def test_units_zeroed_alike_in_two_independent_models_do_not_make_them_derived(zoo, tmp_path):
    """Pruned or padded units are ties on every score: they leave n instead of counting for the match."""
    units = list(range(0, 64, 4))  # the same 16 of 64 units zeroed in both
    a = _save_state(zoo["ind1"], tmp_path / "a", _zero_units(units))
    b = _save_state(zoo["ind2"], tmp_path / "b", _zero_units(units))
    res = same(a, b)
    assert res.verdict == "independent" and res.p_value >= 0.01
    assert all(lay["mlp_units_tested"] == 64 - 16 for lay in res.layers)


def test_zeroed_units_keep_a_pruned_finetune_derived(zoo, tmp_path):
    units = list(range(0, 64, 4))
    b = _save_state(zoo["ft"], tmp_path / "b", _zero_units(units))
    res = same(zoo["base"], b)
    assert res.verdict == "derived"


def test_combined_p_is_stouffer_over_the_layers_z_and_layer_status_uses_bonferroni(zoo):
    from scipy import stats

    res = same(zoo["base"], zoo["ft"])
    zs = [lay["z"] for lay in res.layers]
    assert res.log10_p == pytest.approx(stats.norm.logsf(sum(zs) / np.sqrt(len(zs))) / np.log(10), rel=1e-9)
    for lay in res.layers:
        assert lay["status_alpha"] == pytest.approx(res.alpha / len(zs))
        assert lay["status"] == ("derived" if lay["p_value"] < res.alpha / len(zs) else "independent")


@pytest.mark.parametrize("model_type", ["gpt2", "bert", "gpt_neox", "phi", "llama"])
def test_data_mode_finds_the_down_projection_by_table_role_on_every_family(model_type, tmp_path):
    """GPT-2's reader ``c_fc`` and writer ``c_proj``, BERT's three ``dense`` modules: the writer is the one
    the table marks ``write`` on an MLP hidden row, at its exact module path."""
    from gaugeport.core.verify import load_model
    from gaugeport.models.tiny import save_tiny
    from gaugeport.provenance.same import down_projection_modules

    a = save_tiny(model_type, tmp_path / "a", seed=1)
    paths = down_projection_modules(load_model(a), get_spec(model_type), get_hidden_spec(model_type))
    assert len(paths) == 2 and len(set(paths)) == 2
    assert all(p.endswith(("mlp.c_proj", "output.dense", "dense_4h_to_h", "mlp.fc2", "down_proj")) for p in paths)
    assert not any("attention" in p for p in paths)
    truth = random_full_gauge_for(a, 5)
    apply_full_gauge_to_checkpoint(a, truth, tmp_path / "b", progress=False)
    res = same(a, tmp_path / "b", data="builtin", tokens=512)
    assert any("activation correlations" in n for n in res.notes), res.notes
    assert res.verdict == "identical" and res.gauge == truth


def test_tied_embeddings_with_uniform_gains_are_compared_not_refused(tmp_path, general_path):
    """A tied checkpoint whose gains are all ones: the final gain cannot be folded into a head that is
    the embedding, so it stays as stored (and is said so), and a gauged copy is identical."""
    from gaugeport.models.tiny import tiny_model

    model = tiny_model("llama", 2, tie_word_embeddings=True)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.fill_(1.0)
    model.save_pretrained(tmp_path / "a")
    assert "lm_head.weight" not in Checkpoint.open(tmp_path / "a").names
    truth = random_full_gauge_for(tmp_path / "a", 4)
    apply_full_gauge_to_checkpoint(tmp_path / "a", truth, tmp_path / "b", progress=False)
    res = same(tmp_path / "a", tmp_path / "b")
    assert res.verdict == "identical"
    assert any("model.norm.weight not folded" in n for n in res.notes)


def test_a_tensor_only_one_side_holds_is_listed_not_refused(zoo, tmp_path):
    """A buffer an older save kept (or a head an export dropped): compare the rest, list it."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(zoo["base"], tmp_path / "a")
    sd = load_file(tmp_path / "a" / "model.safetensors")
    extra = "model.layers.0.self_attn.rotary_emb.inv_freq"
    sd[extra] = torch.arange(4, dtype=torch.float32)
    save_file(sd, tmp_path / "a" / "model.safetensors", metadata={"format": "pt"})
    truth = random_full_gauge_for(zoo["base"], 9)
    apply_full_gauge_to_checkpoint(zoo["base"], truth, tmp_path / "b", progress=False)
    res = same(tmp_path / "a", tmp_path / "b")
    assert res.verdict == "identical"
    assert res.to_dict()["not_compared"] == {"only_in_a": [extra], "only_in_b": []}
    assert any(extra in n for n in res.notes)


def _gains_to_one(sd):
    return {k: (torch.ones_like(v) if k.endswith("norm.weight") else v.clone()) for k, v in sd.items()}


def test_a_copy_whose_norm_gains_were_all_reset_to_one_is_derived_not_independent(zoo, tmp_path):
    """Not a gauge (the function changes), but every matrix is A's: the pair shares weights."""
    b = _save_state(zoo["base"], tmp_path / "ones", _gains_to_one)
    res = same(zoo["base"], b)
    assert res.verdict == "derived"
    assert any("bit-identical" in n for n in res.notes)


def test_shared_matrices_ignore_constant_ones_and_count_real_ones(zoo, tmp_path):
    from gaugeport.provenance.same import shared_weight_matrices

    def edit(sd):
        sd = {k: v.clone() for k, v in sd.items()}
        for k in sd:
            if k.endswith("up_proj.weight"):
                sd[k].zero_()
        return sd

    a = _save_state(zoo["ind1"], tmp_path / "a", edit)
    b = _save_state(zoo["ind2"], tmp_path / "b", edit)
    ca, cb = Checkpoint.open(a), Checkpoint.open(b)
    names = sorted(set(ca.names) & set(cb.names))
    assert shared_weight_matrices(ca, cb, names) == []  # zeroed alike: constant, proves nothing
    c = Checkpoint.open(_save_state(zoo["ind1"], tmp_path / "c", lambda sd: {k: v.clone() for k, v in sd.items()}))
    assert "model.layers.0.self_attn.q_proj.weight" in shared_weight_matrices(ca, c, names)
