"""Tiny, randomly initialised transformers models for every supported architecture.

Used by the tests, the demo and the benchmarks: real ``transformers`` model classes built from
configs (no hub download), with norm gains and biases randomised so that the gains are generic
(all distinct) and every bias is non-zero, which is what makes a gauge test able to fail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers

from gaugeport.core.archspec import get_spec

# Per-architecture config keys for a tiny model (d_model = 32, 2 blocks, vocab 96).
_COMMON = {"vocab_size": 96, "num_hidden_layers": 2, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
_DECODER = {**_COMMON, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 128}
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": _DECODER,
    "mistral": _DECODER,
    "qwen2": _DECODER,
    "qwen3": _DECODER,
    "gemma": _DECODER,
    "gemma2": {**_DECODER, "sliding_window": 16},
    "gemma3_text": {**_DECODER, "sliding_window": 16},
    "phi3": {**_DECODER, "num_key_value_heads": 4},
    "olmo2": _DECODER,
    "gpt2": {**_COMMON, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 128},
    "gpt_neox": {**_COMMON, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
                 "max_position_embeddings": 128},
    "bert": {**_COMMON, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
             "max_position_embeddings": 128},
    # the multimodal wrapper: the text model's facts live in text_config; a 1-layer vision tower
    # (28 x 28 images in 14 x 14 patches) whose 4 soft tokens the projector writes into the stream
    "gemma3": {"text_config": {**_DECODER, "sliding_window": 16}, "mm_tokens_per_image": 4,
               "vision_config": {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
                                 "num_hidden_layers": 1, "image_size": 28, "patch_size": 14},
               "boi_token_index": 93, "eoi_token_index": 94, "image_token_index": 95},
}


def tiny_config(model_type: str, **overrides: Any) -> transformers.PretrainedConfig:
    kwargs = {**TINY_CONFIGS[model_type], **overrides}
    return transformers.AutoConfig.for_model(model_type, **kwargs)


def model_class(model_type: str) -> type:
    """The table's task head (``AutoModelForCausalLM``, ``AutoModelForMaskedLM`` for BERT, ...)."""
    return getattr(transformers, get_spec(model_type).task_class)


@torch.no_grad()
def tiny_model(model_type: str, seed: int = 0, randomize: bool = True, **overrides: Any) -> torch.nn.Module:
    """A tiny float32 model in eval mode; ``randomize`` makes gains generic and biases non-zero."""
    torch.manual_seed(seed)
    model = model_class(model_type).from_config(tiny_config(model_type, **overrides), dtype=torch.float32)
    model.eval()
    if randomize:
        spec = get_spec(model_type)
        for name, p in model.named_parameters():
            if p.ndim == 1:  # gains and biases: generic values, never exactly uniform
                gain = spec.classify(name).role in ("gain", "signed_gain")  # the table says which are gains
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if gain else 0.0))
            elif p.ndim >= 2 and not p.any():  # zero-initialised matrices (Gemma-3's projector) would hide errors
                p.copy_(torch.randn_like(p) / p.shape[0] ** 0.5)
    return model


def save_tiny(model_type: str, path: str | Path, seed: int = 0, **overrides: Any) -> Path:
    """Save a tiny model as a Hugging Face checkpoint directory (safetensors)."""
    model = tiny_model(model_type, seed=seed, **overrides)
    model.save_pretrained(str(path))
    return Path(path)


def probe_ids(vocab_size: int, n_seq: int = 2, seq_len: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab_size, (n_seq, seq_len), generator=g)
