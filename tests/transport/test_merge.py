"""Merges: bring B into A's gauge first, then average; the S_d baseline averages anti-aligned coordinates."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from gaugeport.core.apply import apply_gauge_to_model
from gaugeport.core.errors import ArtifactError, GaugeGroupError
from gaugeport.core.gauge import SignedPermutation, save_gauge
from gaugeport.core.verify import load_model
from gaugeport.models.tiny import tiny_model
from gaugeport.study.evaluate import logits, merge_loss
from gaugeport.transport import merge_checkpoints, merge_models

D = 32
TOL = 1e-5  # max |logit| difference between two ways of computing one merge (float32)


def _corpus(n: int, seed: int, seq_len: int = 16) -> torch.Tensor:
    """Sequences of a fixed random bigram rule: learnable in a few dozen steps."""
    nxt = torch.randint(3, 96, (96,), generator=torch.Generator().manual_seed(123))
    x = torch.empty(n, seq_len, dtype=torch.long)
    x[:, 0] = torch.randint(3, 96, (n,), generator=torch.Generator().manual_seed(seed))
    for t in range(1, seq_len):
        x[:, t] = nxt[x[:, t - 1]]
    return x


def _train(model: torch.nn.Module, steps: int, seed: int) -> torch.nn.Module:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for s in range(steps):
        x = _corpus(16, seed * 1000 + s)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trio():
    """A (trained), A2 (A fine-tuned further, same coordinates), B = G A2 (A2 in another gauge)."""
    torch.manual_seed(0)
    a = _train(tiny_model("llama", seed=0), 50, seed=0)
    a2 = _train(copy.deepcopy(a), 15, seed=1)
    g = SignedPermutation.random(D, seed=7)
    return a, a2, g, apply_gauge_to_model(copy.deepcopy(a2), g)


@pytest.fixture(scope="module")
def ids():
    return _corpus(8, seed=99)


def _plain_average(a: torch.nn.Module, b: torch.nn.Module, alpha: float) -> torch.nn.Module:
    out = copy.deepcopy(a)
    sb = b.state_dict()
    out.load_state_dict({n: (1 - alpha) * t + alpha * sb[n] for n, t in a.state_dict().items()})
    return out


def test_signed_merge_equals_averaging_in_shared_coordinates(trio, ids) -> None:
    a, a2, g, b = trio
    merged = merge_models(a, b, g, alpha=0.3)
    truth = _plain_average(a, a2, 0.3)  # A and A2 share coordinates: the merge gaugeport should reproduce
    assert float((logits(merged, ids) - logits(truth, ids)).abs().max()) <= TOL


@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_perm_only_merge_is_measurably_worse(trio, ids, method) -> None:
    a, _, g, b = trio
    signed = merge_loss(merge_models(a, b, g, method=method), a, b, ids)
    perm = merge_loss(merge_models(a, b, g, method=method, perm_only=True), a, b, ids)
    assert signed["merged"] <= 1.5 * max(signed["a"], signed["b"])  # measured: below both endpoints
    assert perm["merged"] > 5 * max(perm["a"], perm["b"])  # measured: ~20x (linear), ~30x (slerp)


@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_alpha_endpoints_give_a_and_aligned_b(trio, ids, method) -> None:
    a, a2, g, b = trio
    assert float((logits(merge_models(a, b, g, 0.0, method), ids) - logits(a, ids)).abs().max()) <= TOL
    assert float((logits(merge_models(a, b, g, 1.0, method), ids) - logits(a2, ids)).abs().max()) <= TOL


def test_checkpoint_merge_streams_the_same_merge(trio, ids, tmp_path) -> None:
    a, _, g, b = trio
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    merge_checkpoints(tmp_path / "a", tmp_path / "b", g, tmp_path / "m", alpha=0.5, method="slerp")
    on_disk = load_model(tmp_path / "m")
    assert float((logits(on_disk, ids) - logits(merge_models(a, b, g, 0.5, "slerp"), ids)).abs().max()) <= TOL


def test_emit_mergekit_writes_aligned_b_and_a_config(trio, ids, tmp_path) -> None:
    a, a2, g, b = trio
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    merge_checkpoints(tmp_path / "a", tmp_path / "b", g, tmp_path / "mk", alpha=0.25, emit_mergekit=True)
    cfg = yaml.safe_load((tmp_path / "mk" / "mergekit.yml").read_text())
    assert cfg["merge_method"] == "linear"
    assert [m["parameters"]["weight"] for m in cfg["models"]] == [0.75, 0.25]
    assert cfg["models"][1]["model"] == str((tmp_path / "mk" / "b_aligned").resolve())
    aligned = load_model(cfg["models"][1]["model"])
    assert float((logits(aligned, ids) - logits(a2, ids)).abs().max()) <= TOL


def test_layer_norm_merge_refuses_coordinate_signs(tmp_path) -> None:
    a = tiny_model("gpt2", seed=0)
    g = SignedPermutation.random(D, seed=1)
    b = apply_gauge_to_model(copy.deepcopy(a), g.perm_only())
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    with pytest.raises(GaugeGroupError):
        merge_checkpoints(tmp_path / "a", tmp_path / "b", g, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    merge_checkpoints(tmp_path / "a", tmp_path / "b", g, tmp_path / "m", perm_only=True)  # permutations are fine
    ids = torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    assert float((logits(load_model(tmp_path / "m"), ids) - logits(a, ids)).abs().max()) <= TOL


def test_models_of_different_sizes_are_refused(trio) -> None:
    a, _, g, _ = trio
    with pytest.raises(ArtifactError, match="differ"):
        merge_models(a, tiny_model("llama", seed=0, intermediate_size=48), g)


def test_cli_merge(trio, tmp_path, cli) -> None:
    a, _, g, b = trio
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    gpath = save_gauge(g, tmp_path / "g.safetensors")
    code, out, _ = cli("merge", tmp_path / "a", tmp_path / "b", "--gauge", gpath, "--alpha", "0.5", "--out",
                       tmp_path / "m", "--quiet")
    assert code == 0 and "linear merge" in out
    code, _, err = cli("merge", tmp_path / "a", tmp_path / "b", "--gauge", gpath, "--alpha", "1.5", "--out",
                       tmp_path / "m2")
    assert code == 2 and "alpha" in err and not (tmp_path / "m2").exists()
