"""Tiny checkpoints with a multi-token-prediction (MTP) layer, in the layout DeepSeek-V3 and GLM-4.5 publish.

``save_pretrained`` never writes the MTP layer (the causal-LM class does not hold it), but the
published files do: one extra block at layer index ``num_hidden_layers`` with ``enorm``, ``hnorm``,
``eh_proj`` (``[d, 2d]``, reading ``[enorm(embedding); hnorm(hidden)]``), ``shared_head.norm``,
copies of the embedding and head, and a full MoE decoder block with one tensor per expert.
These helpers write such a checkpoint from transformers' own ``MtpModel`` and run that layer back
through transformers, so the MTP rows of a table are checked on the computation transformers does.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers.modeling_layers import MtpModel

from gaugeport.core.verify import load_model
from gaugeport.models.tiny import tiny_model

_FUSED = re.compile(r"mlp\.experts\.(gate_up_proj|down_proj)")


@torch.no_grad()
def save_tiny_with_mtp(model_type: str, path: str | Path, seed: int = 0) -> Path:
    """A tiny checkpoint (as ``save_tiny``) plus one MTP layer at index ``num_hidden_layers``, published layout."""
    path = Path(path)
    main = tiny_model(model_type, seed=seed)
    torch.manual_seed(seed + 1000)
    mtp = MtpModel(main, 1)
    std = float(main.config.initializer_range)
    for name, p in mtp.named_parameters():  # every tensor set here: MtpModel leaves some uninitialised
        if name.startswith(("embed_tokens", "shared_head")):
            continue  # the main model's, shared
        if p.ndim > 1:
            p.copy_(torch.randn_like(p) * std)
        elif "norm" in name:  # gains of both signs and random magnitudes
            p.copy_((torch.rand_like(p) + 0.5) * torch.where(torch.rand_like(p) < 0.5, -1.0, 1.0))
        else:
            p.copy_(torch.randn_like(p) * 0.3)
    main.save_pretrained(str(path))
    file = path / "model.safetensors"
    tensors = load_file(str(file))
    prefix = f"model.layers.{main.config.num_hidden_layers}."
    for name, t in mtp.state_dict().items():
        if name.startswith(("embed_tokens", "shared_head")):
            continue  # shared with the main model; the published copies are added below
        name = name.removeprefix("layers.0.").removeprefix("mtp_block.").replace("post_norm.", "shared_head.norm.")
        fused = _FUSED.fullmatch(name)
        if fused is None:
            tensors[prefix + name] = t.clone()
            continue
        for e in range(t.shape[0]):  # published: one 2-D tensor per expert
            if fused.group(1) == "down_proj":
                tensors[prefix + f"mlp.experts.{e}.down_proj.weight"] = t[e].clone()
            else:
                gate, up = t[e].chunk(2, dim=0)
                tensors[prefix + f"mlp.experts.{e}.gate_proj.weight"] = gate.clone()
                tensors[prefix + f"mlp.experts.{e}.up_proj.weight"] = up.clone()
    tensors[prefix + "embed_tokens.weight"] = tensors["model.embed_tokens.weight"].clone()
    tensors[prefix + "shared_head.head.weight"] = tensors["lm_head.weight"].clone()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(file), metadata={"format": "pt"})
    return path


@torch.no_grad()
def mtp_outputs(path: str | Path, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(MTP hidden state, MTP logits) of a checkpoint written by ``save_tiny_with_mtp``, via transformers.

    The main model's last hidden state at positions ``0..n-2`` and the tokens at ``1..n-1`` go
    through the MTP layer, as in transformers' MTP drafting step.
    """
    model = load_model(path)
    # transformers finds MTP tensors by the layer index of the published flagship (61 for DeepSeek-V3);
    # point it at this tiny model's index instead
    model._keys_to_ignore_on_load_unexpected = [rf"model\.layers\.{model.config.num_hidden_layers}\..*"]
    mtp = MtpModel.from_pretrained(model).eval()
    last = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    pos = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
    hidden = mtp.forward_layer(0, last[:, :-1], pos[:, 1:], None, input_ids=ids[:, 1:])
    return hidden, mtp._project_to_logits(hidden)
