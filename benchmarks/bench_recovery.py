"""Tokens needed to recover a gauge to 99%: signed vs raw vs perm-only matching, on a perturbed model.

A: a small Llama-style model (randomised gains). B: A with a random signed permutation applied
(half the signs negative) and then every weight perturbed by Gaussian noise of ``noise`` times that
tensor's standard deviation, so B is a *different* model in A's gauge orbit, as two related
checkpoints are. Paired activations on seeded random tokens are streamed into moments; after each
doubling of the token budget all three methods match on the same moments (every default site
votes) and are scored against the true gauge (`full` accuracy: permutation and sign right).

Reported per noise level and method: the smallest budget from which accuracy stays >= the target
(99%) up to the largest budget, and the accuracy at the largest budget; medians over seeds. The
baselines are the same run's `raw` and `perm-only` figures: both are capped near the positive-sign
fraction of the true gauge (0.5), whatever the token count.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from gaugeport.core.apply import apply_gauge_to_model
from gaugeport.core.fileio import atomic_write_json
from gaugeport.core.gauge import SignedPermutation
from gaugeport.estimate.activations import collect_moments
from gaugeport.estimate.align import align_from_moments
from gaugeport.estimate.matching import METHODS
from gaugeport.models.tiny import tiny_model

TARGET = 0.99
MODEL = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2,
         "head_dim": 32, "num_hidden_layers": 2, "vocab_size": 256}
SEQ_LEN, BATCH_SEQS = 16, 1  # 16 tokens per batch; budgets double from one batch


@torch.no_grad()
def perturbed_pair(seed: int, noise: float) -> tuple[torch.nn.Module, torch.nn.Module, SignedPermutation]:
    model_a = tiny_model("llama", seed=seed, **MODEL)
    truth = SignedPermutation.random(MODEL["hidden_size"], seed=1000 + seed, positive_fraction=0.5)
    model_b = apply_gauge_to_model(copy.deepcopy(model_a), truth)
    gen = torch.Generator().manual_seed(2000 + seed)
    for p in model_b.parameters():
        p.add_(torch.randn(p.shape, generator=gen) * (noise * float(p.std()) if p.numel() > 1 else 0.0))
    return model_a, model_b, truth


def token_batches(n: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    # ids >= 3: pad / bos / eos are masked out of the statistics and would only waste budget
    return [torch.randint(3, MODEL["vocab_size"], (BATCH_SEQS, SEQ_LEN), generator=gen) for _ in range(n)]


def recovery_curve(seed: int, noise: float, max_batches: int) -> dict[str, Any]:
    """Accuracy of every method after 1, 2, 4, ... batches (moments grow by merging new shards)."""
    model_a, model_b, truth = perturbed_pair(seed, noise)
    batches = token_batches(max_batches, seed=3000 + seed)
    moments, done, curve = None, 0, []
    while done < max_batches:
        upto = max(1, 2 * done)
        shard = collect_moments(model_a, model_b, batches[done:upto], progress=False,
                                shard_id=f"{done}:{upto}")
        moments = shard if moments is None else moments.merge(shard)
        done = upto
        acc = {m: align_from_moments(moments, m).gauge.accuracy(truth)["full"] for m in METHODS}
        curve.append({"tokens": moments.n_tokens, **acc})
    return {"seed": seed, "noise": noise, "curve": curve}


def tokens_to_target(curve: list[dict[str, Any]], method: str, target: float = TARGET) -> int | None:
    """Smallest budget from which the accuracy stays >= target through the largest budget."""
    need = None
    for point in reversed(curve):
        if point[method] < target:
            break
        need = point["tokens"]
    return need


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    methods = {}
    for m in METHODS:
        needs = [tokens_to_target(r["curve"], m) for r in runs]
        reached = [n for n in needs if n is not None]
        methods[m] = {
            "tokens_to_target": int(statistics.median(reached)) if len(reached) == len(needs) else None,
            "tokens_to_target_per_seed": needs,
            "final_accuracy": statistics.median(r["curve"][-1][m] for r in runs),
        }
    return methods


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed, one noise level, up to 4,096 tokens")
    ap.add_argument("--noise", type=float, nargs="+", default=None,
                    help="weight noise levels, in units of each tensor's std (default 0.5 1.0; quick: 1.0)")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    seeds = [0] if args.quick else [0, 1, 2]
    noises = args.noise or ([1.0] if args.quick else [0.5, 1.0])
    max_batches = 256 if args.quick else 512
    by_noise = {}
    for noise in noises:
        runs = [recovery_curve(s, noise, max_batches) for s in seeds]
        by_noise[str(noise)] = {"methods": summarise(runs), "runs": runs}
        report(noise, seeds, runs, by_noise[str(noise)]["methods"])
    budgets = [p["tokens"] for p in by_noise[str(noises[0])]["runs"][0]["curve"]]
    result = {"target": TARGET, "model": MODEL, "seeds": seeds, "budgets": budgets, "noise": by_noise}
    if args.out:
        atomic_write_json(args.out, result)
    return result


def report(noise: float, seeds: list[int], runs: list[dict[str, Any]], methods: dict[str, Any]) -> None:
    print(f"\nd={MODEL['hidden_size']}, {MODEL['num_hidden_layers']} blocks, weight noise {noise} x std, "
          f"seeds {seeds}; full accuracy by token budget (seed {seeds[0]}):")
    print(f"{'tokens':>8} " + " ".join(f"{m:>10}" for m in METHODS))
    for p in runs[0]["curve"]:
        print(f"{p['tokens']:>8} " + " ".join(f"{p[m]:>10.3f}" for m in METHODS))
    for m, v in methods.items():
        need = v["tokens_to_target"]
        print(f"{m:<10} tokens to {TARGET:.0%} (median over seeds): {need if need else 'never':>6}  "
              f"final accuracy {v['final_accuracy']:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
