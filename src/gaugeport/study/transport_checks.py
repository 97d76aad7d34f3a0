"""Measurements 4-7: artifacts made on one checkpoint, carried to another through an estimated
gauge with gaugeport's transport code, B_d (signed) against S_d (permutation only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaugeport.core.gauge import SignedPermutation
from gaugeport.estimate.align import align_models
from gaugeport.study import steer
from gaugeport.study.context import Context
from gaugeport.study.corpus import (
    COMPLY_WORD,
    NEGATIVE_WORDS,
    POSITIVE_WORDS,
    REFUSE_WORD,
    encode_batch,
    polarity_prompts,
    request_prompts,
    sample_documents,
    tokenizer,
)
from gaugeport.study.evaluate import (
    sae_nmse,
    sae_token_errors,
    site_activations,
    token_losses,
)
from gaugeport.study.models import corpus_batches, load_model, make_optimizer, train_step
from gaugeport.study.probes import log_odds, site_name, token_residuals
from gaugeport.study.sae import load_saelens
from gaugeport.study.stages import derived_seed
from gaugeport.study.stats import bootstrap, ratio_of_sums
from gaugeport.transport import merge_models, transport_sae_dir, transport_trainer_checkpoint

VARIANTS = {"signed": False, "perm_only": True}  # name -> perm_only flag of the transport functions


def estimated_gauge(ctx: Context, a: torch.nn.Module, b: torch.nn.Module) -> SignedPermutation:
    """The gauge a -> b by sign-marginalized matching; the S_d baseline drops its signs
    (permutation-only matching finds the same permutation with every sign +1)."""
    return align_models(a, b, ctx.batches(), method="signed", progress=False).gauge


def sae_transfer(ctx: Context, gauge: SignedPermutation) -> dict[str, float]:
    """4. NMSE of the base's SAE on the target's activations after transport."""
    site = site_name(ctx.cfg.site_layer)
    ids = ctx.eval_ids(32)
    target_acts = site_activations(ctx.model(ctx.transfer_target()), site, ids)
    out = {"native": sae_nmse(load_saelens(ctx.art.sae), site_activations(ctx.model(ctx.art.base), site, ids)),
           "untransported": sae_nmse(load_saelens(ctx.art.sae), target_acts)}
    saes = {"native": (ctx.art.sae, site_activations(ctx.model(ctx.art.base), site, ids)),
            "untransported": (ctx.art.sae, target_acts)}
    for key, perm_only in VARIANTS.items():
        moved = transport_sae_dir(ctx.art.sae, gauge, ctx.work / f"sae-{key}", perm_only=perm_only)
        out[key] = sae_nmse(load_saelens(moved), target_acts)
        saes[key] = (moved, target_acts)
    for key, (path, acts) in saes.items():
        ctx.keep(f"sae_nmse.{key}", bootstrap(sae_token_errors(load_saelens(path), acts), ratio_of_sums,
                                              what="tokens"))
    return out



def _directions(model: torch.nn.Module, pos: list[str], neg: list[str], last_only: bool
                ) -> dict[int, tuple[torch.Tensor, float]]:
    """Every layer's unit CAA direction and the mean residual norm of the tokens it was made from."""
    out = {}
    for layer in range(model.config.num_hidden_layers):
        a, b = token_residuals(model, pos, layer, last_only), token_residuals(model, neg, layer, last_only)
        v = a.mean(0) - b.mean(0)
        out[layer] = ((v / v.norm()).float(), float(torch.cat([a, b]).norm(dim=1).mean()))
    return out


def _probe(texts: list[str], up: list[int], down: list[int]) -> steer.Probe:
    ids, last = encode_batch(texts)
    rows, cols = torch.arange(len(texts)), torch.from_numpy(last)
    return steer.Probe(torch.from_numpy(ids), lambda lg: log_odds(lg[rows, cols], up, down))


def steering(ctx: Context, gauge: SignedPermutation) -> dict[str, Any]:
    """5. Polarity and refusal-like directions chosen on the base by the sweep and gate of
    :mod:`gaugeport.study.steer`; only a direction that passes is transported and given a ratio."""
    cfg, tok = ctx.cfg, tokenizer()
    n = cfg.steering_docs
    base, target = ctx.model(ctx.art.base), ctx.model(ctx.transfer_target())
    pos = [d.text for d in sample_documents(n, derived_seed(cfg.seed, 90), "review", polarity=1)]
    neg = [d.text for d in sample_documents(n, derived_seed(cfg.seed, 91), "review", polarity=-1)]
    probe = _probe(polarity_prompts(cfg.steering_prompts, derived_seed(cfg.seed, 92)),
                   [tok.token_id(w) for w in POSITIVE_WORDS], [tok.token_id(w) for w in NEGATIVE_WORDS])
    choice = steer.choose(base, probe, _directions(base, pos, neg, False), seed=derived_seed(cfg.seed, 330))
    out: dict[str, Any] = {"steering_sweep": steer.public(choice), "steering_preserved": None}
    if choice["passes"]:
        own = _directions(target, pos, neg, False)[choice["layer"]][0] * float(choice["vector"].norm())
        out["steering_preserved"] = steer.transported(ctx.keep, choice, target, probe, gauge, own, VARIANTS)

    bad = request_prompts(n, derived_seed(cfg.seed, 93), forbidden=True)
    good = request_prompts(n, derived_seed(cfg.seed, 94), forbidden=False)
    rprobe = _probe(good, [tok.token_id(REFUSE_WORD)], [tok.token_id(COMPLY_WORD)])
    rchoice = steer.choose(base, rprobe, _directions(base, bad, good, True), seed=derived_seed(cfg.seed, 331))
    out.update(refusal_sweep=steer.public(rchoice), refusal_cosine=None, refusal_effect=None, refusal_reverses=None)
    if not rchoice["passes"]:
        return out
    r, layer, ea = rchoice["vector"], rchoice["layer"], rchoice["effects"]
    r_native = _directions(target, bad, good, True)[layer][0]
    out.update(steer.refusal_under_transport(ctx.keep, target, rprobe, r, r_native, gauge, layer, ea))
    return out


@torch.no_grad()
def base_behaviour(ctx: Context) -> dict[str, float]:
    """Did the base learn the attributes the artifacts are about? Next-token log-odds gaps:
    positive vs negative words after a positive vs a negative review; "sorry" vs "sure" after a
    forbidden vs a benign request (0 = not learned)."""
    cfg, tok, base = ctx.cfg, tokenizer(), ctx.model(ctx.art.base)
    n = cfg.steering_prompts
    prompts = polarity_prompts(n, derived_seed(cfg.seed, 95))
    pos = [f"{d.text} {p}" for d, p in zip(sample_documents(n, derived_seed(cfg.seed, 96), "review", polarity=1),
                                          prompts, strict=True)]
    neg = [f"{d.text} {p}" for d, p in zip(sample_documents(n, derived_seed(cfg.seed, 97), "review", polarity=-1),
                                          prompts, strict=True)]
    up, down = [tok.token_id(w) for w in POSITIVE_WORDS], [tok.token_id(w) for w in NEGATIVE_WORDS]
    sorry, sure = [tok.token_id(REFUSE_WORD)], [tok.token_id(COMPLY_WORD)]

    def gap(a: list[str], b: list[str], hi: list[int], lo: list[int], name: str) -> float:
        paired = _probe(a, hi, lo).scores(base) - _probe(b, hi, lo).scores(base)
        return ctx.keep(f"base.{name}", bootstrap(paired, what="prompt pairs"))

    return {"polarity_gap": gap(pos, neg, up, down, "polarity_gap"),
            "refusal_gap": gap(request_prompts(n, derived_seed(cfg.seed, 98), forbidden=True),
                               request_prompts(n, derived_seed(cfg.seed, 99), forbidden=False), sorry, sure,
                               "refusal_gap")}


def merge(ctx: Context, chain_gauge: SignedPermutation) -> dict[str, float]:
    """6. Average run-1 and run-2 at ``merge_step``; ``chain_gauge`` maps run-1's coordinates to run-2's."""
    step = ctx.cfg.merge_step
    a = ctx.model(ctx.art.runs[0].checkpoint(step))
    b = ctx.model(ctx.art.runs[1].checkpoint(step))
    ids = ctx.eval_ids()
    models = {"model_a": a, "model_b": b,
              **{key: merge_models(a, b, chain_gauge, perm_only=po) for key, po in VARIANTS.items()},
              "none": merge_models(a, b, SignedPermutation.identity(ctx.d))}
    return {key: ctx.keep(f"merge_loss.{key}", bootstrap(token_losses(m, ids), what="tokens"))
            for key, m in models.items()}


RESUME_CURVE = (1, 2, 5, 10, 20)


def _resume(ckpt: Path, ctx: Context, ids: torch.Tensor, at: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """Continue training from a Trainer-style checkpoint; logits on ``ids`` after each step count in ``at``."""
    model = load_model(ckpt)
    opt, sched = make_optimizer(model, ctx.cfg.finetune)
    opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    sched.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    out = {}
    batches = corpus_batches(max(at), ctx.cfg.finetune.batch_size, ctx.cfg.model.seq_len,
                             derived_seed(ctx.cfg.seed, 100))
    for step, batch in enumerate(batches, start=1):
        train_step(model, opt, sched, batch)
        if step in at:
            model.eval()
            with torch.no_grad():
                out[step] = model(input_ids=ids).logits
    return out


def adamw(ctx: Context) -> tuple[dict[str, float], list[dict[str, float]]]:
    """7. Resume run 1 natively, and in its hidden gauge from the transported Trainer checkpoint.

    Divergence after k steps = |logits - reference logits| / |change of the reference logits|. At a
    large learning rate even float rounding differences grow chaotically after ~10 steps, so the
    headline is taken at ``adamw_resume_steps`` and the whole curve is returned beside it.
    """
    src = ctx.art.runs[0].adamw
    native = load_model(src)
    gauge = estimated_gauge(ctx, native, ctx.model(ctx.art.runs[0].checkpoint(ctx.cfg.adamw_step)))
    ids = ctx.probe_ids()
    at = tuple(sorted({*(k for k in RESUME_CURVE if k <= 4 * ctx.cfg.adamw_resume_steps), ctx.cfg.adamw_resume_steps}))
    with torch.no_grad():
        start = native(input_ids=ids).logits
    ref = _resume(src, ctx, ids, at)
    runs = {key: _resume(transport_trainer_checkpoint(src, gauge, ctx.work / f"adamw-{key}", perm_only=perm_only),
                         ctx, ids, at) for key, perm_only in VARIANTS.items()}
    curve = [{"steps": k, **{key: float((run[k] - ref[k]).norm() / (ref[k] - start).norm())
                             for key, run in runs.items()}} for k in at]
    headline = next(c for c in curve if c["steps"] == ctx.cfg.adamw_resume_steps)
    k = headline["steps"]
    for key, run in runs.items():  # per token: |resumed - native|^2 and |native change|^2, bootstrapped
        per_token = np.c_[(run[k] - ref[k]).pow(2).sum(-1).reshape(-1).double().numpy(),
                          (ref[k] - start).pow(2).sum(-1).reshape(-1).double().numpy()]
        ctx.keep(f"adamw.{key}", bootstrap(per_token, lambda x: float(np.sqrt(ratio_of_sums(x))), what="tokens"))
    return {"signed": headline["signed"], "perm_only": headline["perm_only"], "steps": headline["steps"],
            "reference_logit_change": float((ref[headline["steps"]] - start).norm())}, curve


__all__ = ["estimated_gauge", "merge", "sae_transfer", "steering"]
