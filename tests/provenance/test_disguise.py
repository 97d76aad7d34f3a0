"""Function-preserving disguises: each keeps the model's own logits, and ``same`` sees through each
(and through every combination of two): ``identical`` for the disguised copy, ``derived`` for a
disguised fine-tune. Logit tolerance: max relative difference 1e-4 in float32."""

from __future__ import annotations

import itertools

import pytest
import torch

from gaugeport.core.archspec import get_spec
from gaugeport.models.tiny import probe_ids, tiny_model
from gaugeport.provenance.disguise import DISGUISES
from gaugeport.provenance.same import same

LOGIT_TOL = 1e-4
SEEN_THROUGH = list(DISGUISES)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _disguised(model, names, seed=0):
    spec = get_spec(model.config.model_type)
    sd = model.state_dict()
    for i, name in enumerate(names):
        sd = DISGUISES[name](sd, spec, model.config.to_dict(), seed + i)
    out = tiny_model("llama", 0, **_overrides(model))
    out.load_state_dict(sd)
    return out.eval()


def _overrides(model):
    c = model.config
    return {"hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size, "hidden_act": c.hidden_act,
            "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads,
            "num_hidden_layers": c.num_hidden_layers, "vocab_size": c.vocab_size, "tie_word_embeddings": False,
            "head_dim": c.head_dim}


def _rel(a, b):
    return float((a - b).abs().max() / a.abs().max())


@pytest.mark.parametrize("name", list(DISGUISES))
def test_each_disguise_keeps_the_logits(name):
    model = tiny_model("llama", 3, tie_word_embeddings=False, num_attention_heads=4, num_key_value_heads=2).eval()
    ids = probe_ids(model.config.vocab_size)
    changed = _disguised(model, [name])
    assert _rel(_logits(model, ids), _logits(changed, ids)) <= LOGIT_TOL
    moved = max(float((a - b).abs().max()) for a, b in zip(model.state_dict().values(),
                                                           changed.state_dict().values(), strict=True))
    assert moved > 1e-3  # the disguise did change the weights


@pytest.mark.parametrize(("act", "degree"), [("relu", 1.0), ("relu2", 2.0)])
def test_gate_rescaling_keeps_the_logits_for_a_positively_homogeneous_activation(act, degree):
    model = tiny_model("llama", 4, tie_word_embeddings=False, hidden_act=act).eval()
    spec = get_spec("llama")
    sd = DISGUISES["rescaled_units"](model.state_dict(), spec, model.config.to_dict(), 1, via="gate", degree=degree)
    changed = tiny_model("llama", 0, tie_word_embeddings=False, hidden_act=act)
    changed.load_state_dict(sd)
    ids = probe_ids(model.config.vocab_size)
    assert _rel(_logits(model, ids), _logits(changed.eval(), ids)) <= LOGIT_TOL
    wrong = DISGUISES["rescaled_units"](model.state_dict(), spec, model.config.to_dict(), 1, via="gate",
                                        degree=degree + 1)
    changed.load_state_dict(wrong)
    assert _rel(_logits(model, ids), _logits(changed, ids)) > 1e-2  # the degree matters


def _save(model, path):
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def loaded(zoo):
    from gaugeport.core.verify import load_model

    return {"base": load_model(zoo["base"]), "ft": load_model(zoo["ft_plain"])}


@pytest.mark.parametrize("names", [[n] for n in SEEN_THROUGH] + [list(p) for p in
                                                                  itertools.combinations(SEEN_THROUGH, 2)],
                         ids=lambda n: "+".join(n))
def test_same_calls_every_disguise_and_pair_of_disguises_identical(zoo, loaded, tmp_path, names):
    res = same(zoo["base"], _save(_disguised(loaded["base"], names, seed=5), tmp_path / "copy"))
    assert res.verdict == "identical", (res.residual, res.identical_check)


@pytest.mark.parametrize("name", SEEN_THROUGH)
def test_same_calls_a_disguised_finetune_derived(zoo, loaded, tmp_path, name):
    res = same(zoo["base"], _save(_disguised(loaded["ft"], [name], seed=7), tmp_path / "ft"))
    assert res.verdict == "derived" and res.p_value < 1e-6




@pytest.mark.parametrize("kind", ["base", "ft"])
def test_same_sees_through_invertible_value_maps_and_scaled_query_key_rotations(zoo, loaded, tmp_path, kind):
    # not only orthogonal maps: R invertible on the values (outputs R^-1), s Rot on keys and Rot / s on queries
    model = loaded[kind]
    spec, cfg = get_spec("llama"), model.config.to_dict()
    sd = DISGUISES["head_vo_rotation"](model.state_dict(), spec, cfg, 3, scale=True)
    sd = DISGUISES["head_qk_rope_rotation"](sd, spec, cfg, 4, scale=True)
    out = tiny_model("llama", 0, **_overrides(model))
    out.load_state_dict(sd)
    res = same(zoo["base"], _save(out.eval(), tmp_path / kind))
    assert res.verdict == ("identical" if kind == "base" else "derived"), (res.residual, res.identical_check)
