"""The disguises read the architecture table (roles, hidden segments, fold plan, attention section), so they
work on every family with those roles and refuse, with a reason, where they do not apply; and the maps
inside heads have the invariants and the fit that `same` relies on. Logit tolerance: max relative
difference 1e-4 in float32 (tiny models, norm gains of both signs)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gaugeport.core.archspec import get_spec
from gaugeport.core.errors import ArchitectureError, GaugeGroupError
from gaugeport.core.fullgauge import hidden_dims_for
from gaugeport.core.hidden import get_hidden_spec
from gaugeport.models.tiny import probe_ids, tiny_model
from gaugeport.provenance.disguise import DISGUISES
from gaugeport.provenance.heads import (
    apply_layer_head_maps,
    attention_slots,
    fit_layer_head_maps,
    invariant_head_features,
    read_block,
    write_block,
)
from gaugeport.provenance.same import same

LOGIT_TOL = 1e-4
HEADS = ["head_vo_rotation", "head_qk_rope_rotation"]


def _model(family, seed=3, **over):
    return tiny_model(family, seed, tie_word_embeddings=False, **over).eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _rel(a, b):
    return float((a - b).abs().max() / a.abs().max())


def _apply(model, family, name, seed=1, over=None, **kw):
    sd = DISGUISES[name](model.state_dict(), get_spec(model.config.model_type), model.config.to_dict(), seed, **kw)
    out = tiny_model(family, 0, tie_word_embeddings=False, **(over or {}))
    out.load_state_dict(sd)
    return out.eval()


# qwen2 (the llama table's alias, with q/k/v biases) and phi3 (fused qkv_proj and gate_up_proj, other names)
@pytest.mark.parametrize(("family", "over"), [("qwen2", {"attention_bias": True}), ("phi3", {})],
                         ids=["qwen2-bias", "phi3-fused"])
@pytest.mark.parametrize("name", list(DISGUISES))
def test_every_disguise_keeps_the_logits_of_another_rms_family(family, over, name):
    model = _model(family, **over)
    ids = probe_ids(model.config.vocab_size)
    changed = _apply(model, family, name, over=over)
    assert _rel(_logits(model, ids), _logits(changed, ids)) <= LOGIT_TOL
    moved = max(float((a - b).abs().max()) for a, b in zip(model.state_dict().values(),
                                                           changed.state_dict().values(), strict=True))
    assert moved > 1e-3


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_invertible_head_maps_keep_the_logits(family, name):
    model = _model(family)
    ids = probe_ids(model.config.vocab_size)
    assert _rel(_logits(model, ids), _logits(_apply(model, family, name, scale=True), ids)) <= LOGIT_TOL


@pytest.mark.parametrize("name", HEADS)
def test_head_maps_keep_the_logits_of_a_layernorm_family_with_partial_rotary(name):
    # phi: LayerNorm, output projection named "dense", RoPE on half of each head (a wrong rotary width
    # breaks the query/key map: 3e-4)
    over = {"qk_layernorm": False}
    model = _model("phi", **over)
    ids = probe_ids(model.config.vocab_size)
    assert _rel(_logits(model, ids), _logits(_apply(model, "phi", name, over=over, scale=True), ids)) <= LOGIT_TOL


@pytest.mark.parametrize(("family", "name", "error", "says"), [
    ("phi", "signed_permutation", GaugeGroupError, "LayerNorm"),
    ("phi", "fold", ArchitectureError, "LayerNorm"),
    ("phi", "rotation", ArchitectureError, "LayerNorm"),
    ("phi", "reintroduced_gains", ArchitectureError, "RMSNorm"),
    ("phi", "rescaled_units", ArchitectureError, "gated"),
    ("phi", "head_qk_rope_rotation", ArchitectureError, "before RoPE"),  # qk_layernorm on
    ("olmo", "head_vo_rotation", ArchitectureError, "clip_qkv=0.1"),  # clamps q/k/v coordinate by coordinate
    ("olmo", "head_qk_rope_rotation", ArchitectureError, "clip_qkv=0.1"),
])
def test_a_disguise_that_does_not_apply_is_refused_with_a_reason(family, name, error, says):
    model = _model(family, **({"clip_qkv": 0.1} if family == "olmo" else {}))
    with pytest.raises(error) as info:
        DISGUISES[name](model.state_dict(), get_spec(family), model.config.to_dict(), 0)
    assert says in str(info.value)


@pytest.mark.parametrize("family", ["qwen3", "olmo2", "gemma3_text"])
def test_value_output_map_applies_where_a_qk_norm_stops_the_query_key_map(family):
    model = _model(family)
    ids = probe_ids(model.config.vocab_size)
    assert _rel(_logits(model, ids), _logits(_apply(model, family, "head_vo_rotation", scale=True), ids)) <= LOGIT_TOL
    with pytest.raises(ArchitectureError, match="before RoPE"):
        _apply(model, family, "head_qk_rope_rotation")


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("family", ["gemma", "gemma2"])  # gain offset 1, post-norms, soft-capping
def test_head_maps_keep_the_logits_of_gemma(family, name):
    model = _model(family)
    ids = probe_ids(model.config.vocab_size)
    assert _rel(_logits(model, ids), _logits(_apply(model, family, name, scale=True), ids)) <= LOGIT_TOL


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("rotary_pct", [0.25, 0.5, 1.0])
def test_head_maps_keep_the_logits_of_gpt_neox_with_q_k_v_interleaved_per_head(name, rotary_pct):
    # query_key_value is [heads, 3, head_dim, d] (head h: q rows, k rows, v rows); RoPE rotate-half on the first
    # rotary_pct of each head (0.25: one frequency pair and 6 dims left alone; 1.0: four pairs, i with i + 4).
    # Read as contiguous q | k | v thirds, the maps break the logits (0.1 to 0.19)
    over = {"rotary_pct": rotary_pct}
    model = _model("gpt_neox", **over)
    ids = probe_ids(model.config.vocab_size)
    changed = _apply(model, "gpt_neox", name, over=over, scale=True)
    assert _rel(_logits(model, ids), _logits(changed, ids)) <= LOGIT_TOL
    assert max(float((a - b).abs().max()) for a, b in zip(model.state_dict().values(),
                                                           changed.state_dict().values(), strict=True)) > 1e-3


def test_gpt_neox_heads_are_read_where_its_attention_views_them():
    model = _model("gpt_neox")
    sd, slots, dims, rot = _layer0(model, "gpt_neox")
    w = sd["gpt_neox.layers.0.attention.query_key_value.weight"].double()
    per_head = w.view(dims.n_heads, 3, dims.head_dim, -1)  # GPTNeoXAttention: view(..., -1, 3 * head_size).chunk(3)
    for i, role in enumerate(("q", "k", "v")):
        slot = slots[role][0]
        assert slot.name.endswith("query_key_value.weight")
        assert torch.equal(read_block(w, slot, dims.n_heads, dims.head_dim), per_head[:, i])
        bias = slots[role][1]
        assert torch.equal(read_block(sd[bias.name], bias, dims.n_heads, dims.head_dim).squeeze(-1),
                           sd[bias.name].double().view(dims.n_heads, 3, dims.head_dim)[:, i])
    assert rot == dims.head_dim // 4  # rotary_pct 0.25


def test_writing_a_gpt_neox_interleaved_head_block_changes_only_its_rows():
    model = _model("gpt_neox")
    sd, slots, dims, _ = _layer0(model, "gpt_neox")
    k = slots["k"][0]
    w = sd[k.name]
    out = write_block(w, k, torch.zeros(dims.n_heads, dims.head_dim, w.shape[1], dtype=torch.float64))
    per_head = out.view(dims.n_heads, 3, dims.head_dim, -1)
    assert float(per_head[:, 1].abs().max()) == 0
    assert torch.equal(per_head[:, [0, 2]], w.view(dims.n_heads, 3, dims.head_dim, -1)[:, [0, 2]])


def test_gate_rescaling_of_an_ungated_relu2_block_keeps_the_logits():
    model = _model("arcee", hidden_act="relu2")
    ids = probe_ids(model.config.vocab_size)
    changed = _apply(model, "arcee", "rescaled_units", over={"hidden_act": "relu2"}, via="gate", degree=2.0)
    assert _rel(_logits(model, ids), _logits(changed, ids)) <= LOGIT_TOL


# ----------------------------------------------------------------------------- invariants and fit
def _layer0(model, family):
    spec, hspec = get_spec(family), get_hidden_spec(family)
    cfg = model.config.to_dict()
    dims = hidden_dims_for(cfg, family)
    sd = model.state_dict()
    return sd, attention_slots(list(sd), spec, hspec, dims, 0), dims, hspec.attention.rotary_dims(cfg, dims.head_dim)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), name=st.sampled_from(HEADS), family=st.sampled_from(["llama", "phi3"]))
def test_invariant_head_features_do_not_move_under_maps_inside_heads(seed, name, family):
    model = _model(family)
    sd, slots, dims, rot = _layer0(model, family)
    moved = DISGUISES[name](sd, get_spec(family), model.config.to_dict(), seed, scale=True)
    before = invariant_head_features(lambda n: sd[n], slots, dims, rot)
    after = invariant_head_features(lambda n: moved[n], slots, dims, rot)
    for key in ("ov", "qk"):
        scale = float(abs(before[key]).max())
        assert float(abs(before[key] - after[key]).max()) <= 1e-5 * scale


@pytest.mark.parametrize("key", ["ov", "qk"])
def test_invariant_head_features_see_a_changed_head(key):
    model = _model("llama")
    sd, slots, dims, rot = _layer0(model, "llama")
    role = "v" if key == "ov" else "k"
    name = slots[role][0].name
    edited = dict(sd)
    edited[name] = sd[name].clone()
    edited[name][: dims.head_dim] += 0.5 * torch.randn_like(edited[name][: dims.head_dim])  # group 0 only
    before = invariant_head_features(lambda n: sd[n], slots, dims, rot)[key]
    after = invariant_head_features(lambda n: edited[n], slots, dims, rot)[key]
    diff = abs(before - after).max(axis=1)
    assert (diff[: dims.group_size] > 1e-2 * abs(before).max()).all()  # the group's query heads see it
    assert (diff[dims.group_size:] == 0).all()  # the other group's do not


@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_fitted_head_maps_take_a_disguised_copy_onto_the_original(family):
    model = _model(family)
    sd, slots, dims, rot = _layer0(model, family)
    spec, cfg = get_spec(family), model.config.to_dict()
    moved = DISGUISES["head_qk_rope_rotation"](DISGUISES["head_vo_rotation"](sd, spec, cfg, 4, scale=True),
                                               spec, cfg, 5, scale=True)
    maps = fit_layer_head_maps(lambda n: sd[n], lambda n: moved[n], slots, dims, rot)
    for name in {s.name for role in slots.values() for s in role}:
        pred = apply_layer_head_maps(name, sd[name], maps, dims)
        assert _rel(moved[name].double(), pred.double()) <= 1e-5, name
        assert _rel(moved[name].double(), sd[name].double()) > 1e-2  # the disguise moved it


def test_fitted_query_key_maps_commute_with_rope_only():
    # a general map on the rotary keys would fit a copy too, but the queries' map is then the wrong one:
    # the fit keeps only scaled rotations inside each frequency pair
    model = _model("llama")
    sd, slots, dims, rot = _layer0(model, "llama")
    maps = fit_layer_head_maps(lambda n: sd[n], lambda n: sd[n], slots, dims, rot)
    eye = torch.eye(dims.head_dim, dtype=torch.float64)
    assert float((maps.key - eye).abs().max()) < 1e-8 and float((maps.query - eye).abs().max()) < 1e-8
    assert float((maps.r - eye).abs().max()) < 1e-8


# ----------------------------------------------------------------------------- same on other families
def _save(model, path):
    model.save_pretrained(path)
    return path


@pytest.mark.parametrize(("family", "names", "over"), [
    ("phi3", ["head_vo_rotation", "head_qk_rope_rotation"], {}),
    ("phi3", ["rotation", "head_vo_rotation"], {}),
    ("phi3", ["full_gauge", "head_qk_rope_rotation"], {}),
    ("phi", ["head_vo_rotation", "head_qk_rope_rotation"], {"qk_layernorm": False}),
    ("gpt_neox", ["head_vo_rotation", "head_qk_rope_rotation"], {"rotary_pct": 0.5}),
], ids=lambda x: "+".join(x) if isinstance(x, list) else str(x) if x else "")
def test_same_calls_a_head_disguised_copy_of_another_family_identical(tmp_path, family, names, over):
    model = _model(family, **over)
    changed = model
    for i, name in enumerate(names):
        kw = {"scale": True} if name in HEADS else {}
        changed = _apply(changed, family, name, seed=10 + i, over=over, **kw)
    res = same(_save(model, tmp_path / "a"), _save(changed, tmp_path / "b"))
    assert res.verdict == "identical", (res.residual, res.identical_check)


def test_same_calls_a_gpt_neox_copy_with_heads_permuted_and_mapped_identical(tmp_path):
    # LayerNorm: residual permuted, not signed; heads permuted as whole [q_h; k_h; v_h] blocks, then the maps inside
    from gaugeport.core.fullgauge import FullGauge, apply_full_gauge_to_state_dict, model_d

    model = _model("gpt_neox")
    cfg = model.config.to_dict()
    gauge = FullGauge.random(model_d(cfg), hidden_dims_for(cfg, "gpt_neox"), 7, residual_signs=False, mlp_signs=False)
    permuted = tiny_model("gpt_neox", 0, tie_word_embeddings=False)
    permuted.load_state_dict(apply_full_gauge_to_state_dict(model.state_dict(), gauge, get_spec("gpt_neox"), cfg))
    changed = _apply(_apply(permuted.eval(), "gpt_neox", "head_vo_rotation", seed=8, scale=True),
                     "gpt_neox", "head_qk_rope_rotation", seed=9, scale=True)
    ids = probe_ids(model.config.vocab_size)
    assert _rel(_logits(model, ids), _logits(changed, ids)) <= LOGIT_TOL
    res = same(_save(model, tmp_path / "a"), _save(changed, tmp_path / "b"))
    assert res.verdict == "identical", (res.residual, res.identical_check)


def test_same_does_not_see_through_head_maps_where_clip_qkv_makes_them_change_the_function(tmp_path):
    # OLMo with clip_qkv set: the value/output map (applied as if the clamp were off) changes the logits (0.26), and
    # same compares the heads as stored instead of up to that map (fitting it, the weights would match and only
    # the function check would tell the models apart)
    over = {"clip_qkv": 0.1}
    model = _model("olmo", **over)
    cfg = {**model.config.to_dict(), "clip_qkv": None}
    changed = tiny_model("olmo", 0, tie_word_embeddings=False, **over)
    changed.load_state_dict(DISGUISES["head_vo_rotation"](model.state_dict(), get_spec("olmo"), cfg, 5, scale=True))
    ids = probe_ids(model.config.vocab_size)
    assert _rel(_logits(model, ids), _logits(changed.eval(), ids)) > 1e-3
    res = same(_save(model, tmp_path / "a"), _save(changed, tmp_path / "b"))
    assert res.verdict != "identical"
    assert res.identical_check["weights_match"] is False


def _families_with_attention() -> list[str]:
    from gaugeport.core.hidden import families_with_hidden

    return sorted(f for f in families_with_hidden() if get_hidden_spec(f).attention is not None)


@pytest.mark.slow
@pytest.mark.parametrize("family", _families_with_attention())
def test_every_family_whose_table_names_its_heads_has_its_head_maps_undone(tmp_path, family):
    """Data-driven: a family gets an ``attention`` section, and this covers it: the value/output map, then the
    query/key map where the table allows it (else its refusal says why); logits within 1e-4, then same."""
    model = _model(family)
    ids = probe_ids(model.config.vocab_size)
    changed = _apply(model, family, "head_vo_rotation", seed=5, scale=True)
    try:
        changed = _apply(changed, family, "head_qk_rope_rotation", seed=6, scale=True)
    except ArchitectureError as e:
        assert "before RoPE" in str(e) or "no rotary" in str(e)
    assert _rel(_logits(model, ids), _logits(changed, ids)) <= LOGIT_TOL
    res = same(_save(model, tmp_path / "a"), _save(changed, tmp_path / "b"))
    assert res.verdict == "identical", (res.residual, res.identical_check)


def test_the_tables_name_the_heads_of_every_family_with_separate_projections():
    assert {"arcee", "bert", "cohere", "ernie4_5", "exaone4", "glm", "gpt2", "hunyuan_v1_dense", "starcoder2", "llama",
            "phi3", "gpt_neox", "olmo"} <= set(_families_with_attention())


@pytest.mark.parametrize(("entry", "says"), [
    ({"q": ["a"], "k": ["b"], "v": ["c"], "o": ["d"], "rope": "zigzag"}, "rope"),
    ({"q": ["a"], "k": ["b"], "v": ["c"], "o": [], "rope": "none"}, "o must be"),
    ({"q": ["a"], "k": ["b"], "v": ["c"], "o": ["d"], "rope": "none", "qkv": []}, "unknown key"),
    ({"q": ["a"], "k": ["b"], "v": ["c"], "o": ["d"], "rope": "none", "fused": "per_group"}, "fused must be"),
    ({"q": ["a"], "k": ["b"], "v": ["c"], "o": ["d"], "rope": "none", "rotary_default": 0}, "rotary_default"),
])
def test_a_malformed_attention_section_is_refused(entry, says):
    from gaugeport.core.hidden import _attention

    with pytest.raises(ArchitectureError, match=says):
        _attention(entry, "x.hidden.attention")


def test_rotary_width_is_read_from_a_nested_config_key():
    attn = get_hidden_spec("phi").attention
    assert attn.rotary_dims({"rope_parameters": {"partial_rotary_factor": 0.25}}, 8) == 2
    assert attn.rotary_dims({"partial_rotary_factor": 1.0}, 8) == 8
    assert get_hidden_spec("llama").attention.rotary_dims({"partial_rotary_factor": 0.5}, 8) == 8  # llama: all


@pytest.mark.parametrize(("family", "rotary"), [("phi", 4), ("glm", 4), ("gpt_neox", 2), ("llama", 8)])
def test_rotary_width_without_a_config_key_is_the_model_class_default(family, rotary):
    # an old config.json may name no fraction: transformers then assumes 0.5 (Phi, GLM), 0.25 (GPT-NeoX), all
    assert get_hidden_spec(family).attention.rotary_dims({}, 8) == rotary


def test_gpt_neox_reads_the_rotary_fraction_of_an_old_config():
    assert get_hidden_spec("gpt_neox").attention.rotary_dims({"rotary_pct": 0.5}, 8) == 4  # Pythia's config.json
