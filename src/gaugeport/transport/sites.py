"""Residual-stream sites: TransformerLens hook names and module paths <-> gaugeport site names.

gaugeport names a site ``resid_pre.L`` (input of block L), ``resid_mid.L`` (between attention and
MLP of block L), ``resid_post.L`` (output of block L) or ``final`` (the stream before the final
norm). Every hook listed in ``STREAM_HOOKS`` carries a vector in stream coordinates (width d), so a
gauge acts on it like on the stream itself; ``OFF_STREAM_HOOKS`` live on head, MLP-hidden or
attention-pattern axes, where a residual gauge means nothing.

Module paths (nnsight, plain PyTorch hooks, sparsify's hookpoints) name the same places by the
module whose output (or ``.input``) carries the stream: ``model.layers.L`` is ``resid_post.L``,
``model.layers.L.input`` ``resid_pre.L``, ``model.embed_tokens`` ``embed``, ``model.norm.input``
``final``. :func:`canonical_site` accepts any of these spellings wherever a site is accepted.
"""

from __future__ import annotations

import re

from gaugeport.core.errors import ArtifactError

# hook suffix (after "blocks.L.") -> gaugeport site prefix; None: stream-shaped but no site of its own
STREAM_HOOKS: dict[str, str | None] = {
    "hook_resid_pre": "resid_pre",
    "hook_resid_mid": "resid_mid",
    "hook_resid_post": "resid_post",
    "hook_attn_out": None,  # what attention writes into the stream
    "hook_mlp_out": None,  # what the MLP writes into the stream
    "hook_attn_in": None,
    "hook_mlp_in": None,
    "hook_q_input": None,
    "hook_k_input": None,
    "hook_v_input": None,
    "ln1.hook_normalized": None,  # normalised stream: RMSNorm/LayerNorm commute with the gauge
    "ln2.hook_normalized": None,
}
TOP_STREAM_HOOKS = {"hook_embed", "hook_pos_embed", "ln_final.hook_normalized"}
OFF_STREAM_HOOKS = ("hook_z", "hook_q", "hook_k", "hook_v", "hook_pre", "hook_post", "hook_pre_linear",
                    "hook_result", "hook_attn_scores", "hook_pattern", "hook_scale", "hook_rot_q", "hook_rot_k")
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
_SITE = re.compile(r"(resid_pre|resid_mid|resid_post)\.(\d+)")


TOP_HOOK_SITES = {"hook_embed": "embed", "ln_final.hook_normalized": "final"}


def hook_to_site(hook_name: str) -> str | None:
    """``blocks.3.hook_resid_post`` -> ``resid_post.3``, ``hook_embed`` -> ``embed``,
    ``ln_final.hook_normalized`` -> ``final`` (normalised: the same coordinates, each token's scale
    removed); ``None`` for a stream hook with no site name."""
    if hook_name in TOP_HOOK_SITES:
        return TOP_HOOK_SITES[hook_name]
    m = _BLOCK.fullmatch(hook_name)
    if m and STREAM_HOOKS.get(m.group(2)):
        return f"{STREAM_HOOKS[m.group(2)]}.{m.group(1)}"
    return None


def site_to_hook(site: str) -> str:
    """``resid_post.3`` -> ``blocks.3.hook_resid_post`` (the TransformerLens name SAELens records);
    ``embed`` -> ``hook_embed``, ``final`` -> ``ln_final.hook_normalized``."""
    reverse = {v: k for k, v in TOP_HOOK_SITES.items()}
    if site in reverse:
        return reverse[site]
    m = _SITE.fullmatch(site)
    if not m:
        raise ArtifactError(f"unknown site {site!r}", hint="sites are resid_pre.L, resid_mid.L or resid_post.L")
    return f"blocks.{m.group(2)}.hook_{m.group(1)}"


def stream_hook_status(hook_name: str | None) -> str:
    """``"stream"`` (a gauge acts on it), ``"off-stream"`` (refuse) or ``"unknown"`` (a name we don't know)."""
    if not hook_name:
        return "unknown"
    if not (hook_name.startswith("blocks.") or hook_name.startswith("hook_") or hook_name.startswith("ln_final")):
        return module_stream_status(hook_name)  # a module path (nnsight, sparsify hookpoints)
    m = _BLOCK.fullmatch(hook_name)
    suffix = m.group(2) if m else hook_name
    if suffix in STREAM_HOOKS or hook_name in TOP_STREAM_HOOKS:
        return "stream"
    if any(suffix == h or suffix.endswith("." + h) for h in OFF_STREAM_HOOKS):
        return "off-stream"
    return "unknown"


# ------------------------------------------------------------------------------------- module paths
# nnsight / plain PyTorch name modules by attribute path (``model.layers.6``, ``model.embed_tokens``);
# sparsify names its hookpoint directories the same way (``layers.6``, ``layers.6.mlp``). A module's
# *output* is meant unless the path ends in ``.input`` (nnsight's ``.input`` / ``.output`` accepted).
_BLOCK_LISTS = r"(?:layers|h|blocks|block|decoder\.layers|encoder\.layer)"
_MODULE_BLOCK = re.compile(rf"(?:.*\.)?{_BLOCK_LISTS}\.(\d+)")
_MODULE_SUB = re.compile(rf"(?:.*\.)?{_BLOCK_LISTS}\.(\d+)\.(.+)")
_MODULE_EMBED = re.compile(r"(?:.*\.)?(?:embed_tokens|wte|embed_in|word_embeddings)")
_MODULE_FINAL_NORM = re.compile(r"(?:.*\.)?(?:norm|ln_f|final_layer_norm|final_layernorm|final_norm)")
# block submodules whose output is stream-shaped (what attention / the MLP write; normalised stream)
_STREAM_SUBMODULES = re.compile(
    r"(?:mlp|self_attn|attn|attention|feed_forward|mlp\.down_proj|mlp\.c_proj|mlp\.fc2|mlp\.dense_4h_to_h|"
    r"self_attn\.o_proj|attn\.c_proj|attn\.o_proj|attention\.dense|self_attn\.dense|"
    r"input_layernorm|post_attention_layernorm|pre_feedforward_layernorm|post_feedforward_layernorm|"
    r"ln_1|ln_2|post_attention_layernorm|pre_mlp_layernorm)")
_OFF_STREAM_SUBMODULES = re.compile(
    r"(?:.*\.)?(?:q_proj|k_proj|v_proj|gate_proj|up_proj|act_fn|act|c_attn|c_fc|fc1|query_key_value|"
    r"dense_h_to_4h|gate_up_proj|qkv_proj|q_norm|k_norm|rotary_emb)")


def _strip_module(path: str) -> tuple[str, str]:
    """``model.layers[6].output`` -> (``model.layers.6``, ``output``)."""
    p = re.sub(r"\[(\d+)\]", r".\1", path.strip())
    for end in ("input", "output"):
        if p.endswith("." + end):
            return p[: -len(end) - 1], end
    return p, "output"


def module_to_site(path: str) -> str | None:
    """gaugeport's site for a module path: ``model.layers.6`` (output) -> ``resid_post.6``,
    ``model.layers.6.input`` -> ``resid_pre.6``, ``model.embed_tokens`` -> ``embed``; None when the
    module is stream-shaped without a site of its own (``layers.6.mlp``) or not stream-shaped."""
    p, end = _strip_module(path)
    m = _MODULE_BLOCK.fullmatch(p)
    if m:
        return f"resid_{'pre' if end == 'input' else 'post'}.{m.group(1)}"
    if _MODULE_EMBED.fullmatch(p) and end == "output":
        return "embed"
    if _MODULE_FINAL_NORM.fullmatch(p) and end == "input":
        return "final"
    return None


def site_to_module(site: str, layers: str = "model.layers", final_norm: str = "model.norm",
                   embed: str = "model.embed_tokens") -> str:
    """``resid_post.6`` -> ``model.layers.6.output`` (nnsight's attribute path, Llama-style names by
    default; give an architecture's ``layers`` path otherwise). ``resid_mid`` has no module boundary
    of its own in most blocks and is refused here."""
    if site == "embed":
        return f"{embed}.output"
    if site == "final":
        return f"{final_norm}.input"
    m = _SITE.fullmatch(site)
    if not m or m.group(1) == "resid_mid":
        raise ArtifactError(f"site {site!r} has no module boundary of its own",
                            hint="module paths exist for embed, resid_pre.L, resid_post.L and final")
    return f"{layers}.{m.group(2)}.{'input' if m.group(1) == 'resid_pre' else 'output'}"


def module_stream_status(path: str) -> str:
    """``"stream"``, ``"off-stream"`` or ``"unknown"`` for a module path (see :func:`stream_hook_status`)."""
    p, _ = _strip_module(path)
    if module_to_site(path) or _MODULE_EMBED.fullmatch(p) or _MODULE_FINAL_NORM.fullmatch(p):
        return "stream"
    m = _MODULE_SUB.fullmatch(p)
    if m and _STREAM_SUBMODULES.fullmatch(m.group(2)):
        return "stream"
    if _OFF_STREAM_SUBMODULES.fullmatch(p) or (m and _OFF_STREAM_SUBMODULES.fullmatch(m.group(2))):
        return "off-stream"
    return "unknown"


def canonical_site(name: str) -> str:
    """Any accepted spelling of a site -> gaugeport's name: ``resid_post.6`` as is, TransformerLens
    ``blocks.6.hook_resid_post``, ``hook_embed``, ``ln_final.hook_normalized``, or a module path
    (``model.layers.6``). Names that are none of these are returned unchanged (the caller refuses them)."""
    if name in ("embed", "final", "all") or _SITE.fullmatch(name):
        return name
    site = hook_to_site(name)
    if site:
        return site
    return module_to_site(name) or name
