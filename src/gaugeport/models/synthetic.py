"""Synthetic llama-style checkpoints at real widths, for scale tests and benchmarks.

Real tensor names and shapes (untied ``lm_head``), any width and depth, several shards plus
``model.safetensors.index.json``, written one tensor at a time so the writer stays small whatever
the checkpoint's size. The values are seeded noise (gains of both signs, small matrices): enough
for a rewrite to be checked on logits, not a trained model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from gaugeport.core.checkpoint import INDEX_FILE, SafetensorsStreamWriter

MB = 2**20


@dataclass(frozen=True)
class LlamaShape:
    """Widths of a synthetic llama checkpoint and the size of its shards."""

    d_model: int
    intermediate: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab: int
    shard_mb: int


def llama_layout(s: LlamaShape) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a Hugging Face llama checkpoint (untied lm_head), in file order."""
    d, kv_dim = s.d_model, s.d_model // s.n_heads * s.n_kv_heads
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (s.vocab, d)}
    for i in range(s.n_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (d, d), p + "self_attn.k_proj.weight": (kv_dim, d),
            p + "self_attn.v_proj.weight": (kv_dim, d), p + "self_attn.o_proj.weight": (d, d),
            p + "mlp.gate_proj.weight": (s.intermediate, d), p + "mlp.up_proj.weight": (s.intermediate, d),
            p + "mlp.down_proj.weight": (d, s.intermediate),
            p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
        })
    shapes.update({"model.norm.weight": (d,), "lm_head.weight": (s.vocab, d)})
    return shapes


def llama_config(s: LlamaShape, dtype: torch.dtype) -> dict:
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": s.d_model,
            "intermediate_size": s.intermediate, "num_hidden_layers": s.n_layers, "num_attention_heads": s.n_heads,
            "num_key_value_heads": s.n_kv_heads, "head_dim": s.d_model // s.n_heads, "vocab_size": s.vocab,
            "rms_norm_eps": 1e-5, "max_position_embeddings": 4096, "tie_word_embeddings": False,
            "torch_dtype": str(dtype).removeprefix("torch.")}


def shard_names(shapes: dict[str, tuple[int, ...]], itemsize: int, shard_bytes: int) -> list[list[str]]:
    """Greedy shards in checkpoint order, each at most ``shard_bytes`` (or one oversized tensor)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = torch.Size(shape).numel() * itemsize
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_synthetic_llama(path: str | Path, shape: LlamaShape, dtype: torch.dtype = torch.float32,
                          seed: int = 0) -> dict[str, int]:
    """Write the checkpoint tensor by tensor into the new directory ``path``; returns its sizes in bytes
    (``total_bytes``, ``largest_tensor_bytes``, ``largest_shard_bytes``, ``n_shards``, ``n_tensors``,
    ``d_model``)."""
    path = Path(path)
    shapes = llama_layout(shape)
    itemsize = torch.empty((), dtype=dtype).element_size()
    shards = shard_names(shapes, itemsize, shape.shard_mb * MB)
    gen = torch.Generator().manual_seed(seed)
    path.mkdir(parents=True)
    weight_map: dict[str, str] = {}
    shard_sizes = []
    for k, names in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        layout = {n: (dtype, shapes[n]) for n in names}
        with SafetensorsStreamWriter(path / file, layout, {"format": "pt"}) as writer:
            for name in writer.order:
                t = torch.empty(shapes[name], dtype=torch.float32)
                if len(shapes[name]) == 1:  # gains: generic, of both signs and random magnitudes
                    t.normal_(1.0, 0.3, generator=gen).mul_(torch.randint(0, 2, t.shape, generator=gen) * 2 - 1)
                else:  # matrices: small; the values only need to be non-trivial
                    t.normal_(0.0, 0.02, generator=gen)
                writer.write(name, t.to(dtype))
                del t
                weight_map[name] = file
        shard_sizes.append(sum(torch.Size(shapes[n]).numel() * itemsize for n in names))
    total = sum(shard_sizes)
    (path / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (path / "config.json").write_text(json.dumps(llama_config(shape, dtype)))
    largest = max(torch.Size(s).numel() for s in shapes.values()) * itemsize
    return {"total_bytes": total, "largest_tensor_bytes": largest, "largest_shard_bytes": max(shard_sizes),
            "n_shards": len(shards), "n_tensors": len(shapes), "d_model": shape.d_model}
