"""Residual-stream sites: TransformerLens hook names (as SAELens records them) <-> gaugeport site names.

gaugeport names a site ``resid_pre.L`` (input of block L), ``resid_mid.L`` (between attention and
MLP of block L), ``resid_post.L`` (output of block L) or ``final`` (the stream before the final
norm). Every hook listed in ``STREAM_HOOKS`` carries a vector in stream coordinates (width d), so a
gauge acts on it like on the stream itself; ``OFF_STREAM_HOOKS`` live on head, MLP-hidden or
attention-pattern axes, where a residual gauge means nothing.
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


def hook_to_site(hook_name: str) -> str | None:
    """``blocks.3.hook_resid_post`` -> ``resid_post.3``; ``None`` for a stream hook with no site name."""
    m = _BLOCK.fullmatch(hook_name)
    if m and STREAM_HOOKS.get(m.group(2)):
        return f"{STREAM_HOOKS[m.group(2)]}.{m.group(1)}"
    return None


def site_to_hook(site: str) -> str:
    """``resid_post.3`` -> ``blocks.3.hook_resid_post`` (the TransformerLens name SAELens records)."""
    m = _SITE.fullmatch(site)
    if not m:
        raise ArtifactError(f"unknown site {site!r}", hint="sites are resid_pre.L, resid_mid.L or resid_post.L")
    return f"blocks.{m.group(2)}.hook_{m.group(1)}"


def stream_hook_status(hook_name: str | None) -> str:
    """``"stream"`` (a gauge acts on it), ``"off-stream"`` (refuse) or ``"unknown"`` (a name we don't know)."""
    if not hook_name:
        return "unknown"
    m = _BLOCK.fullmatch(hook_name)
    suffix = m.group(2) if m else hook_name
    if suffix in STREAM_HOOKS or hook_name in TOP_STREAM_HOOKS:
        return "stream"
    if any(suffix == h or suffix.endswith("." + h) for h in OFF_STREAM_HOOKS):
        return "off-stream"
    return "unknown"
