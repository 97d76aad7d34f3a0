"""Tiny, randomly initialised transformers models for every supported architecture.

Used by the tests, the demo and the benchmarks: real ``transformers`` model classes built from
configs (no hub download), with norm gains and biases randomised so that the gains are generic
(all distinct) and every bias is non-zero, which is what makes a gauge test able to fail. Norm gains
take both signs (half of each gain vector's entries, at random places, are negative) with random
magnitudes: a bug that signs a gain, or takes its absolute value, changes a model's function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers

from gaugeport.core.archspec import ArchSpec, get_spec

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
    # dense, RMSNorm
    "granite": {**_DECODER, "embedding_multiplier": 3.0, "residual_multiplier": 0.5, "logits_scaling": 2.0,
                "attention_multiplier": 0.2},
    "smollm3": _DECODER,
    "ministral": _DECODER,
    "seed_oss": {**_DECODER, "attention_out_bias": True},
    "arcee": _DECODER,
    "ernie4_5": _DECODER,
    "hunyuan_v1_dense": _DECODER,
    "olmo3": _DECODER,
    "exaone4": _DECODER,
    "glm": _DECODER,
    "glm4": _DECODER,
    # LayerNorm
    "phi": {**_DECODER, "num_key_value_heads": 4, "partial_rotary_factor": 0.5, "qk_layernorm": True},
    "starcoder2": _DECODER,
    "stablelm": {**_DECODER, "qk_layernorm": True, "use_qkv_bias": True, "partial_rotary_factor": 0.25},
    "cohere": {**_DECODER, "use_qk_norm": True},
    "cohere2": {**_DECODER, "sliding_window": 16},
    "falcon": {**_COMMON, "hidden_size": 32, "num_attention_heads": 4, "num_kv_heads": 2, "bias": True,
               "new_decoder_architecture": True, "ffn_hidden_size": 64},
    "olmo": _DECODER,
    # mixture of experts: 4 experts, 2 active (1 for llama4), dense blocks where the family has them
    "mixtral": {**_DECODER, "num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {**_DECODER, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                  "shared_expert_intermediate_size": 48, "mlp_only_layers": [0]},
    "qwen3_moe": {**_DECODER, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
    "olmoe": {**_DECODER, "num_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 32},
    "granitemoe": {**_DECODER, "num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 32,
                   "embedding_multiplier": 3.0, "residual_multiplier": 0.5, "logits_scaling": 2.0},
    "llama4_text": {**_DECODER, "num_local_experts": 4, "num_experts_per_tok": 1, "intermediate_size": 32,
                    "intermediate_size_mlp": 64, "interleave_moe_layer_step": 2},
    "gpt_oss": {**_DECODER, "num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 32,
                "sliding_window": 16},
    "deepseek_v3": {**_DECODER, "n_routed_experts": 4, "n_shared_experts": 1, "num_experts_per_tok": 2,
                    "moe_intermediate_size": 32, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1,
                    "q_lora_rank": 16, "kv_lora_rank": 16, "qk_rope_head_dim": 4, "qk_nope_head_dim": 8,
                    "v_head_dim": 8, "head_dim": 4, "num_key_value_heads": 4},
    "glm4_moe": {**_DECODER, "n_routed_experts": 4, "n_shared_experts": 1, "num_experts_per_tok": 2,
                 "moe_intermediate_size": 32, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1,
                 "use_qk_norm": True},
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


GAIN_SIGN_SEED = 7919  # offset of the generator that picks the negative gain entries


@torch.no_grad()
def tiny_model(model_type: str, seed: int = 0, randomize: bool = True, mixed_gain_signs: bool = True,
               **overrides: Any) -> torch.nn.Module:
    """A tiny float32 model in eval mode; ``randomize`` makes gains generic and biases non-zero.

    ``mixed_gain_signs``: negate half of every norm gain's entries (a generator of their own picks
    which, so every other parameter is the same either way). The study turns it off: its models
    are trained from the usual positive gains."""
    torch.manual_seed(seed)
    model = model_class(model_type).from_config(tiny_config(model_type, **overrides), dtype=torch.float32)
    model.eval()
    if randomize:
        spec = get_spec(model_type)
        modules = dict(model.named_modules())
        flips = torch.Generator().manual_seed(seed + GAIN_SIGN_SEED)
        for name, p in model.named_parameters():
            gain = _is_gain(name, spec, modules)
            # gains (Cohere's per-head q/k-norm [heads, head_dim] too), biases (per-expert too): generic values
            if p.ndim == 1 or name.endswith("_bias") or gain:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if gain else 0.0))
                if gain and mixed_gain_signs:
                    p[torch.randperm(p.shape[0], generator=flips)[: p.shape[0] // 2]] *= -1
            elif p.ndim >= 2 and not p.any():  # zero-initialised matrices (Gemma-3's projector) would hide errors
                p.copy_(torch.randn_like(p) / p.shape[0] ** 0.5)
    return model


def _is_gain(name: str, spec: ArchSpec, modules: dict[str, torch.nn.Module]) -> bool:
    """Drawn around 1: the table's gains, and the weight of any other normalisation module (q/k-norm over
    head_dim has no residual role, so the table calls it untouched; its module says it is a norm)."""
    if spec.classify(name).role in ("gain", "signed_gain"):
        return True
    owner, _, attr = name.rpartition(".")
    return attr == "weight" and "Norm" in type(modules.get(owner)).__name__


def save_tiny(model_type: str, path: str | Path, seed: int = 0, **overrides: Any) -> Path:
    """Save a tiny model as a Hugging Face checkpoint directory (safetensors)."""
    model = tiny_model(model_type, seed=seed, **overrides)
    model.save_pretrained(str(path))
    return Path(path)


def probe_ids(vocab_size: int, n_seq: int = 2, seq_len: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab_size, (n_seq, seq_len), generator=g)
