"""The shipped pair manifests (benchmarks/manifests/) are valid ``same --pairs`` input with the published counts."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from gaugeport.provenance.batch import read_pairs

MANIFESTS = Path(__file__).resolve().parents[2] / "benchmarks" / "manifests"
HUB_ID = r"^[A-Za-z0-9][\w.-]*/[\w.-]+$"


@pytest.mark.parametrize(("name", "n_pairs", "n_distinct", "n_positive", "n_models"), [
    # AWM: 60 positive, 90 negative pairs; its list holds Llama-2-7B / LLaMA-MoE-v1-3_5B-4_16 in both orders
    ("awm_iclr2026.csv", 150, 149, 60, None),
    ("zhu_icml2025_llama7b.csv", 210, 210, 69, 21),  # Zhu et al.: all pairs of 21 models
    ("published_lineage_examples.csv", 10, 10, None, None),
])
def test_manifest_parses_as_pairs_input_with_the_published_counts(name, n_pairs, n_distinct, n_positive, n_models):
    import re

    rows = read_pairs(MANIFESTS / name)
    assert len(rows) == n_pairs
    assert all(r["label"] in (0, 1) for r in rows)
    if n_positive is not None:
        assert sum(r["label"] for r in rows) == n_positive
    assert all(re.match(HUB_ID, r["a"]) and re.match(HUB_ID, r["b"]) for r in rows)  # hub IDs, no local paths
    assert len({frozenset((r["a"], r["b"])) for r in rows}) == n_distinct
    assert all(r["a"] != r["b"] for r in rows)
    if n_models is not None:
        assert len({r["a"] for r in rows} | {r["b"] for r in rows}) == n_models


def test_zhu_labels_follow_the_lineage_tree_roots():
    with (MANIFESTS / "zhu_icml2025_llama7b.csv").open() as f:
        for row in csv.DictReader(f):
            assert int(row["label"]) == int(row["a_root"] == row["b_root"])


def test_awm_negatives_are_all_pairs_of_two_ten_model_sets():
    with (MANIFESTS / "awm_iclr2026.csv").open() as f:
        rows = list(csv.DictReader(f))
    for config in ("independent_pairs", "independent_pairs_13b"):
        neg = [r for r in rows if r["awm_config"] == config]
        assert len(neg) == 45 and all(r["label"] == "0" for r in neg)
        assert len({r["a_folder"] for r in neg} | {r["b_folder"] for r in neg}) == 10
    pos = [r for r in rows if r["label"] == "1"]
    assert sorted({r["awm_config"] for r in pos}) == sorted(
        ["sft_pairs", "cpt_pairs", "rl_pairs", "multimodal_pairs", "pruning_pairs", "all_moe_pairs"])
    assert all(sum(r["awm_config"] == c for r in pos) == 10 for c in {r["awm_config"] for r in pos})
