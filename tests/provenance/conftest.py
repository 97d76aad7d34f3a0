"""Trained tiny models for the provenance tests (seeded; trained once per session).

Sizes are the smallest that keep the checks meaningful: d=32, 2 layers, 64 MLP units, grouped-query
attention (4 heads in 2 groups), 200 AdamW steps on the built-in corpus; fine-tunes add 150 steps on
other data. The 10-pair calibration sweep lives in benchmarks/bench_provenance.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

BASE_STEPS = 200
FINETUNE_STEPS = 150


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from gaugeport.core.fullgauge import apply_full_gauge_to_checkpoint, random_full_gauge_for
    from gaugeport.study.provenance_runs import finetuned, trained

    root = tmp_path_factory.mktemp("zoo")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        paths = {}
        base = trained(0, BASE_STEPS)
        base.save_pretrained(root / "base")
        paths["base"] = root / "base"
        for seed in (1, 2):
            trained(seed, BASE_STEPS).save_pretrained(root / f"ind{seed}")
            paths[f"ind{seed}"] = root / f"ind{seed}"
        finetuned(base, FINETUNE_STEPS, data_seed=77).save_pretrained(root / "ft_plain")
        paths["ft_plain"] = root / "ft_plain"
    finally:
        torch.set_num_threads(threads)
    # the fine-tune is re-uploaded under a random full gauge
    apply_full_gauge_to_checkpoint(root / "ft_plain", random_full_gauge_for(root / "ft_plain", 11), root / "ft",
                                   progress=False)
    paths["ft"] = root / "ft"
    return paths


@pytest.fixture
def general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """``same``'s general path for every pair, exact copies too (which the fingerprint shortcut decides)."""
    from gaugeport.provenance import same as S

    monkeypatch.setattr(S, "EXACT_COPY_SHORTCUT", False)


@pytest.fixture(params=["shortcut", "general"])
def either_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test twice: exact copies decided by their fingerprints (the default), then by the general path."""
    from gaugeport.provenance import same as S

    monkeypatch.setattr(S, "EXACT_COPY_SHORTCUT", request.param == "shortcut")
    return str(request.param)


@pytest.fixture(scope="session")
def folded_getters():
    """``make(a, b)``: ``same``'s folded getters of two llama checkpoints, their rules and the fitted residual map."""
    def make(a: Path, b: Path):
        from gaugeport.core.checkpoint import Checkpoint
        from gaugeport.core.hidden import get_hidden_spec
        from gaugeport.provenance import same as S

        ca, cb = Checkpoint.open(a), Checkpoint.open(b)
        spec, hspec = ca.spec, get_hidden_spec("llama")
        names = sorted(set(ca.names) & set(cb.names))
        get_a, _ = S._folded(ca, names, spec, hspec)
        get_b, _ = S._folded(cb, names, spec, hspec)
        residual, _ = S._residual_by_fit(ca, get_a, get_b, spec, [])
        return get_a, get_b, spec.classify_all(names), residual
    return make
