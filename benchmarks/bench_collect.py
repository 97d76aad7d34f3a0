"""Collection throughput: activations into cross-moments vs a bare forward pass on the same batches.

Two small Llama-style models (B = a random gauge applied to A) read the same seeded batches three
ways, each timed as the best of ``--repeat`` passes over all batches:

* ``bare``: ``model(input_ids, attention_mask)`` for A and B, logits included (what running the
  models costs anyway);
* ``trunk``: the same, stopped before the final norm (what collection must compute at least);
* ``collect``: :func:`gaugeport.estimate.activations.collect_moments` at the default sites (every distinct
  residual stream), float32 batch products accumulated in float64.

Headline: ``collect / bare`` (target <= 1.25x), also ``collect / trunk``. Writes JSON next to this
file (or ``--out``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from gaugeport.core.apply import apply_gauge_to_model
from gaugeport.core.gauge import SignedPermutation
from gaugeport.estimate.activations import _Capture, collect_moments, default_sites
from gaugeport.estimate.data import Batch
from gaugeport.models.tiny import tiny_model

FULL = {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 4, "num_attention_heads": 8,
        "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 8192, "max_position_embeddings": 512}
QUICK = {"hidden_size": 128, "intermediate_size": 344, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 4, "head_dim": 32, "vocab_size": 2048, "max_position_embeddings": 512}


def make_batches(vocab: int, n_batches: int, batch_size: int, seq_len: int, seed: int) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    return [Batch.of(torch.randint(3, vocab, (batch_size, seq_len), generator=g)) for _ in range(n_batches)]


@torch.no_grad()
def bare(models: list[torch.nn.Module], batches: list[Batch]) -> None:
    for batch in batches:
        for m in models:
            m(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)


@torch.no_grad()
def trunk(models: list[torch.nn.Module], batches: list[Batch]) -> None:
    """Forward passes stopped where collection stops (the final norm's input), storing nothing else."""
    for m in models:
        with _Capture(m, ["final"]) as cap:
            for batch in batches:
                cap.run(m, batch)


def best_of(fn: Any, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller model and fewer tokens")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("bench_collect.json"))
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    n_batches, batch_size, seq_len = (4, 4, 64) if args.quick else (8, 8, 256)
    model_a = tiny_model("llama", seed=0, **cfg)
    model_b = copy.deepcopy(model_a)
    apply_gauge_to_model(model_b, SignedPermutation.random(cfg["hidden_size"], seed=1))
    batches = make_batches(cfg["vocab_size"], n_batches, batch_size, seq_len, seed=0)
    sites = default_sites(model_a)
    bare([model_a, model_b], batches[:1])  # warm-up: allocator, kernels
    t_bare = best_of(lambda: bare([model_a, model_b], batches), args.repeat)
    t_trunk = best_of(lambda: trunk([model_a, model_b], batches), args.repeat)
    t_collect = best_of(lambda: collect_moments(model_a, model_b, batches, progress=False), args.repeat)
    n_tokens = sum(b.n_tokens for b in batches)
    result = {
        "config": cfg, "sites": sites, "n_sites": len(sites), "n_tokens": n_tokens,
        "batch_size": batch_size, "seq_len": seq_len, "torch_threads": torch.get_num_threads(),
        "bare_seconds": t_bare, "trunk_seconds": t_trunk, "collect_seconds": t_collect,
        "collect_tokens_per_second": n_tokens / t_collect,
        "collect_over_bare_ratio": t_collect / t_bare, "collect_over_trunk_ratio": t_collect / t_trunk,
        "moments_memory_mb": len(sites) * cfg["hidden_size"] ** 2 * 8 / 2**20,
    }
    result["headline"] = [
        ["collection with moments / bare forward (A+B)", f"{result['collect_over_bare_ratio']:.2f}x",
         f"d={cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, {len(sites)} sites, same run"],
        ["collection with moments / trunk-only forward", f"{result['collect_over_trunk_ratio']:.2f}x",
         f"{result['collect_tokens_per_second']:,.0f} tok/s with moments"],
    ]
    print(f"bare {t_bare:.3f}s  trunk {t_trunk:.3f}s  collect {t_collect:.3f}s  "
          f"-> collect/bare {result['collect_over_bare_ratio']:.2f}x  collect/trunk "
          f"{result['collect_over_trunk_ratio']:.2f}x  ({n_tokens} tokens, {len(sites)} sites)")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
