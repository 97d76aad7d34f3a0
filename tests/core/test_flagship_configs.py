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
    # ibm-granite/granite-3.1-8b-instruct
    "granite": {"architectures": ["GraniteForCausalLM"], "model_type": "granite", "hidden_size": 4096,
                "intermediate_size": 12800, "num_hidden_layers": 40, "num_attention_heads": 32,
                "num_key_value_heads": 8, "vocab_size": 49155, "max_position_embeddings": 131072,
                "embedding_multiplier": 12.0, "residual_multiplier": 0.22, "attention_multiplier": 0.0078125,
                "logits_scaling": 16.0, "tie_word_embeddings": True, "rope_theta": 10000000.0},
    # HuggingFaceTB/SmolLM3-3B
    "smollm3": {"architectures": ["SmolLM3ForCausalLM"], "model_type": "smollm3", "hidden_size": 2048,
                "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
                "num_key_value_heads": 4, "vocab_size": 128256, "max_position_embeddings": 65536,
                "no_rope_layer_interval": 4, "tie_word_embeddings": True, "rope_theta": 5000000.0},
    # mistralai/Ministral-8B-Instruct-2410 (the hub file says model_type "mistral"; transformers' ministral
    # class is the same weights with its per-layer sliding window)
    "ministral": {"architectures": ["MinistralForCausalLM"], "model_type": "ministral", "hidden_size": 4096,
                  "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32,
                  "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 131072, "sliding_window": 32768,
                  "max_position_embeddings": 32768, "tie_word_embeddings": False, "rope_theta": 100000000.0},
    # ByteDance-Seed/Seed-OSS-36B-Instruct
    "seed_oss": {"architectures": ["SeedOssForCausalLM"], "model_type": "seed_oss", "hidden_size": 5120,
                 "intermediate_size": 27648, "num_hidden_layers": 64, "num_attention_heads": 80,
                 "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 155136, "attention_bias": True,
                 "attention_out_bias": False, "mlp_bias": False, "max_position_embeddings": 524288,
                 "tie_word_embeddings": False, "rope_theta": 10000000.0},
    # arcee-ai/AFM-4.5B
    "arcee": {"architectures": ["ArceeForCausalLM"], "model_type": "arcee", "hidden_size": 2560,
              "intermediate_size": 18432, "num_hidden_layers": 36, "num_attention_heads": 20,
              "num_key_value_heads": 4, "head_dim": 128, "vocab_size": 128004, "hidden_act": "relu2",
              "max_position_embeddings": 65536, "tie_word_embeddings": False},
    # baidu/ERNIE-4.5-0.3B-PT
    "ernie4_5": {"architectures": ["Ernie4_5ForCausalLM"], "model_type": "ernie4_5", "hidden_size": 1024,
                 "intermediate_size": 3072, "num_hidden_layers": 18, "num_attention_heads": 16,
                 "num_key_value_heads": 2, "head_dim": 128, "vocab_size": 103424, "use_bias": False,
                 "max_position_embeddings": 131072, "tie_word_embeddings": True, "rope_theta": 500000.0},
    # tencent/Hunyuan-7B-Instruct
    "hunyuan_v1_dense": {"architectures": ["HunYuanDenseV1ForCausalLM"], "model_type": "hunyuan_v1_dense",
                         "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                         "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                         "vocab_size": 128167, "max_position_embeddings": 32768, "tie_word_embeddings": True},
    # allenai/Olmo-3-1025-7B
    "olmo3": {"architectures": ["Olmo3ForCausalLM"], "model_type": "olmo3", "hidden_size": 4096,
              "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 32, "vocab_size": 100278, "sliding_window": 4096,
              "max_position_embeddings": 65536, "tie_word_embeddings": False},
    # LGAI-EXAONE/EXAONE-4.0-1.2B
    "exaone4": {"architectures": ["Exaone4ForCausalLM"], "model_type": "exaone4", "hidden_size": 2048,
                "intermediate_size": 4096, "num_hidden_layers": 30, "num_attention_heads": 32,
                "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 102400, "max_position_embeddings": 65536,
                "tie_word_embeddings": True},
    # THUDM/glm-4-9b-chat-hf
    "glm": {"architectures": ["GlmForCausalLM"], "model_type": "glm", "hidden_size": 4096, "intermediate_size": 13696,
            "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 128,
            "vocab_size": 151552, "partial_rotary_factor": 0.5, "attention_bias": True,
            "max_position_embeddings": 131072, "tie_word_embeddings": False},
    # THUDM/GLM-4-9B-0414
    "glm4": {"architectures": ["Glm4ForCausalLM"], "model_type": "glm4", "hidden_size": 4096,
             "intermediate_size": 13696, "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 2,
             "head_dim": 128, "vocab_size": 151552, "partial_rotary_factor": 0.5, "attention_bias": True,
             "max_position_embeddings": 32768, "tie_word_embeddings": False},
    # microsoft/phi-2
    "phi": {"architectures": ["PhiForCausalLM"], "model_type": "phi", "hidden_size": 2560, "intermediate_size": 10240,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 51200,
            "partial_rotary_factor": 0.4, "qk_layernorm": False, "max_position_embeddings": 2048,
            "tie_word_embeddings": False},
    # bigcode/starcoder2-7b
    "starcoder2": {"architectures": ["Starcoder2ForCausalLM"], "model_type": "starcoder2", "hidden_size": 4608,
                   "intermediate_size": 18432, "num_hidden_layers": 32, "num_attention_heads": 36,
                   "num_key_value_heads": 4, "vocab_size": 49152, "max_position_embeddings": 16384,
                   "sliding_window": 4096, "use_bias": True, "rope_theta": 1000000, "bos_token_id": 0,
                   "eos_token_id": 0},
    # stabilityai/stablelm-2-1_6b
    "stablelm": {"architectures": ["StableLmForCausalLM"], "model_type": "stablelm", "hidden_size": 2048,
                 "intermediate_size": 5632, "num_hidden_layers": 24, "num_attention_heads": 32,
                 "num_key_value_heads": 32, "vocab_size": 100352, "partial_rotary_factor": 0.25,
                 "use_qkv_bias": True, "qk_layernorm": False, "max_position_embeddings": 4096,
                 "tie_word_embeddings": False},
    # CohereForAI/c4ai-command-r-v01
    "cohere": {"architectures": ["CohereForCausalLM"], "model_type": "cohere", "hidden_size": 8192,
               "intermediate_size": 22528, "num_hidden_layers": 40, "num_attention_heads": 64,
               "num_key_value_heads": 64, "vocab_size": 256000, "logit_scale": 0.0625, "use_qk_norm": False,
               "max_position_embeddings": 8192, "tie_word_embeddings": True},
    # CohereForAI/c4ai-command-r7b-12-2024
    "cohere2": {"architectures": ["Cohere2ForCausalLM"], "model_type": "cohere2", "hidden_size": 4096,
                "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                "num_key_value_heads": 8, "vocab_size": 256000, "sliding_window": 4096, "logit_scale": 0.25,
                "max_position_embeddings": 8192, "tie_word_embeddings": True},
    # tiiuae/falcon-7b (multi-query, parallel attention, the old decoder layout)
    "falcon": {"architectures": ["FalconForCausalLM"], "model_type": "falcon", "hidden_size": 4544,
               "num_hidden_layers": 32, "num_attention_heads": 71, "multi_query": True,
               "new_decoder_architecture": False, "parallel_attn": True, "bias": False, "alibi": False,
               "vocab_size": 65024, "bos_token_id": 11, "eos_token_id": 11},
    # allenai/OLMo-7B-hf
    "olmo": {"architectures": ["OlmoForCausalLM"], "model_type": "olmo", "hidden_size": 4096,
             "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "vocab_size": 50304, "max_position_embeddings": 2048,
             "tie_word_embeddings": False, "pad_token_id": 1, "eos_token_id": 50279},
    # mistralai/Mixtral-8x7B-v0.1
    "mixtral": {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096,
                "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                "num_key_value_heads": 8, "vocab_size": 32000, "num_local_experts": 8, "num_experts_per_tok": 2,
                "max_position_embeddings": 32768, "rope_theta": 1000000.0, "tie_word_embeddings": False},
    # Qwen/Qwen1.5-MoE-A2.7B
    "qwen2_moe": {"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "hidden_size": 2048,
                  "intermediate_size": 5632, "num_hidden_layers": 24, "num_attention_heads": 16,
                  "num_key_value_heads": 16, "vocab_size": 151936, "num_experts": 60, "num_experts_per_tok": 4,
                  "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632, "decoder_sparse_step": 1,
                  "max_position_embeddings": 8192, "tie_word_embeddings": False},
    # Qwen/Qwen3-30B-A3B
    "qwen3_moe": {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 2048,
                  "intermediate_size": 6144, "num_hidden_layers": 48, "num_attention_heads": 32,
                  "num_key_value_heads": 4, "head_dim": 128, "vocab_size": 151936, "num_experts": 128,
                  "num_experts_per_tok": 8, "moe_intermediate_size": 768, "decoder_sparse_step": 1,
                  "mlp_only_layers": [], "max_position_embeddings": 40960, "tie_word_embeddings": False},
    # allenai/OLMoE-1B-7B-0924
    "olmoe": {"architectures": ["OlmoeForCausalLM"], "model_type": "olmoe", "hidden_size": 2048,
              "intermediate_size": 1024, "num_hidden_layers": 16, "num_attention_heads": 16,
              "num_key_value_heads": 16, "vocab_size": 50304, "num_experts": 64, "num_experts_per_tok": 8,
              "max_position_embeddings": 4096, "tie_word_embeddings": False, "pad_token_id": 1,
              "eos_token_id": 50279},
    # ibm-granite/granite-3.0-1b-a400m-base
    "granitemoe": {"architectures": ["GraniteMoeForCausalLM"], "model_type": "granitemoe", "hidden_size": 1024,
                   "intermediate_size": 512, "num_hidden_layers": 24, "num_attention_heads": 16,
                   "num_key_value_heads": 8, "vocab_size": 49155, "num_local_experts": 32, "num_experts_per_tok": 8,
                   "embedding_multiplier": 12.0, "residual_multiplier": 0.22, "attention_multiplier": 0.015625,
                   "logits_scaling": 6.0, "max_position_embeddings": 4096, "tie_word_embeddings": True},
    # meta-llama/Llama-4-Scout-17B-16E, its text_config (the text model alone, as Llama4ForCausalLM)
    "llama4_text": {"architectures": ["Llama4ForCausalLM"], "model_type": "llama4_text", "hidden_size": 5120,
                    "intermediate_size": 8192, "intermediate_size_mlp": 16384, "num_hidden_layers": 48,
                    "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 202048,
                    "num_local_experts": 16, "num_experts_per_tok": 1, "interleave_moe_layer_step": 1,
                    "use_qk_norm": True, "attention_chunk_size": 8192, "max_position_embeddings": 10485760,
                    "rope_theta": 500000.0, "tie_word_embeddings": False},
    # openai/gpt-oss-20b (shapes of the bf16 layout; the release's MXFP4 blocks are refused by core.quant)
    "gpt_oss": {"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": 2880,
                "intermediate_size": 2880, "num_hidden_layers": 24, "num_attention_heads": 64,
                "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 201088, "num_local_experts": 32,
                "num_experts_per_tok": 4, "sliding_window": 128, "max_position_embeddings": 131072,
                "rope_theta": 150000, "tie_word_embeddings": False},
    # deepseek-ai/DeepSeek-V3 (61 layers, 256 routed experts; the MTP layer is not part of the causal-LM class)
    "deepseek_v3": {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": 7168,
                    "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 61,
                    "num_attention_heads": 128, "num_key_value_heads": 128, "n_routed_experts": 256,
                    "n_shared_experts": 1, "num_experts_per_tok": 8, "first_k_dense_replace": 3, "n_group": 8,
                    "topk_group": 4, "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_rope_head_dim": 64,
                    "qk_nope_head_dim": 128, "v_head_dim": 128, "vocab_size": 129280,
                    "max_position_embeddings": 163840, "routed_scaling_factor": 2.5, "tie_word_embeddings": False},
    # zai-org/GLM-4.5-Air
    "glm4_moe": {"architectures": ["Glm4MoeForCausalLM"], "model_type": "glm4_moe", "hidden_size": 4096,
                 "intermediate_size": 10944, "moe_intermediate_size": 1408, "num_hidden_layers": 46,
                 "num_attention_heads": 96, "num_key_value_heads": 8, "head_dim": 128, "n_routed_experts": 128,
                 "n_shared_experts": 1, "num_experts_per_tok": 8, "first_k_dense_replace": 1, "n_group": 1,
                 "topk_group": 1, "vocab_size": 151552, "partial_rotary_factor": 0.5, "use_qk_norm": False,
                 "attention_bias": True, "max_position_embeddings": 131072, "tie_word_embeddings": False},
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
