"""A standard (ReLU) sparse autoencoder, trained in torch and saved in SAELens' on-disk format.

Saving as ``cfg.json`` + ``sae_weights.safetensors`` (architecture ``standard``) means the study
transports it through the same code path as any SAELens SAE.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

SAE_CFG, SAE_WEIGHTS = "cfg.json", "sae_weights.safetensors"


def train_sae(acts: torch.Tensor, d_sae: int, steps: int, l1: float, seed: int, batch_size: int = 256,
              lr: float = 3e-3, progress: bool = True) -> dict[str, torch.Tensor]:
    """SAELens-layout weights (W_enc [d, m], W_dec [m, d], b_enc, b_dec) fitted to ``acts`` [n, d].

    Loss: squared error + ``l1`` x sum of feature activations weighted by decoder norms
    (the standard SAE objective, insensitive to rescaling the decoder).
    """
    g = torch.Generator().manual_seed(seed)
    d = acts.shape[1]
    scale = acts.pow(2).sum(-1).mean().sqrt()
    w_dec = torch.randn(d_sae, d, generator=g)
    w_dec = (w_dec / w_dec.norm(dim=1, keepdim=True) * 0.1).requires_grad_()
    w_enc = w_dec.detach().T.clone().requires_grad_()
    b_enc = torch.zeros(d_sae, requires_grad=True)
    b_dec = acts.mean(0).clone().requires_grad_()
    opt = torch.optim.Adam([w_enc, w_dec, b_enc, b_dec], lr=lr)
    for _ in tqdm(range(steps), desc="sae", unit="step", disable=not progress, leave=False):
        x = acts[torch.randint(0, len(acts), (batch_size,), generator=g)]
        f = torch.relu((x - b_dec) @ w_enc + b_enc)
        err = (f @ w_dec + b_dec - x).pow(2).sum(-1).mean() / scale**2
        sparsity = (f * w_dec.norm(dim=1)).sum(-1).mean() / scale
        loss = err + l1 * sparsity
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {"W_enc": w_enc.detach().contiguous(), "W_dec": w_dec.detach().contiguous(),
            "b_enc": b_enc.detach().contiguous(), "b_dec": b_dec.detach().contiguous()}


def save_saelens(weights: dict[str, torch.Tensor], path: Path, hook_name: str, model_name: str) -> Path:
    """Write an SAELens ``standard`` SAE directory (loadable with ``sae_lens.SAE.load_from_disk``)."""
    d_in, d_sae = weights["W_enc"].shape
    cfg = {
        "architecture": "standard", "d_in": int(d_in), "d_sae": int(d_sae), "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        # the version fields tell SAELens this is a >= 6.0 config (else it drops the metadata as legacy)
        "metadata": {"sae_lens_version": _saelens_version(), "sae_lens_training_version": _saelens_version(),
                     "hook_name": hook_name, "model_name": model_name, "trained_by": "gaugeport reproduce"},
    }
    path.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path / SAE_WEIGHTS))
    (path / SAE_CFG).write_text(json.dumps(cfg, indent=2))
    return path


def _saelens_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sae-lens")
    except PackageNotFoundError:
        return "6.0.0"


def load_saelens(path: Path) -> dict[str, torch.Tensor]:
    from gaugeport.core.fileio import read_safetensors

    return read_safetensors(path / SAE_WEIGHTS, what="SAE weights")[0]
