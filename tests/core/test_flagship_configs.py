"""Published configs, real shapes, no weights: each family's flagship model built on torch's ``meta`` device.

Every parameter and persistent buffer of the real-size model must be claimed by exactly one row of its
table, and every residual axis a row names must have the model's hidden size. The config values are
typed from each model's published ``config.json`` on the Hugging Face hub (repository named in the
comment); only the keys that shape the weights are kept.

Families added later extend :data:`FLAGSHIPS` (one entry per ``model_type``, keyed by the table name).
"""

from __future__ import annotations

import pytest
import torch
import transformers

from gaugeport.core.archspec import supported_architectures
from gaugeport.core.facts import ModelFacts
from gaugeport.core.verify import model_class_for

FLAGSHIPS: dict[str, dict] = {
    # meta-llama/Llama-3.1-8B
    "llama": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
              "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
              "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False, "rms_norm_eps": 1e-05,
              "rope_theta": 500000.0, "bos_token_id": 128000, "eos_token_id": 128001,
              "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 8192, "rope_type": "llama3"}},
    # mistralai/Mistral-7B-v0.3
    "mistral": {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096,
                "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                "num_key_value_heads": 8, "vocab_size": 32768, "max_position_embeddings": 32768,
                "sliding_window": None, "tie_word_embeddings": False, "rope_theta": 1000000.0},
    # Qwen/Qwen2.5-7B
    "qwen2": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584,
              "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
              "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 131072,
              "tie_word_embeddings": False, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06,
              "bos_token_id": 151643, "eos_token_id": 151643},
    # Qwen/Qwen3-8B
    "qwen3": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 4096,
              "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32,
              "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 40960,
              "attention_bias": False, "tie_word_embeddings": False, "rope_theta": 1000000.0},
    # google/gemma-7b
    "gemma": {"architectures": ["GemmaForCausalLM"], "model_type": "gemma", "hidden_size": 3072,
              "intermediate_size": 24576, "num_hidden_layers": 28, "num_attention_heads": 16,
              "num_key_value_heads": 16, "head_dim": 256, "vocab_size": 256000, "max_position_embeddings": 8192,
              "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0},
    # google/gemma-2-9b
    "gemma2": {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "hidden_size": 3584,
               "intermediate_size": 14336, "num_hidden_layers": 42, "num_attention_heads": 16,
               "num_key_value_heads": 8, "head_dim": 256, "vocab_size": 256000, "sliding_window": 4096,
               "query_pre_attn_scalar": 256, "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0},
    # google/gemma-3-1b-it (the text-only Gemma 3)
    "gemma3_text": {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "hidden_size": 1152,
                    "intermediate_size": 6912, "num_hidden_layers": 26, "num_attention_heads": 4,
                    "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 262144, "sliding_window": 512,
                    "max_position_embeddings": 32768, "query_pre_attn_scalar": 256},
    # google/gemma-3-27b-it (multimodal: SigLIP tower, projector, Gemma 3 text model)
    "gemma3": {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
               "mm_tokens_per_image": 256, "boi_token_index": 255999, "eoi_token_index": 256000,
               "image_token_index": 262144,
               "text_config": {"model_type": "gemma3_text", "hidden_size": 5376, "intermediate_size": 21504,
                               "num_hidden_layers": 62, "num_attention_heads": 32, "num_key_value_heads": 16,
                               "head_dim": 128, "query_pre_attn_scalar": 168, "sliding_window": 1024,
                               "vocab_size": 262208, "rope_scaling": {"factor": 8.0, "rope_type": "linear"}},
               "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
                                 "num_hidden_layers": 27, "num_attention_heads": 16, "image_size": 896,
                                 "patch_size": 14, "vision_use_head": False}},
    # microsoft/Phi-3-mini-4k-instruct
    "phi3": {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_size": 3072,
             "intermediate_size": 8192, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "vocab_size": 32064, "max_position_embeddings": 4096,
             "original_max_position_embeddings": 4096, "sliding_window": 2047, "tie_word_embeddings": False,
             "bos_token_id": 1, "eos_token_id": 32000, "pad_token_id": 32000},
    # allenai/OLMo-2-1124-7B
    "olmo2": {"architectures": ["Olmo2ForCausalLM"], "model_type": "olmo2", "hidden_size": 4096,
              "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 32, "vocab_size": 100352, "max_position_embeddings": 4096,
              "attention_bias": False, "tie_word_embeddings": False, "rope_theta": 500000,
              "pad_token_id": 100277, "eos_token_id": 100257},
    # openai-community/gpt2
    "gpt2": {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12,
             "n_positions": 1024, "n_ctx": 1024, "vocab_size": 50257, "bos_token_id": 50256, "eos_token_id": 50256},
    # EleutherAI/pythia-160m
    "gpt_neox": {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_size": 768,
                 "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                 "vocab_size": 50304, "max_position_embeddings": 2048, "rotary_pct": 0.25,
                 "rotary_emb_base": 10000, "use_parallel_residual": True, "tie_word_embeddings": False,
                 "bos_token_id": 0, "eos_token_id": 0},
    # google-bert/bert-base-uncased
    "bert": {"architectures": ["BertForMaskedLM"], "model_type": "bert", "hidden_size": 768,
             "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
             "vocab_size": 30522, "max_position_embeddings": 512, "type_vocab_size": 2, "pad_token_id": 0},
}


def test_every_supported_family_has_a_flagship_config():
    missing = sorted(set(supported_architectures()) - set(FLAGSHIPS))
    assert not missing, f"add the published flagship config of: {missing}"


@pytest.mark.parametrize("model_type", sorted(FLAGSHIPS))
def test_flagship_on_meta_device_every_tensor_claimed_once_with_the_right_shape(model_type):
    published = FLAGSHIPS[model_type]
    facts = ModelFacts.from_config(published)
    cfg = transformers.AutoConfig.for_model(**published)
    with torch.device("meta"):
        model = model_class_for(published)(cfg)
    state = model.state_dict()
    rules = facts.spec.classify_all(list(state))  # one row per tensor, or it raises naming the tensor
    assert set(rules) == set(state)
    wrong = [(name, tuple(t.shape), rule.axes) for name, t in state.items() for rule in [rules[name]]
             if any(a >= t.ndim or t.shape[a] != facts.d_model for a in rule.axes)]
    assert not wrong, f"residual axis not of size d={facts.d_model}: {wrong[:5]}"
    n_residual = sum(r.role != "untouched" for r in rules.values())
    assert n_residual >= 2 * facts.n_layers, "a table that claims everything as untouched proves nothing"
