"""``same``'s shortcut for exact copies: when A's and B's canonical weights are bit-identical (their
fingerprints agree), B is A under a signed-permutation gauge, composed exactly from the two canonical
gauges; the logits are still compared, and the p-value is the held-out statistic of the first layer,
as the general path computes it. A cheap screen (norm gains, the first layer's sums of squares) keeps
every other pair from paying for the two canonical passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from scipy import stats

from gaugeport.core.checkpoint import Checkpoint
from gaugeport.core.fullgauge import apply_full_gauge_to_checkpoint, random_full_gauge_for
from gaugeport.provenance import same as S


@pytest.fixture(scope="module")
def copy(zoo, tmp_path_factory):
    truth = random_full_gauge_for(zoo["base"], 21)
    out = tmp_path_factory.mktemp("exact") / "copy"
    apply_full_gauge_to_checkpoint(zoo["base"], truth, out, progress=False)
    return out, truth


def _edited(src, dest, name, edit):
    """``src`` with tensor ``name`` replaced by ``edit(tensor)`` (one file, as the tiny models are saved)."""
    dest.mkdir()
    state = load_file(src / "model.safetensors")
    state[name] = edit(state[name].clone())
    save_file(state, dest / "model.safetensors", metadata={"format": "pt"})
    (dest / "config.json").write_text((src / "config.json").read_text())
    return dest


@pytest.fixture
def passes(monkeypatch):
    """The canonical passes ``same`` runs (one per checkpoint it fingerprints)."""
    calls: list[str] = []
    import gaugeport.provenance.canonical as C

    real = C.canonical_fingerprint
    monkeypatch.setattr(C, "canonical_fingerprint", lambda ckpt: calls.append(str(ckpt.path)) or real(ckpt))
    return calls


def test_an_exact_copy_is_decided_by_its_fingerprints_with_the_exact_gauge(zoo, copy, passes):
    res = S.same(zoo["base"], copy[0])
    assert len(passes) == 2
    assert res.verdict == "identical" and res.gauge == copy[1]  # residual, MLP units with signs, heads
    assert any(n.startswith("exact copy") for n in res.notes)
    assert res.identical_check["function_match"] and res.identical_check["logits_max_rel_diff"] <= 1e-5
    assert all(lay["status"] == "identical" and lay["max_rel_weight_diff"] == 0.0 for lay in res.layers)


def test_the_p_value_is_the_general_paths_statistic_of_the_first_layer(zoo, copy, monkeypatch):
    fast = S.same(zoo["base"], copy[0])
    scored = [lay for lay in fast.layers if lay["z"] is not None]
    assert [lay["layer"] for lay in scored] == [0]
    assert all(lay["p_value"] is None for lay in fast.layers[1:])
    monkeypatch.setattr(S, "EXACT_COPY_SHORTCUT", False)
    general = S.same(zoo["base"], copy[0])
    assert general.verdict == "identical"
    assert scored[0]["z"] == pytest.approx(general.layers[0]["z"], rel=1e-9)
    assert scored[0]["mlp_units_tested"] == general.layers[0]["mlp_units_tested"]
    assert fast.log10_p == pytest.approx(stats.norm.logsf(scored[0]["z"]) / np.log(10), rel=1e-12)
    assert fast.p_value == pytest.approx(scored[0]["p_value"]) and fast.p_value < 1e-10


def test_a_copy_edited_past_the_first_layer_passes_the_screen_and_takes_the_general_path(zoo, copy, tmp_path,
                                                                                         passes):
    name = "model.layers.1.mlp.down_proj.weight"

    def nudge(t: torch.Tensor) -> torch.Tensor:
        t[0, 0] += 0.5
        return t

    edited = _edited(copy[0], tmp_path / "edited", name, nudge)
    res = S.same(zoo["base"], edited)
    assert len(passes) == 2  # screened in, then the fingerprints differ
    assert res.verdict == "derived"
    assert not any(n.startswith("exact copy") for n in res.notes)
    assert res.identical_check["weights_match"] is False and res.identical_check["worst_tensor"] == name


@pytest.mark.parametrize("other", ["ft", "ind1"])
def test_a_finetune_or_an_independent_model_is_screened_out_before_any_canonical_pass(zoo, other, passes):
    res = S.same(zoo["base"], zoo[other])
    assert passes == []
    assert res.verdict == ("derived" if other == "ft" else "independent")


def test_the_screen_sees_an_edit_of_the_first_layer_with_the_gains_untouched(zoo, copy, tmp_path):
    """A LoRA merge changes projections and leaves the norm gains: the first layer's sums of squares differ."""
    name = "model.layers.0.self_attn.q_proj.weight"
    g = torch.Generator().manual_seed(0)

    def low_rank(t: torch.Tensor) -> torch.Tensor:
        return t + 1e-3 * torch.randn(t.shape[0], 2, generator=g) @ torch.randn(2, t.shape[1], generator=g)

    edited = _edited(copy[0], tmp_path / "lora", name, low_rank)
    ca = Checkpoint.open(zoo["base"])
    names = sorted(ca.names)
    rules = ca.spec.classify_all(names)
    first = [n for n in names if ".layers.0." in n]
    assert S._copy_screen(ca, Checkpoint.open(copy[0]), names, rules, first)
    assert not S._copy_screen(ca, Checkpoint.open(edited), names, rules, first)


def test_the_sum_of_squares_is_taken_over_every_chunk():
    t = torch.arange(10, dtype=torch.bfloat16)
    assert S._sum_of_squares(t, chunk=3) == float((t.double() ** 2).sum()) == 285.0


def test_the_cli_shows_the_layers_not_scored_as_dashes(cli, zoo, copy):
    code, out, _ = cli("same", str(zoo["base"]), str(copy[0]))
    assert code == 0 and "verdict     identical" in out
    rows = [ln.split() for ln in out.splitlines() if ln.strip().startswith("1 ")]
    assert rows and rows[0][1:4] == ["identical", "-", "-"]
