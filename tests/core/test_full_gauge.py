"""The full-network gauge: residual signed permutation plus per-layer MLP units and heads.

Function preservation is checked for every family in ``supported_architectures()``: a family whose
table has hidden rows must keep its logits and every hidden state (through the residual part) to
1e-5 relative under a random full gauge; a family without them must refuse ``--full`` clearly.
Test models have norm gains of both signs and random magnitudes.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from gaugeport.core.archspec import get_spec, supported_architectures
from gaugeport.core.errors import ArchitectureError, GaugeError, GaugeGroupError
from gaugeport.core.fullgauge import (
    FullGauge,
    LayerGauge,
    apply_full_gauge_to_model,
    compose_full,
    hidden_dims_for,
    load_full_gauge,
    read_full_gauge_file,
    save_full_gauge,
    transform_hidden,
)
from gaugeport.core.gauge import SignedPermutation, load_gauge, save_gauge
from gaugeport.core.hidden import get_hidden_spec, has_hidden
from gaugeport.core.verify import compare_models
from gaugeport.models.tiny import probe_ids, tiny_model

REL_TOL = 1e-5
ARCHS = supported_architectures()


def signed_gain_model(model_type: str, seed: int = 0) -> torch.nn.Module:
    """A tiny model whose norm gains have both signs (half of each gain vector negated)."""
    model = tiny_model(model_type, seed=seed)
    rules = get_spec(model_type).classify_all(list(model.state_dict()))
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if rules[name].role == "gain":
                flip = torch.where(torch.rand(p.shape, generator=gen) < 0.5, -1.0, 1.0)
                p.mul_(flip) if get_spec(model_type).gain_offset == 0 else p.copy_((1 + p) * flip - 1)
    return model


def random_full(model: torch.nn.Module, seed: int = 3) -> FullGauge:
    """A random full gauge (the first seed from ``seed`` on) that moves every layer's key/value groups."""
    cfg = model.config.to_dict()
    spec = get_spec(cfg["model_type"])
    dims = hidden_dims_for(cfg)
    while True:
        g = FullGauge.random(int(cfg.get("hidden_size") or cfg["n_embd"]), dims, seed,
                             residual_signs=spec.allows_coordinate_signs,
                             mlp_signs=get_hidden_spec(spec.model_type).mlp_signs)
        if all(lg.kv.perm[0] != 0 for lg in g.layers):
            return g
        seed += 1


@pytest.mark.parametrize("model_type", ARCHS)
def test_full_gauge_preserves_the_function_or_is_refused_clearly(model_type):
    if not has_hidden(model_type):
        with pytest.raises(ArchitectureError, match="no hidden-axis rows"):
            get_hidden_spec(model_type)
        return
    model = signed_gain_model(model_type)
    gauge = random_full(model)
    gauged = apply_full_gauge_to_model(copy.deepcopy(model), gauge)
    res = compare_models(model, gauged, probe_ids(96, n_seq=2, seq_len=12), gauge.residual, tol=REL_TOL)
    assert res.max_rel_diff <= REL_TOL, res
    assert res.hidden_max_rel_diff <= REL_TOL, res
    # the hidden part alone moves every tensor a hidden row names, and still preserves the function
    hidden_only = FullGauge(SignedPermutation.identity(gauge.d), gauge.layers)
    moved = apply_full_gauge_to_model(copy.deepcopy(model), hidden_only)
    hspec = get_hidden_spec(model_type)
    named = [n for n in model.state_dict() if hspec.match(n) is not None]
    assert named, "the hidden rows match no tensor"
    for n in named:
        assert not torch.equal(model.state_dict()[n], moved.state_dict()[n]), n
    res = compare_models(model, moved, probe_ids(96, n_seq=2, seq_len=12), hidden_only.residual, tol=REL_TOL)
    assert res.max_rel_diff <= REL_TOL, res


def test_per_head_norm_rows_move_with_their_heads():
    """Cohere with q/k LayerNorm per head (gains [heads, head_dim], 8 query heads in 2 groups): the
    ``q_heads[1]`` / ``kv_heads[1]`` rows move each head's gain row with its head; left in place, the
    same gauge breaks the logits."""
    model = tiny_model("cohere", seed=1, use_qk_norm=True, num_attention_heads=8, num_key_value_heads=2)
    names = [n for n in model.state_dict() if n.endswith(("q_norm.weight", "k_norm.weight"))]
    assert names and all(model.state_dict()[n].ndim == 2 for n in names)
    assert all(model.state_dict()[n].std() > 0.1 for n in names)  # generic gains: a misplaced row shows
    gauge = random_full(model)
    gauged = apply_full_gauge_to_model(copy.deepcopy(model), gauge)
    probe = probe_ids(96, n_seq=2, seq_len=12)
    assert compare_models(model, gauged, probe, gauge.residual, tol=REL_TOL).max_rel_diff <= REL_TOL
    with torch.no_grad():
        for n in names:
            gauged.state_dict()[n].copy_(model.state_dict()[n])
    assert compare_models(model, gauged, probe, gauge.residual, tol=REL_TOL).max_rel_diff > 1e-3


def test_a_wrong_hidden_transform_breaks_the_function():
    """The check can fail: sign-flipping a gate (not odd) or moving q without k changes the logits."""
    model = signed_gain_model("llama")
    sd = model.state_dict()
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.state_dict()["model.layers.0.mlp.gate_proj.weight"].mul_(-1)
    res = compare_models(model, broken, probe_ids(96))
    assert res.max_rel_diff > 1e-3
    broken = copy.deepcopy(model)
    with torch.no_grad():
        name = "model.layers.1.self_attn.q_proj.weight"
        q = sd[name]
        broken.state_dict()[name].copy_(q.reshape(4, 8, -1).flip(0).reshape(q.shape))
    assert compare_models(model, broken, probe_ids(96)).max_rel_diff > 1e-3


def test_gelu_mlp_refuses_unit_signs_and_gqa_refuses_split_groups():
    model = tiny_model("gpt2")
    dims = hidden_dims_for(model.config.to_dict())
    signed = FullGauge.random(32, dims, 1, residual_signs=False, mlp_signs=True)
    with pytest.raises(GaugeGroupError, match="not gated"):
        apply_full_gauge_to_model(copy.deepcopy(model), signed)
    with pytest.raises(GaugeError, match="splits a key/value group"):
        LayerGauge(SignedPermutation.identity(4), SignedPermutation(np.array([0, 2, 1, 3]), np.ones(4)), 2)
    with pytest.raises(GaugeError, match="never signed"):
        LayerGauge(SignedPermutation.identity(4), SignedPermutation.random(4, seed=0), 2)


def test_random_heads_respect_groups_and_algebra_holds():
    dims = hidden_dims_for(tiny_model("llama").config.to_dict())
    g, h = FullGauge.random(32, dims, 1), FullGauge.random(32, dims, 2)
    for lg in g.layers:  # query heads of one group land in one group
        assert np.all((lg.heads.perm.reshape(2, 2) // 2) == lg.kv.perm[:, None])
    ident = FullGauge.identity(32, dims)
    assert g @ g.inverse() == ident and g.inverse() @ g == ident
    assert compose_full(g, h) == h @ g
    assert (h @ g).inverse() == g.inverse() @ h.inverse()
    assert FullGauge(g.residual) @ FullGauge(h.residual) == FullGauge(g.residual @ h.residual)
    assert g.fingerprint() != h.fingerprint() and g.fingerprint() == FullGauge.random(32, dims, 1).fingerprint()


def test_transform_hidden_checks_shapes():
    model = tiny_model("llama")
    dims = hidden_dims_for(model.config.to_dict())
    g = FullGauge.random(32, dims, 0)
    rule, layer = get_hidden_spec("llama").match("model.layers.1.mlp.up_proj.weight")
    assert layer == 1
    with pytest.raises(GaugeError, match="expected hidden axis 0 of size 64"):
        transform_hidden("x", torch.zeros(63, 32), rule, layer, g, dims)


def test_file_format_v2_round_trip_and_old_files_still_load(tmp_path):
    dims = hidden_dims_for(tiny_model("llama").config.to_dict())
    g = FullGauge.random(32, dims, 4)
    save_full_gauge(g, tmp_path / "full.safetensors", {"note": "x"})
    f = read_full_gauge_file(tmp_path / "full.safetensors")
    assert f.version == "2" and f.gauge == g and f.provenance == {"note": "x"}
    assert load_gauge(tmp_path / "full.safetensors") == g.residual  # a version-1 reader: residual part
    save_gauge(g.residual, tmp_path / "v1.safetensors")  # version-1 file: a residual-only full gauge
    old = load_full_gauge(tmp_path / "v1.safetensors")
    assert old == FullGauge(g.residual) and not old.is_full


def test_corrupt_v2_files_are_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    dims = hidden_dims_for(tiny_model("llama").config.to_dict())
    save_full_gauge(FullGauge.random(32, dims, 4), tmp_path / "g.safetensors")
    with safe_open(str(tmp_path / "g.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = dict(f.metadata())
    cases = {
        "n_layers": ({**meta, "n_layers": "-1"}, tensors, "not a valid positive integer"),
        "missing": (meta, {k: v for k, v in tensors.items() if k != "layers.1.heads.perm"}, "lacks"),
        "not perm": (meta, {**tensors, "layers.0.mlp.perm": torch.zeros(64, dtype=torch.int64)}, "not a permutation"),
        "version": ({**meta, "version": "9"}, tensors, "newer"),
        "kv": ({**meta, "n_kv_heads": "3"}, tensors, "key/value groups"),
    }
    for name, (m, t, msg) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.safetensors"
        save_file(t, str(path), metadata=m)
        with pytest.raises(GaugeError, match=msg):
            load_full_gauge(path)
    assert json.loads(meta["provenance"]) == {}


def test_cli_apply_full_verify_inverse_compose(tiny_dir, tmp_path, cli):
    a = tiny_dir("llama")
    code, out, err = cli("apply", a, "--random-seed", "5", "--full", "--save-gauge", tmp_path / "g.safetensors",
                         "--out", tmp_path / "b", "--quiet")
    assert code == 0, err
    assert "full gauge" in out
    assert cli("verify", a, tmp_path / "b", "--gauge", tmp_path / "g.safetensors")[0] == 0
    # the residual part alone does not explain B's weights: verify fails (exit 1)
    save_gauge(load_gauge(tmp_path / "g.safetensors"), tmp_path / "res.safetensors")
    code, out, _ = cli("verify", a, tmp_path / "b", "--gauge", tmp_path / "res.safetensors")
    assert code == 1 and "FAIL" in out
    assert cli("inverse", tmp_path / "g.safetensors", "--out", tmp_path / "gi.safetensors")[0] == 0
    assert cli("verify", tmp_path / "b", a, "--gauge", tmp_path / "gi.safetensors")[0] == 0
    assert cli("compose", tmp_path / "g.safetensors", tmp_path / "gi.safetensors", "--out",
               tmp_path / "id.safetensors")[0] == 0
    assert load_full_gauge(tmp_path / "id.safetensors") == load_full_gauge(tmp_path / "g.safetensors") @ \
        load_full_gauge(tmp_path / "gi.safetensors")
    # a version-2 file given to plain apply is applied in full
    assert cli("apply", a, "--gauge", tmp_path / "g.safetensors", "--out", tmp_path / "b2", "--quiet")[0] == 0
    assert cli("verify", tmp_path / "b", tmp_path / "b2", "--gauge", tmp_path / "id.safetensors")[0] == 0


def test_cli_full_refuses_a_family_without_hidden_rows(tiny_dir, tmp_path, cli, monkeypatch):
    import gaugeport.core.hidden as hidden

    real = hidden._raw_table

    def no_hidden(mt):
        raw = dict(real(mt))
        raw.pop("hidden", None)
        return raw

    monkeypatch.setattr(hidden, "_raw_table", no_hidden)
    hidden._load.cache_clear()
    try:
        code, _, err = cli("apply", tiny_dir("llama"), "--random-seed", "1", "--full", "--out", tmp_path / "x")
    finally:
        monkeypatch.undo()
        hidden._load.cache_clear()
    assert code == 2
    assert "no hidden-axis rows" in err and "hint:" in err and "llama.json" in err
    assert not (tmp_path / "x").exists()
