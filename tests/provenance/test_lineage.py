"""Lineage across shape changes: ``same A B`` when B's depth, widths, vocabulary or experts differ from A's.

One tiny trained Llama (d=64, 3 blocks, 128 MLP units, 4 heads in 2 groups) is the origin; an
independently trained model of the same recipe and data, put through the same derivation, is the
negative of each shape. Derived copies are re-uploaded under a random full gauge where the shape
allows one.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gaugeport.provenance import derivations as D
from gaugeport.provenance.batch import read_pairs, roc_auc, run_pairs, tpr_at_fpr
from gaugeport.provenance.lineage import LineageResult, lineage, monotone_assignment
from gaugeport.provenance.same import same
from gaugeport.study.provenance_runs import healed

STEPS = 100
HEAL_STEPS = 20

DERIVATIONS = {
    "block_removed": lambda m: D.drop_blocks(m, [1]),
    "mlp_96_of_128": lambda m: D.prune_mlp(m, 96),
    "residual_48_of_64": lambda m: D.prune_residual(m, 48),
    "vocab_plus_16": lambda m: D.extend_vocab(m, 16),
    "moe_upcycled_4": lambda m: D.upcycle_to_mixtral(m, 4, noise=0.02),
    "pruned_then_healed": lambda m: healed(D.prune_mlp(m, 96), HEAL_STEPS, data_seed=55),
}
GAUGED = {"block_removed", "mlp_96_of_128", "residual_48_of_64", "vocab_plus_16", "pruned_then_healed"}


@pytest.fixture(scope="module")
def lin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from gaugeport.core.fullgauge import apply_full_gauge_to_checkpoint, random_full_gauge_for
    from gaugeport.study.provenance_runs import TinyRun, trained

    root = tmp_path_factory.mktemp("lineage")
    run = TinyRun(d_model=64, d_ff=128, n_layers=3, n_heads=4, n_kv_heads=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base, ind = trained(0, STEPS, run), trained(1, STEPS, run)
        paths = {"base": root / "base"}
        base.save_pretrained(paths["base"])
        for kind, derive in DERIVATIONS.items():
            derive(base).save_pretrained(root / f"{kind}_plain")
            derive(ind).save_pretrained(root / f"{kind}_ind")
            paths[f"{kind}_ind"] = root / f"{kind}_ind"
            if kind in GAUGED:
                p = root / f"{kind}_plain"
                apply_full_gauge_to_checkpoint(p, random_full_gauge_for(p, 7), root / kind, progress=False)
                paths[kind] = root / kind
            else:
                paths[kind] = root / f"{kind}_plain"
    finally:
        torch.set_num_threads(threads)
    return paths


@pytest.mark.parametrize("kind", list(DERIVATIONS))
def test_each_derivation_is_derived_and_an_independent_model_of_its_shape_is_not(lin, kind):
    pos = same(lin["base"], lin[kind])
    assert isinstance(pos, LineageResult)
    assert pos.verdict == "derived" and pos.log10_p < -10
    assert pos.effect > 0.6
    neg = same(lin["base"], lin[f"{kind}_ind"])
    assert neg.verdict == "independent" and neg.p_value > 0.01
    assert neg.effect < 0.3 < pos.effect  # the graded evidence ranks them too


def test_block_map_skips_the_removed_block_with_per_block_z(lin):
    res = lineage(lin["base"], lin["block_removed"])
    assert [(b["a_block"], b["b_block"]) for b in res.blocks] == [(0, 0), (2, 1)]
    assert all(b["z"] > 5 and b["status"] == "derived" for b in res.blocks)
    assert np.asarray(res.block_evidence).shape == (3, 2)


def test_reverse_direction_a_pruned_from_b_is_derived(lin):
    res = lineage(lin["residual_48_of_64"], lin["base"])
    assert res.verdict == "derived" and res.shapes["a"]["d"] == 48 and res.shapes["b"]["d"] == 64
    assert res.evidence["coordinates_fraction"] > 0.9


def test_units_fraction_grades_the_amount_traced(lin):
    """Units matched beyond chance: near 1 for a pruned copy, near 0 for an independent model."""
    res = lineage(lin["base"], lin["mlp_96_of_128"], units=True)
    assert res.evidence["units_fraction"] > 0.8
    unit_map = res.blocks[0]["unit_map"]
    assert unit_map["rows"] == "B" and len(unit_map["cols"]) == 96 and len(set(unit_map["cols"])) == 96
    assert abs(lineage(lin["base"], lin["mlp_96_of_128_ind"]).evidence["units_fraction"]) < 0.1


def test_experts_each_matched_against_the_dense_mlp(lin):
    res = lineage(lin["base"], lin["moe_upcycled_4"])
    assert res.shapes["b"]["experts"] == 4 and res.shapes["b"]["model_type"] == "mixtral"
    for blk in res.blocks:
        assert len(blk["experts"]) == 4 and all(e["z"] > 5 for e in blk["experts"])


def _write_tokenizer(path: Path, tokens: list[str]) -> None:
    (path / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordLevel",
                                                               "vocab": {t: i for i, t in enumerate(tokens)}}}))


def test_reordered_vocabulary_is_paired_by_token_string(lin, tmp_path):
    from gaugeport.core.verify import load_model

    model = load_model(lin["base"])
    v = model.config.vocab_size
    perm = torch.from_numpy(np.random.default_rng(0).permutation(v))
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(model.model.embed_tokens.weight[perm])
        model.lm_head.weight.copy_(model.lm_head.weight[perm])
    model.save_pretrained(tmp_path / "reordered")
    a_dir = tmp_path / "a"
    load_model(lin["base"]).save_pretrained(a_dir)
    names = [f"tok{i}" for i in range(v)]
    _write_tokenizer(a_dir, names)
    _write_tokenizer(tmp_path / "reordered", [names[int(i)] for i in perm])
    res = lineage(a_dir, tmp_path / "reordered")
    assert res.vocabulary["paired_by"] == "token strings"
    assert res.verdict == "derived" and res.evidence["tokens_fraction"] > 0.9


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(0, 10_000))
def test_monotone_assignment_is_the_best_increasing_subsequence(m, n, seed):
    m, n = max(m, n), min(m, n)
    s = np.random.default_rng(seed).normal(size=(m, n))
    rows = monotone_assignment(s)
    assert np.all(np.diff(rows) > 0)
    best = max(sum(s[r, j] for j, r in enumerate(c)) for c in itertools.combinations(range(m), n))
    assert np.isclose(sum(s[r, j] for j, r in enumerate(rows)), best)


@torch.no_grad()
def test_upcycling_without_noise_and_vocab_extension_preserve_the_function(lin):
    from gaugeport.core.verify import load_model

    base = load_model(lin["base"])
    ids = torch.randint(3, base.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    ref = base(input_ids=ids).logits
    moe = D.upcycle_to_mixtral(base, 4, noise=0.0)(input_ids=ids).logits
    ext = D.extend_vocab(base, 16)(input_ids=ids).logits
    tol = 1e-5 * float(ref.abs().max())  # float32 reassociation only
    assert float((moe - ref).abs().max()) <= tol
    assert ext.shape[-1] == ref.shape[-1] + 16 and float((ext[..., :ref.shape[-1]] - ref).abs().max()) == 0.0


def test_cli_same_dispatches_to_lineage_and_writes_report_and_plot(lin, cli, tmp_path):
    code, out, err = cli("same", lin["base"], lin["block_removed"], "--report", tmp_path / "r.json")
    assert code == 0, err
    assert "verdict     derived (lineage" in out and "0 -> 0" in out and "2 -> 1" in out
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["mode"] == "lineage" and doc["verdict"] == "derived" and len(doc["blocks"]) == 2
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    code, _, err = cli("same", lin["base"], lin["block_removed"], "--save-gauge", tmp_path / "g.safetensors")
    assert code == 2 and "no gauge" in err and "hint:" in err


def test_cli_batch_writes_lines_summary_and_roc(lin, cli, tmp_path):
    csv = tmp_path / "pairs.csv"
    csv.write_text("a,b,label\n"
                   f"{lin['base']},{lin['vocab_plus_16']},1\n"
                   f"{lin['base']},{lin['vocab_plus_16_ind']},0\n"
                   f"{lin['base']},{lin['block_removed']},derived\n")
    code, out, err = cli("same", "--pairs", csv, "--out", tmp_path / "r.jsonl")
    assert code == 0, err
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [x["verdict"] for x in lines] == ["derived", "independent", "derived"]
    summary = json.loads((tmp_path / "r.summary.json").read_text())
    assert summary["auc"] == 1.0 and summary["pairs"] == 3
    assert (tmp_path / "r.roc.png").is_file() and "AUC 1.000" in out


def test_batch_resumes_from_the_lines_already_written_and_drops_a_torn_line(tmp_path):
    csv = tmp_path / "pairs.csv"
    csv.write_text("a,b,label\nx,y,1\nx,z,0\nw,z,0\n")
    out = tmp_path / "r.jsonl"
    out.write_text(json.dumps({"a": "x", "b": "y", "label": 1, "verdict": "derived", "effect": 0.9}) + "\n"
                   + '{"a": "x", "b": "z", "verd')  # interrupted mid-line
    calls = []

    def fake(a: str, b: str, alpha: float) -> dict:
        calls.append((a, b))
        return {"verdict": "independent", "p_value": 0.5, "log10_p_value": -0.3, "effect": 0.1, "seconds": 0.0}

    summary = run_pairs(csv, out, compare=fake)
    assert calls == [("x", "z"), ("w", "z")]  # the complete line's pair is not recomputed
    assert len(out.read_text().splitlines()) == 3 and summary["auc"] == 1.0
    run_pairs(csv, out, compare=fake)
    assert len(calls) == 2  # nothing left to do


def test_batch_bad_csv_is_refused_with_a_hint(cli, tmp_path):
    (tmp_path / "p.csv").write_text("x,y\n1,2\n")
    code, _, err = cli("same", "--pairs", tmp_path / "p.csv", "--out", tmp_path / "o.jsonl")
    assert code == 2 and "columns a and b" in err and "hint:" in err
    (tmp_path / "q.csv").write_text("a,b,label\nm,n,maybe\n")
    with pytest.raises(Exception, match="label"):
        read_pairs(tmp_path / "q.csv")
    code, _, err = cli("same", "--pairs", tmp_path / "p.csv")
    assert code == 2 and "--out" in err


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(-5, 5), st.booleans()), min_size=2, max_size=30))
def test_auc_of_negated_scores_is_one_minus_auc(pairs):
    s = [p[0] for p in pairs]
    y = [int(p[1]) for p in pairs]
    if len(set(y)) < 2:
        return
    assert np.isclose(roc_auc(s, y) + roc_auc([-x for x in s], y), 1.0)


def test_auc_and_tpr_at_low_fpr_on_known_cases():
    assert roc_auc([3, 2, 1, 0], [1, 1, 0, 0]) == 1.0 and roc_auc([0, 1, 2, 3], [1, 1, 0, 0]) == 0.0
    assert roc_auc([1, 1], [1, 0]) == 0.5
    assert tpr_at_fpr([5, 1, 4, 0, 3], [1, 1, 0, 0, 0], 0.01) == 0.5  # only scores above every negative count


def test_combined_p_is_stouffer_over_the_mapped_blocks_z(lin):
    from scipy import stats

    res = lineage(lin["base"], lin["block_removed"])
    zs = np.array([b["z"] for b in res.blocks])
    z = zs.sum() / np.sqrt(len(zs))
    assert res.evidence["z"] == pytest.approx(z, rel=1e-12)
    assert res.log10_p == pytest.approx(stats.norm.logsf(z) / np.log(10), rel=1e-9)
