"""Measurements 4-7: artifacts made on one checkpoint, carried to another through an estimated
gauge with gaugeport's transport code, B_d (signed) against S_d (permutation only)."""

from __future__ import annotations

from pathlib import Path

import torch

from gaugeport.core.gauge import SignedPermutation
from gaugeport.estimate.align import align_models
from gaugeport.study.context import Context
from gaugeport.study.corpus import (
    COMPLY_WORD,
    NEGATIVE_WORDS,
    POSITIVE_WORDS,
    REFUSE_WORD,
    polarity_prompts,
    request_prompts,
    sample_documents,
    tokenizer,
)
from gaugeport.study.evaluate import (
    lm_loss,
    sae_nmse,
    sign_reversal,
    site_activations,
    steering_effect,
    steering_preserved,
)
from gaugeport.study.models import corpus_batches, load_model, make_optimizer, train_step
from gaugeport.study.probes import mean_difference, next_token_log_odds, site_name
from gaugeport.study.sae import load_saelens
from gaugeport.study.stages import derived_seed
from gaugeport.transport import merge_models, transport_sae_dir, transport_trainer_checkpoint, transport_vector

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
    for key, perm_only in VARIANTS.items():
        moved = transport_sae_dir(ctx.art.sae, gauge, ctx.work / f"sae-{key}", perm_only=perm_only)
        out[key] = sae_nmse(load_saelens(moved), target_acts)
    return out


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def steering(ctx: Context, gauge: SignedPermutation) -> dict[str, dict[str, float]]:
    """5. Polarity steering effect preserved after transport; the refusal-like direction's fate."""
    cfg, tok = ctx.cfg, tokenizer()
    layer, n = cfg.site_layer, cfg.steering_docs
    base, target = ctx.model(ctx.art.base), ctx.model(ctx.transfer_target())
    pos = [d.text for d in sample_documents(n, derived_seed(cfg.seed, 90), "review", polarity=1)]
    neg = [d.text for d in sample_documents(n, derived_seed(cfg.seed, 91), "review", polarity=-1)]
    ids, metric = next_token_log_odds(polarity_prompts(cfg.steering_prompts, derived_seed(cfg.seed, 92)),
                                      [tok.token_id(w) for w in POSITIVE_WORDS],
                                      [tok.token_id(w) for w in NEGATIVE_WORDS])
    v = mean_difference(base, layer, pos, neg)
    preserved = {"source_effect": steering_effect(base, v, ids, metric, layer)}
    for key, perm_only in VARIANTS.items():
        moved = transport_vector(v, gauge, perm_only=perm_only)
        preserved[key] = steering_preserved(base, v, target, moved, ids, layer, metric)
    preserved["native_target"] = steering_preserved(base, v, target, mean_difference(target, layer, pos, neg),
                                                    ids, layer, metric)

    bad = request_prompts(n, derived_seed(cfg.seed, 93), forbidden=True)
    good = request_prompts(n, derived_seed(cfg.seed, 94), forbidden=False)
    r = mean_difference(base, layer, bad, good, last_only=True)
    r_native = mean_difference(target, layer, bad, good, last_only=True)
    ids, metric = next_token_log_odds(good, [tok.token_id(REFUSE_WORD)], [tok.token_id(COMPLY_WORD)])
    source = steering_effect(base, r, ids, metric, layer)
    cosine: dict[str, float] = {}
    effect: dict[str, float] = {"source_effect": source}
    reverses: dict[str, float] = {}
    for key, perm_only in VARIANTS.items():
        moved = transport_vector(r, gauge, perm_only=perm_only)
        cosine[key] = _cosine(moved, r_native)
        effect[key] = steering_effect(target, moved, ids, metric, layer) / source
        reverses[key] = float(sign_reversal(source, effect[key] * source))
    return {"steering_preserved": preserved, "refusal_cosine": cosine, "refusal_effect": effect,
            "refusal_reverses": reverses}


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

    def gap(a: list[str], b: list[str], hi: list[int], lo: list[int]) -> float:
        (ia, ma), (ib, mb) = next_token_log_odds(a, hi, lo), next_token_log_odds(b, hi, lo)
        return float(ma(base(input_ids=ia).logits) - mb(base(input_ids=ib).logits))

    return {"polarity_gap": gap(pos, neg, up, down),
            "refusal_gap": gap(request_prompts(n, derived_seed(cfg.seed, 98), forbidden=True),
                               request_prompts(n, derived_seed(cfg.seed, 99), forbidden=False), sorry, sure)}


def merge(ctx: Context, chain_gauge: SignedPermutation) -> dict[str, float]:
    """6. Average run-1 and run-2 at ``merge_step``; ``chain_gauge`` maps run-1's coordinates to run-2's."""
    step = ctx.cfg.merge_step
    a = ctx.model(ctx.art.runs[0].checkpoint(step))
    b = ctx.model(ctx.art.runs[1].checkpoint(step))
    ids = ctx.eval_ids()
    out = {"model_a": lm_loss(a, ids), "model_b": lm_loss(b, ids)}
    for key, perm_only in VARIANTS.items():
        out[key] = lm_loss(merge_models(a, b, chain_gauge, perm_only=perm_only), ids)
    out["none"] = lm_loss(merge_models(a, b, SignedPermutation.identity(ctx.d)), ids)
    return out


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
    return {"signed": headline["signed"], "perm_only": headline["perm_only"], "steps": headline["steps"],
            "reference_logit_change": float((ref[headline["steps"]] - start).norm())}, curve


__all__ = ["estimated_gauge", "merge", "sae_transfer", "steering"]
