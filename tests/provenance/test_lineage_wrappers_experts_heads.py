"""Lineage across shared-expert mixtures, multimodal wrappers, pruned heads and one-table families.

One tiny trained Llama (d=64, 2 blocks, 128 MLP units, 8 heads in 4 key/value groups) is the origin;
an independently trained model of the same recipe and data, put through the same derivation, is the
negative of each shape. Where the derived model's family has a full gauge, the origin is re-uploaded
under a random one before the derivation, so the derived copy is in another gauge than A.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gaugeport.provenance import derivations as D
from gaugeport.provenance.lineage import LineageResult, lineage
from gaugeport.provenance.same import SameResult, same

STEPS = 100
PERM = [2, 0, 3, 1]  # new expert e of the permuted mixture is old expert PERM[e]

DERIVATIONS = {  # name -> (derive, whether the origin is gauged first)
    "qwen2_moe_upcycled": (lambda m: D.upcycle_to_qwen2_moe(m, 4, noise=0.02), True),
    "glm4_moe_upcycled": (lambda m: D.upcycle_to_glm4_moe(m, 4, noise=0.02), True),
    "qwen2_moe_dense_block_0": (lambda m: D.upcycle_to_qwen2_moe(m, 4, noise=0.02, dense_blocks=[0]), True),
    "glm4_moe_first_dense_1": (lambda m: D.upcycle_to_glm4_moe(m, 4, noise=0.02, first_dense=1), True),
    "llava_wrapped": (lambda m: D.wrap_in_llava(m), True),
    "qwen2_vl_wrapped": (lambda m: D.wrap_in_qwen2_vl(m), True),
    "heads_4_of_8": (lambda m: D.prune_heads(m, [0, 3]), True),
    "head_dim_6_of_8": (lambda m: D.prune_head_dim(m, 3), True),
}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from gaugeport.core.fullgauge import apply_full_gauge_to_checkpoint, random_full_gauge_for
    from gaugeport.core.verify import load_model
    from gaugeport.study.provenance_runs import TinyRun, trained

    root = tmp_path_factory.mktemp("shapes")
    run = TinyRun(d_model=64, d_ff=128, n_layers=2, n_heads=8, n_kv_heads=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base, ind = trained(0, STEPS, run), trained(1, STEPS, run)
        paths = {"base": root / "base", "ind": root / "ind"}
        base.save_pretrained(paths["base"])
        ind.save_pretrained(paths["ind"])
        apply_full_gauge_to_checkpoint(paths["base"], random_full_gauge_for(paths["base"], 7), root / "gauged",
                                       progress=False)
        gauged = load_model(root / "gauged")
        for kind, (derive, gauge_first) in DERIVATIONS.items():
            derive(gauged if gauge_first else base).save_pretrained(root / kind)
            derive(ind).save_pretrained(root / f"{kind}_ind")
            paths[kind], paths[f"{kind}_ind"] = root / kind, root / f"{kind}_ind"
            derive(base).save_pretrained(root / f"{kind}_plain")
            paths[f"{kind}_plain"] = root / f"{kind}_plain"
        moe_a = D.upcycle_to_qwen2_moe(base, 4, noise=0.3, seed=1)  # experts that differ from each other
        moe_a.save_pretrained(root / "moe_a")
        D.permute_experts(moe_a, PERM).save_pretrained(root / "moe_a_permuted")
        D.upcycle_to_qwen2_moe(ind, 4, noise=0.3, seed=1).save_pretrained(root / "moe_ind")
        paths.update(moe_a=root / "moe_a", moe_a_permuted=root / "moe_a_permuted", moe_ind=root / "moe_ind")
    finally:
        torch.set_num_threads(threads)
    return paths


@pytest.mark.parametrize("kind", list(DERIVATIONS))
def test_each_derivation_is_derived_and_an_independent_model_of_its_shape_is_not(zoo, kind):
    pos = same(zoo["base"], zoo[kind])
    assert isinstance(pos, LineageResult)
    assert pos.verdict == "derived" and pos.log10_p < -10 and pos.effect > 0.6
    neg = same(zoo["base"], zoo[f"{kind}_ind"])
    assert neg.verdict == "independent" and neg.p_value > 0.01
    assert neg.effect < 0.3 < pos.effect


# ----------------------------------------------------------------------------- shared experts
@pytest.mark.parametrize(("kind", "model_type", "not_read"), [
    ("qwen2_moe_upcycled", "qwen2_moe", "shared-expert gate"),  # Qwen2-MoE: shared_expert + sigmoid gate
    ("glm4_moe_upcycled", "glm4_moe", "router bias"),  # DeepSeek-V3-style shared_experts (GLM-4.5)
])
def test_upcycled_routed_and_shared_experts_each_map_to_the_dense_mlp(zoo, kind, model_type, not_read):
    res = lineage(zoo["base"], zoo[kind])
    assert res.shapes["b"]["model_type"] == model_type
    assert res.shapes["b"]["experts"] == 4 and res.shapes["b"]["shared_experts"] == 1
    for blk in res.blocks:
        assert [e["b_expert"] for e in blk["experts"]] == [0, 1, 2, 3, "shared"]
        assert all(e["a_expert"] == "dense" and e["z"] > 5 for e in blk["experts"])
    assert any("(router)" in n and not_read in n for n in res.notes)


def test_two_mixtures_are_compared_expert_to_expert_through_a_reordering(zoo):
    res = same(zoo["moe_a"], zoo["moe_a_permuted"])
    assert isinstance(res, LineageResult) and res.verdict == "derived"
    for blk in res.blocks:
        assert [(e["b_expert"], e["a_expert"]) for e in blk["experts"]] == [*enumerate(PERM), ("shared", "shared")]
        assert all(e["units_fraction"] > 0.8 and e["z"] > 5 for e in blk["experts"])
    neg = same(zoo["moe_a"], zoo["moe_ind"])
    assert neg.verdict == "independent" and neg.effect < 0.3


@pytest.mark.parametrize(("kind", "config_key"), [
    ("qwen2_moe_dense_block_0", "mlp_only_layers"),  # Qwen2-MoE / Qwen3-MoE
    ("glm4_moe_first_dense_1", "first_k_dense_replace"),  # GLM-4.5, DeepSeek-V3
])
def test_a_dense_block_inside_a_mixture_is_read_as_its_one_mlp(zoo, kind, config_key):
    res = lineage(zoo["base"], zoo[kind])
    assert res.shapes["b"]["dense_blocks"] == [0] and res.shapes["a"]["dense_blocks"] == []
    first, rest = res.blocks
    assert [(e["b_expert"], e["a_expert"]) for e in first["experts"]] == [("dense", "dense")]
    assert first["experts"][0]["z"] > 5 and first["units_fraction"] > 0.6
    assert [e["b_expert"] for e in rest["experts"]] == [0, 1, 2, 3, "shared"]
    assert any("blocks [0] are dense" in n for n in res.notes)
    cfg = json.loads((zoo[kind] / "config.json").read_text())
    assert cfg[config_key] in ([0], 1)  # the tiny mixture really declares its dense block that way


def test_a_mixture_against_itself_pairs_dense_block_with_dense_block(zoo):
    res = lineage(zoo["qwen2_moe_dense_block_0"], zoo["qwen2_moe_dense_block_0_plain"])
    assert res.verdict == "derived"
    assert [(e["b_expert"], e["a_expert"]) for e in res.blocks[0]["experts"]] == [("dense", "dense")]
    assert all(e["z"] > 5 for blk in res.blocks for e in blk["experts"])


def test_dense_blocks_the_config_names_but_the_file_lacks_are_refused_with_a_hint(zoo, tmp_path, cli):
    from gaugeport.core.errors import ArchitectureError

    cfg = json.loads((zoo["qwen2_moe_upcycled_plain"] / "config.json").read_text())
    cfg["mlp_only_layers"] = [1]  # the config says block 1 is dense, but the file holds its experts
    lying = tmp_path / "lying"
    lying.mkdir()
    save_file(load_file(zoo["qwen2_moe_upcycled_plain"] / "model.safetensors"), lying / "model.safetensors")
    (lying / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArchitectureError, match="dense-block tensors are missing.*model.layers.1.mlp."):
        lineage(zoo["base"], lying)
    code, _, err = cli("same", zoo["base"], lying)
    assert code == 2 and "mlp_only_layers" in err and "hint:" in err


@pytest.mark.parametrize(("cfg", "dense"), [
    ({"mlp_only_layers": [0, 2], "decoder_sparse_step": 1}, {0, 2}),
    ({"mlp_only_layers": [], "decoder_sparse_step": 2}, {0, 2}),  # blocks 1 and 3 are mixtures
    ({"mlp_only_layers": [3], "decoder_sparse_step": 2}, {0, 2, 3}),
    ({}, set()),
])
def test_qwen_moe_dense_block_rules_follow_the_model_class(cfg, dense):
    from gaugeport.provenance.lineage import dense_blocks

    rules = {"listed": "mlp_only_layers", "sparse_step": "decoder_sparse_step"}
    assert dense_blocks(cfg, rules, 4, "x") == dense


def test_first_k_dense_replace_makes_the_first_blocks_dense():
    from gaugeport.provenance.lineage import dense_blocks

    assert dense_blocks({"first_k_dense_replace": 3}, {"first": "first_k_dense_replace"}, 5, "x") == {0, 1, 2}
    assert dense_blocks({"first_k_dense_replace": 0}, {"first": "first_k_dense_replace"}, 5, "x") == set()


@pytest.mark.parametrize("bad", [{"mlp_only_layers": "0"}, {"decoder_sparse_step": 0}, {"mlp_only_layers": [True]}])
def test_a_malformed_dense_block_key_is_refused(bad):
    from gaugeport.core.errors import ArchitectureError
    from gaugeport.provenance.lineage import dense_blocks

    with pytest.raises(ArchitectureError, match="not what it should be"):
        dense_blocks(bad, {"listed": "mlp_only_layers", "sparse_step": "decoder_sparse_step"}, 4, "x")


# ----------------------------------------------------------------------------- wrappers
WRAPPERS = {  # kind -> (model_type, language model, prefixes used, top-level groups not compared)
    "llava_wrapped": ("llava", "llama", {"language_model.lm_head.": "lm_head.", "language_model.model.": "model."},
                      {"vision_tower", "multi_modal_projector"}),
    "qwen2_vl_wrapped": ("qwen2_vl", "qwen2", {"lm_head.": "lm_head.", "model.": "model."}, {"visual"}),
}


@pytest.mark.parametrize("kind", list(WRAPPERS))
@pytest.mark.parametrize("order", ["wrapper_first", "wrapper_second"])
def test_a_wrapper_is_compared_through_its_language_model_and_says_which_prefix(zoo, kind, order):
    a, b = (zoo[kind], zoo["base"]) if order == "wrapper_first" else (zoo["base"], zoo[kind])
    res = same(a, b)
    assert isinstance(res, LineageResult) and res.verdict == "derived" and res.evidence["units_fraction"] > 0.8
    side = "a" if order == "wrapper_first" else "b"
    w = res.shapes[side]["wrapper"]
    model_type, lm, prefixes, outside = WRAPPERS[kind]
    assert w["model_type"] == model_type and w["language_model"] == lm and w["prefixes"] == prefixes
    assert {g.split(".")[0] for g in w["not_compared"]} == outside
    assert any(f"{model_type} wrapper" in n and repr(sorted(prefixes)[-1]) in n for n in res.notes)


def test_tensors_only_one_side_holds_are_left_out_and_listed(zoo):
    """Qwen2-VL's language model has q/k/v biases, the Llama origin none: the blocks pair up on what both hold."""
    res = lineage(zoo["base"], zoo["qwen2_vl_wrapped"])
    assert any("self_attn.q_proj.bias (only in B)" in n for n in res.notes)
    assert res.evidence["heads_fraction"] > 0.8


def test_cli_prints_the_wrapper_prefix_and_what_was_not_compared(zoo, cli):
    code, out, err = cli("same", zoo["llava_wrapped"], zoo["base"])
    assert code == 0, err
    assert "verdict     derived (lineage" in out and "language_model.model." in out and "vision_tower" in out


# ----------------------------------------------------------------------------- heads
def test_pruned_heads_are_localised_by_whole_key_value_groups(zoo):
    res = lineage(zoo["base"], zoo["heads_4_of_8_plain"])
    assert res.shapes["b"]["n_heads"] == 4 and res.shapes["b"]["n_kv_heads"] == 2
    for blk in res.blocks:
        assert blk["head_map"]["rows"] == "B"
        assert blk["head_map"]["heads"] == [0, 1, 6, 7] and blk["head_map"]["kv_groups"] == [0, 3]
    assert res.evidence["heads_fraction"] > 0.9


def test_a_head_dim_change_compares_everything_but_the_heads_and_says_why(zoo):
    res = lineage(zoo["base"], zoo["head_dim_6_of_8"])
    assert res.shapes["b"]["head_dim"] == 6 and res.evidence["heads_fraction"] is None
    assert all(b["heads_fraction"] is None for b in res.blocks)
    assert any("head_dim differs (8 vs 6)" in n and "RoPE" in n for n in res.notes)


# ----------------------------------------------------------------------------- one table, two model types
def test_the_same_weights_saved_as_llama_and_as_mistral_are_identical(zoo, tmp_path):
    from gaugeport.core.verify import load_model

    base = load_model(zoo["base"])
    mistral = D._clone_with(base, {"sliding_window": None}, D._state(base), model_type="mistral")
    mistral.save_pretrained(tmp_path / "mistral")
    assert json.loads((tmp_path / "mistral" / "config.json").read_text())["model_type"] == "mistral"
    for a, b in ((zoo["base"], tmp_path / "mistral"), (tmp_path / "mistral", zoo["base"])):
        res = same(a, b)
        assert isinstance(res, SameResult) and res.verdict == "identical"
    ind = same(tmp_path / "mistral", zoo["ind"])
    assert isinstance(ind, SameResult) and ind.verdict == "independent"


# ----------------------------------------------------------------------------- function preservation
@torch.no_grad()
def test_upcycling_expert_reordering_and_wrapping_preserve_the_logits(zoo):
    """Each rewrite claims the function: logits within float32 reassociation (1e-5 of the largest logit)."""
    from gaugeport.core.verify import load_model

    base = load_model(zoo["base"])
    v = base.config.vocab_size
    ids = torch.randint(0, v - 4, (2, 12), generator=torch.Generator().manual_seed(0))  # the top 4: image/video ids
    ref = base(input_ids=ids).logits
    tol = 1e-5 * float(ref.abs().max())
    moe = D.upcycle_to_qwen2_moe(base, 4, noise=0.0)
    assert float((moe(input_ids=ids).logits - ref).abs().max()) <= tol
    assert float((D.permute_experts(moe, PERM)(input_ids=ids).logits - ref).abs().max()) <= tol
    assert float((D.wrap_in_llava(base)(input_ids=ids).logits - ref).abs().max()) <= tol
    assert float((D.wrap_in_qwen2_vl(base)(input_ids=ids).logits - ref).abs().max()) <= tol
    assert float((D.upcycle_to_glm4_moe(base, 4, noise=0.0)(input_ids=ids).logits - ref).abs().max()) <= tol
    assert float((D.upcycle_to_qwen2_moe(base, 4, dense_blocks=[0])(input_ids=ids).logits - ref).abs().max()) <= tol
    assert float((D.upcycle_to_glm4_moe(base, 4, first_dense=1)(input_ids=ids).logits - ref).abs().max()) <= tol
    noisy = D.upcycle_to_qwen2_moe(base, 4, noise=0.3)
    assert float((noisy(input_ids=ids).logits - ref).abs().max()) > 100 * tol  # the check can fail


# ----------------------------------------------------------------------------- every mixture view, as built
@pytest.mark.parametrize(("model_type", "overrides", "dense"), [
    ("qwen2_moe", {}, [0]),  # the tiny config's mlp_only_layers = [0]
    ("qwen3_moe", {"mlp_only_layers": [0]}, [0]),
    ("glm4_moe", {}, [0]),  # first_k_dense_replace = 1
    ("mixtral", {}, []),
])
def test_each_mixture_view_reads_a_noised_copy_as_derived_and_another_draw_as_independent(tmp_path, model_type,
                                                                                          overrides, dense):
    from gaugeport.models.tiny import save_tiny

    a = save_tiny(model_type, tmp_path / "a", seed=0, **overrides)
    ind = save_tiny(model_type, tmp_path / "ind", seed=1, **overrides)
    b = tmp_path / "b"
    b.mkdir()
    g = torch.Generator().manual_seed(3)
    state = load_file(a / "model.safetensors")
    save_file({k: v + 0.02 * v.std() * torch.randn(v.shape, generator=g) if v.numel() > 1 else v
               for k, v in state.items()}, b / "model.safetensors")
    (b / "config.json").write_text((a / "config.json").read_text())
    pos, neg = lineage(a, b), lineage(a, ind)
    assert pos.shapes["a"]["dense_blocks"] == pos.shapes["b"]["dense_blocks"] == dense
    assert pos.verdict == "derived" and neg.verdict == "independent"
    assert [(e["b_expert"], e["a_expert"]) for e in pos.blocks[0]["experts"]][:1] == \
        ([("dense", "dense")] if dense else [(0, 0)])


def test_an_upcycle_refuses_a_dense_block_the_model_does_not_have(zoo):
    from gaugeport.core.verify import load_model

    with pytest.raises(ValueError, match=r"dense_blocks must name blocks in 0\.\.1"):
        D.upcycle_to_qwen2_moe(load_model(zoo["base"]), 4, dense_blocks=[2])
