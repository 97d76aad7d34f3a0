"""How well did an artifact survive transport? Helpers the tests and the reproduction study share.

* steering: add a vector to a decoder layer's output (as steering-vectors and repeng do) and measure
  the change of the logits, or of a probe metric on them; compare the effect of the transported
  vector on B with that of the original on A (:func:`steering_preserved`, :func:`sign_reversal`);
* SAEs: reconstruction NMSE on (target) activations at the SAE's site (:func:`sae_nmse`);
* merges: language-model loss of the merge against its endpoints (:func:`merge_loss`).

Logits live in vocabulary space, which no residual gauge touches, so A's and B's logit changes are
directly comparable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from gaugeport.core.archspec import spec_for_config
from gaugeport.core.errors import ArtifactError, DataError

Metric = Callable[[torch.Tensor], torch.Tensor | float]
Vectors = Mapping[int, torch.Tensor | np.ndarray]


# ------------------------------------------------------------------------------------- model plumbing
def _resolve(root: torch.nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The ModuleList of blocks, as the architecture table names it (``model.layers``, ``transformer.h``)."""
    return _resolve(model, spec_for_config(model.config).sites.layers)


@contextlib.contextmanager
def steering(model: torch.nn.Module, vectors: Vectors, scale: float = 1.0) -> Iterator[None]:
    """Add ``scale * vectors[L]`` to the output of decoder layer ``L`` while the context is open."""
    layers = decoder_layers(model)
    handles = []
    for layer, v in vectors.items():
        if not -len(layers) <= int(layer) < len(layers):
            raise ArtifactError(f"layer {layer} does not exist: the model has {len(layers)} layers")
        t = torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v)

        def add(_mod: Any, _inp: Any, out: Any, t: torch.Tensor = t) -> Any:
            if isinstance(out, tuple):
                return (out[0] + scale * t.to(out[0]), *out[1:])
            return out + scale * t.to(out)

        handles.append(layers[int(layer)].register_forward_hook(add))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def as_layer_vectors(vector: Any, layer: int | None) -> Vectors:
    """A dict layer -> vector from a dict, a (layers, d) array, or one vector plus ``layer``."""
    if isinstance(vector, Mapping):
        return {int(k): v for k, v in vector.items()}
    for attr in ("layer_activations", "directions"):  # SteeringVector / ControlVector
        if hasattr(vector, attr):
            return {int(k): v for k, v in getattr(vector, attr).items()}
    if vector.ndim == 2:
        return dict(enumerate(vector))
    if layer is None:
        raise ArtifactError("a single vector needs layer=... (which decoder layer's output it is added to)")
    return {layer: vector}


@torch.no_grad()
def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=torch.as_tensor(ids)).logits.float()


# ------------------------------------------------------------------------------------- steering
@torch.no_grad()
def logit_change(model: torch.nn.Module, vector: Any, ids: torch.Tensor, layer: int | None = None,
                 scale: float = 1.0) -> torch.Tensor:
    """Steered minus unsteered logits, ``[n_seq, seq_len, vocab]``."""
    base = logits(model, ids)
    with steering(model, as_layer_vectors(vector, layer), scale):
        return logits(model, ids) - base


def token_logit_diff(positive: Sequence[int], negative: Sequence[int]) -> Metric:
    """A probe metric: mean logit of ``positive`` tokens minus ``negative`` ones, over all positions."""
    pos, neg = list(positive), list(negative)
    return lambda lg: lg[..., pos].mean() - lg[..., neg].mean()


@torch.no_grad()
def steering_effect(model: torch.nn.Module, vector: Any, ids: torch.Tensor, metric: Metric,
                    layer: int | None = None, scale: float = 1.0) -> float:
    """``metric(steered logits) - metric(logits)``."""
    base = float(metric(logits(model, ids)))
    with steering(model, as_layer_vectors(vector, layer), scale):
        return float(metric(logits(model, ids))) - base


def steering_preserved(model_a: torch.nn.Module, vector_a: Any, model_b: torch.nn.Module, vector_b: Any,
                       ids: torch.Tensor, layer: int | None = None, metric: Metric | None = None,
                       scale: float = 1.0) -> float:
    """Effect of ``vector_b`` on B over the effect of ``vector_a`` on A: 1 = preserved, < 0 = reversed.

    With ``metric``: the ratio of the two metric changes. Without: the projection of B's logit
    change on A's, ``<dB, dA> / <dA, dA>`` (every token and position counts).
    """
    if metric is not None:
        ea = steering_effect(model_a, vector_a, ids, metric, layer, scale)
        if ea == 0:
            raise DataError("the original vector has no effect on the metric; the ratio is undefined")
        return steering_effect(model_b, vector_b, ids, metric, layer, scale) / ea
    da = logit_change(model_a, vector_a, ids, layer, scale).double()
    db = logit_change(model_b, vector_b, ids, layer, scale).double()
    denom = float((da * da).sum())
    if denom == 0:
        raise DataError("the original vector does not change A's logits; the ratio is undefined")
    return float((db * da).sum()) / denom


def sign_reversal(effect_a: float, effect_b: float, min_fraction: float = 0.1) -> bool:
    """True when B's effect points the other way with at least ``min_fraction`` of A's magnitude.

    (The paper's refusal example: under S_d transport, steering "towards" a behaviour pushes away.)
    """
    return effect_a * effect_b < 0 and abs(effect_b) >= min_fraction * abs(effect_a)


# ------------------------------------------------------------------------------------- SAEs
@torch.no_grad()
def site_activations(model: torch.nn.Module, site: str, ids: torch.Tensor) -> torch.Tensor:
    """Residual-stream activations ``[n_tokens, d]`` at a site (``embed``, ``resid_post.3``, ``final``, ...)."""
    from gaugeport.estimate.activations import hook_targets

    target = hook_targets(model, [site])[site]
    got: list[torch.Tensor] = []

    def grab_input(_mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        got.append((args[0] if args else kwargs["hidden_states"]).detach().float())

    def grab_output(_mod: Any, _inp: Any, out: Any) -> None:
        got.append((out[0] if isinstance(out, tuple) else out).detach().float())

    handle = (target.module.register_forward_pre_hook(grab_input, with_kwargs=True) if target.kind == "input"
              else target.module.register_forward_hook(grab_output))
    try:
        model(input_ids=torch.as_tensor(ids))
    finally:
        handle.remove()
    return got[0].reshape(-1, got[0].shape[-1])


@torch.no_grad()
def sae_reconstruct(sae: Any, acts: torch.Tensor) -> torch.Tensor:
    """Reconstruction by an SAELens SAE object, or by a plain ReLU SAE state dict (SAELens layout)."""
    if hasattr(sae, "encode") and hasattr(sae, "decode"):
        return sae.decode(sae.encode(acts.to(sae.W_dec.dtype))).float()
    if not isinstance(sae, Mapping) or not {"W_enc", "W_dec", "b_dec", "b_enc"} <= set(sae):
        raise ArtifactError("sae must be an SAELens SAE or a standard SAE state dict (W_enc, b_enc, W_dec, b_dec)",
                            hint="for other architectures load the SAE with sae_lens.SAE.load_from_disk")
    f = torch.relu((acts - sae["b_dec"]) @ sae["W_enc"] + sae["b_enc"])
    return (f @ sae["W_dec"] + sae["b_dec"]).float()


def sae_nmse(sae: Any, acts: torch.Tensor, target: torch.Tensor | None = None) -> float:
    """``sum |target - recon|^2 / sum |target - mean(target)|^2`` (1.0 = no better than the mean).

    ``target`` defaults to ``acts``; give it for transcoders (the activations at the output site).
    """
    acts = torch.as_tensor(acts).float()
    target = acts if target is None else torch.as_tensor(target).float()
    if acts.ndim != 2 or not torch.isfinite(acts).all():
        raise DataError("activations must be a finite [n, d] tensor")
    var = float((target - target.mean(0)).pow(2).sum())
    if var == 0:
        raise DataError("the target activations are constant; NMSE is undefined")
    return float((sae_reconstruct(sae, acts) - target).pow(2).sum()) / var


def sae_token_errors(sae: Any, acts: torch.Tensor) -> np.ndarray:
    """Per token: squared reconstruction error and squared distance to the mean (their sums' ratio is the NMSE)."""
    acts = acts.float()
    err = (sae_reconstruct(sae, acts) - acts).pow(2).sum(1)
    var = (acts - acts.mean(0)).pow(2).sum(1)
    return np.c_[err.double().numpy(), var.double().numpy()]


# ------------------------------------------------------------------------------------- merges
@torch.no_grad()
def lm_loss(model: torch.nn.Module, ids: torch.Tensor) -> float:
    """Mean next-token cross-entropy on ``ids`` ``[n_seq, seq_len]``."""
    ids = torch.as_tensor(ids)
    lg = logits(model, ids)[:, :-1]
    return float(torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), ids[:, 1:].reshape(-1)))


def merge_loss(merged: torch.nn.Module, model_a: torch.nn.Module, model_b: torch.nn.Module,
               ids: torch.Tensor) -> dict[str, float]:
    """Loss of the merge and of its endpoints; ``barrier`` = merged minus the endpoints' mean (0 = free)."""
    la, lb, lm = lm_loss(model_a, ids), lm_loss(model_b, ids), lm_loss(merged, ids)
    return {"a": la, "b": lb, "merged": lm, "barrier": lm - (la + lb) / 2}


@torch.no_grad()
def token_losses(model: torch.nn.Module, ids: torch.Tensor) -> np.ndarray:
    """Next-token cross-entropy of every predicted token (their mean is :func:`lm_loss`)."""
    lg = model(input_ids=ids).logits[:, :-1].float()
    ce = torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    return ce.double().cpu().numpy()
