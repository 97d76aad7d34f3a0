"""TransformerLens: a gauged tiny Llama in ``HookedTransformer`` (with ``fold_ln``) has its residual
hooks in the gauge's coordinates, so artifacts keyed by TransformerLens hook names transport as usual.

``fold_ln`` multiplies RMSNorm gains into the weights that read the normalised stream; the stream
itself (``hook_resid_*``, ``hook_embed``) is untouched, so its basis is still the checkpoint's. The
model is built from the local checkpoint (config by hand, weights through TransformerLens' own
Llama conversion): nothing comes from the hub.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from gaugeport.core.apply import apply_gauge_to_model
from gaugeport.core.gauge import SignedPermutation
from gaugeport.models.tiny import probe_ids, tiny_model
from gaugeport.transport.sites import canonical_site, site_to_hook

TOL = 1e-6  # float32, |resid| ~ 0.1; ln_final.hook_normalized is ~ 1-4, compared relative to its size


def hooked(hf: torch.nn.Module):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    c = hf.config
    cfg = HookedTransformerConfig(
        d_model=c.hidden_size, d_head=c.head_dim, n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings, d_vocab=c.vocab_size, act_fn="silu",
        normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=c.head_dim, final_rms=True,
        gated_mlp=True, n_key_value_heads=c.num_key_value_heads, eps=c.rms_norm_eps,
        rotary_base=(getattr(c, "rope_parameters", None) or {}).get("rope_theta", 10000.0),
        original_architecture="LlamaForCausalLM", dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg)
        model.load_and_process_state_dict(convert_llama_weights(hf, cfg), fold_ln=True, center_writing_weights=False,
                                          center_unembed=False)
    return model.eval()


def test_hooked_transformer_residual_hooks_follow_the_gauge() -> None:
    a = tiny_model("llama", seed=0).eval()
    g = SignedPermutation.random(a.config.hidden_size, seed=1)
    b = apply_gauge_to_model(copy.deepcopy(a), g)
    ids = probe_ids(a.config.vocab_size, n_seq=2, seq_len=12)
    ta, tb = hooked(a), hooked(b)
    with torch.no_grad():
        logits_a, cache_a = ta.run_with_cache(ids)
        logits_b, cache_b = tb.run_with_cache(ids)
        hf_logits = a(ids).logits
    torch.testing.assert_close(logits_a, hf_logits, atol=1e-5, rtol=0)  # TransformerLens reproduces the checkpoint
    torch.testing.assert_close(logits_b, logits_a, atol=1e-5, rtol=0)
    sites = ["embed", *(f"resid_{k}.{layer}" for layer in range(a.config.num_hidden_layers)
                        for k in ("pre", "mid", "post")), "final"]
    for site in sites:
        hook = site_to_hook(site)
        assert canonical_site(hook) == site
        ref = cache_a[hook]
        torch.testing.assert_close(cache_b[hook], g.apply(ref, axis=-1), atol=TOL * max(1.0, ref.abs().max().item()),
                                   rtol=0)
        # and the check can fail: permutation alone (signs dropped) does not match
        if site != "embed" or bool((g.signs < 0).any()):
            assert (cache_b[hook] - g.perm_only().apply(ref, axis=-1)).abs().max() > 1e-3


@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_post", "hook_embed", "ln_final.hook_normalized"])
def test_hook_names_are_transformer_lens_hook_points(hook: str) -> None:
    """The names gaugeport writes are the ones HookedTransformer exposes."""
    model = hooked(tiny_model("llama", seed=0))
    assert hook in model.hook_dict
