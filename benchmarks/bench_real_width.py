"""Function preservation at real widths: 2-block models with the hidden sizes of released LLMs.

Random weights (gains randomised so they are generic), a random signed permutation applied in
place (`apply_gauge_to_model`), logits compared in float32 on seeded probe tokens. Runs on CUDA when
available (that is where the figures in docs/architectures.md were taken), else on the CPU with `--quick`
shapes. Writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from gaugeport.core.apply import apply_gauge_to_model
from gaugeport.core.gauge import SignedPermutation
from gaugeport.models.tiny import probe_ids, tiny_model

# (model_type, hidden, intermediate, heads, kv heads, head_dim, vocab): shapes of released models.
SHAPES = {
    "llama-3-8b": ("llama", 4096, 14336, 32, 8, 128, 128256),
    "qwen2-7b": ("qwen2", 3584, 18944, 28, 4, 128, 152064),
    "gemma-2-9b": ("gemma2", 3584, 14336, 16, 8, 256, 256000),
    "olmo-2-7b": ("olmo2", 4096, 11008, 32, 32, 128, 100352),
}
QUICK = {name: (mt, h // 8, i // 8, 4, 2, h // 32, 4096) for name, (mt, h, i, _, _, _, _) in SHAPES.items()}


def measure(name: str, shape: tuple, device: str, n_seq: int, seq_len: int) -> dict[str, float]:
    mt, hidden, inter, heads, kv, head_dim, vocab = shape
    model = tiny_model(mt, seed=0, hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads,
                       num_key_value_heads=kv, head_dim=head_dim, vocab_size=vocab, max_position_embeddings=4096)
    model = model.to(device)
    gauge = SignedPermutation.random(hidden, seed=1)
    ids = probe_ids(vocab, n_seq, seq_len, seed=0).to(device)
    with torch.no_grad():
        ref = model(input_ids=ids).logits.float()
    gauged = copy.deepcopy(model)
    t0 = time.perf_counter()
    apply_gauge_to_model(gauged, gauge)
    if device == "cuda":
        torch.cuda.synchronize()
    apply_s = time.perf_counter() - t0
    with torch.no_grad():
        out = gauged(input_ids=ids).logits.float()
    n_params = sum(p.numel() for p in model.parameters())
    diff = (ref - out).abs().max().item()
    return {"model_type": mt, "d_model": hidden, "params": n_params, "apply_seconds": apply_s,
            "max_abs_logit_diff": diff, "max_rel_logit_diff": diff / ref.abs().max().item()}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1/8-width shapes (CPU-friendly)")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("real_width.json"))
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False  # compare in true float32
    shapes = QUICK if args.quick else SHAPES
    results = {name: measure(name, s, device, 2, 64) for name, s in shapes.items()}
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}")
    print(f"{'shape':<12} {'d':>5} {'params':>8} {'apply s':>8} {'max|dlogit|':>11} {'rel':>8}")
    for name, r in results.items():
        print(f"{name:<12} {r['d_model']:>5} {r['params'] / 1e6:>7.0f}M {r['apply_seconds']:>8.2f} "
              f"{r['max_abs_logit_diff']:>11.2e} {r['max_rel_logit_diff']:>8.1e}")
    args.out.write_text(json.dumps({"device": device, "results": results}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
