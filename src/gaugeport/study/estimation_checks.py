"""Measurements 1-3: the gauge group, matching accuracy (and its ceiling), trajectories."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from gaugeport.core.apply import transform_tensor
from gaugeport.core.archspec import spec_for_config
from gaugeport.core.gauge import SignedPermutation, compose
from gaugeport.estimate.activations import collect_moments
from gaugeport.estimate.align import align_from_moments
from gaugeport.estimate.trajectory import Hop, estimate_hop
from gaugeport.study.context import Context
from gaugeport.study.models import in_gauge
from gaugeport.study.stages import derived_seed

METHODS = {"signed": "signed", "raw": "raw", "perm_only": "perm-only"}


@torch.no_grad()
def max_logit_diff(a: torch.nn.Module, b: torch.nn.Module, ids: torch.Tensor) -> float:
    return float((a(input_ids=ids).logits - b(input_ids=ids).logits).abs().max())


@torch.no_grad()
def forced_gauge(model: torch.nn.Module, gauge: SignedPermutation) -> torch.nn.Module:
    """A copy rewritten by ``gauge`` even outside the model's group (how LayerNorm breaks)."""
    out = copy.deepcopy(model)
    spec = spec_for_config(model.config)
    sd = model.state_dict()
    rules = spec.classify_all(list(sd))
    out.load_state_dict({n: transform_tensor(n, t, rules[n], gauge) for n, t in sd.items()})
    return out


def function_preservation(ctx: Context) -> dict[str, float]:
    """1. Same function under random signed permutations (``gauge_draws`` of them; the figure is the
    worst): RMSNorm yes, LayerNorm no."""
    from gaugeport.study.stats import spread

    ids = ctx.probe_ids()
    base, control = ctx.model(ctx.art.base), ctx.model(ctx.art.control)
    with torch.no_grad():
        scale = float(base(input_ids=ids).logits.abs().max())
    draws: dict[str, list[float]] = {"rmsnorm_signed": [], "layernorm_signed": [], "layernorm_perm_only": []}
    for k in range(ctx.cfg.gauge_draws):
        g = SignedPermutation.random(ctx.d, seed=derived_seed(ctx.cfg.seed, 70, k))
        draws["rmsnorm_signed"].append(max_logit_diff(base, in_gauge(base, g), ids))
        draws["layernorm_signed"].append(max_logit_diff(control, forced_gauge(control, g), ids))
        draws["layernorm_perm_only"].append(max_logit_diff(control, in_gauge(control, g.perm_only()), ids))
    out = {key: max(v) for key, v in draws.items()}
    for key, v in draws.items():
        ctx.keep(f"function.{key}", spread(v, "random gauges"))
    return {**out, "logit_scale": scale}


def _accuracies(ctx: Context, target: torch.nn.Module, truth: SignedPermutation) -> dict[str, float]:
    """Accuracy of each matching method, all three from one collection of moments."""
    moments = collect_moments(ctx.model(ctx.art.base), target, ctx.batches(), progress=False)
    return {key: align_from_moments(moments, m).gauge.accuracy(truth)["full"] for key, m in METHODS.items()}


def matching(ctx: Context) -> tuple[dict[str, float], list[dict[str, float]]]:
    """2. Accuracy of each method on the base vs hidden-gauge copies (mean and range over
    ``gauge_draws``), and raw accuracy vs the
    positive-sign fraction of the hidden gauge (the ceiling theorem)."""
    base = ctx.model(ctx.art.base)
    curve = []
    main: dict[str, float] = {}
    for k, frac in enumerate(tqdm(ctx.cfg.ceiling_fractions, desc="matching", disable=not ctx.progress,
                                  leave=False)):
        truth = SignedPermutation.random(ctx.d, seed=derived_seed(ctx.cfg.seed, 80, k), positive_fraction=frac)
        acc = _accuracies(ctx, in_gauge(base, truth), truth)
        curve.append({"positive_fraction": truth.positive_fraction, **acc})
    from gaugeport.study.stats import spread

    draws = []
    for k in range(ctx.cfg.gauge_draws):
        truth = SignedPermutation.random(ctx.d, seed=derived_seed(ctx.cfg.seed, 81, k))
        draws.append(_accuracies(ctx, in_gauge(base, truth), truth))
    main = {key: ctx.keep(f"matching.{key}", spread([x[key] for x in draws], "hidden gauges")) for key in METHODS}
    return main, curve


def curve_steps(steps: tuple[int, ...], n: int) -> set[int]:
    """About ``n`` of ``steps``, spread evenly on a log scale, always with the last."""
    idx = np.unique(np.round(np.geomspace(1, len(steps), n)).astype(int) - 1)
    return {steps[i] for i in idx} | {steps[-1]}


def trajectory(ctx: Context) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """3. Cross-run coordinate accuracy between the two runs at each saved step: endpoint
    matching, routing through the base, and composing the whole chain of local gauges."""
    steps = ctx.cfg.checkpoint_steps
    run1, run2 = ctx.art.runs
    base = ctx.model(ctx.art.base)
    m1 = {s: ctx.model(run1.checkpoint(s)) for s in steps}
    m2 = {s: ctx.model(run2.checkpoint(s)) for s in steps}
    batches = ctx.batches()
    chain_steps = (0, *steps)
    n1 = {0: "base", **{s: f"run-1@{s}" for s in steps}}
    n2 = {0: "base", **{s: f"run-2@{s}" for s in steps}}
    mod1, mod2 = {0: base, **m1}, {0: base, **m2}
    shown = curve_steps(steps, ctx.cfg.curve_points)
    bar = tqdm(total=2 * len(steps) + 3 * len(shown), desc="trajectory", unit="match", disable=not ctx.progress,
               leave=False)

    def hop(a: torch.nn.Module, b: torch.nn.Module, na: str, nb: str) -> Hop:
        bar.update()
        return estimate_hop(a, b, batches, source=na, target=nb)

    pairs = list(zip(chain_steps, chain_steps[1:], strict=False))
    down = {s: hop(mod1[s], mod1[p], n1[s], n1[p]) for p, s in pairs}  # run-1, towards the base
    up = {s: hop(mod2[p], mod2[s], n2[p], n2[s]) for p, s in pairs}  # from the base, out along run-2
    curve = []
    for i, s in enumerate(steps):
        if s not in shown:
            continue
        truth = run2.truth(s) @ run1.truth(s).inverse()
        chain = [down[t] for t in reversed(steps[: i + 1])] + [up[t] for t in steps[: i + 1]]
        composed = compose(*(h.gauge for h in chain))
        endpoint = hop(m1[s], m2[s], n1[s], n2[s]).gauge
        via = hop(m1[s], base, n1[s], "base").gauge.then(hop(base, m2[s], "base", n2[s]).gauge)
        curve.append({"step": s, "composed": composed.accuracy(truth)["full"],
                      "endpoint": endpoint.accuracy(truth)["full"], "via_base": via.accuracy(truth)["full"],
                      "weakest_hop_confidence": min(h.mean_confidence for h in chain)})
    bar.close()
    full = [down[t] for t in reversed(steps)] + [up[t] for t in steps]
    weakest = min(full, key=lambda h: h.mean_confidence)
    from gaugeport.study.stats import bootstrap

    s = steps[-1]
    truth = run2.truth(s) @ run1.truth(s).inverse()
    chain = [down[t] for t in reversed(steps)] + [up[t] for t in steps]
    final = {"composed": compose(*(h.gauge for h in chain)),
             "endpoint": estimate_hop(m1[s], m2[s], batches).gauge,
             "via_base": estimate_hop(m1[s], base, batches).gauge.then(estimate_hop(base, m2[s], batches).gauge)}
    for key, g in final.items():
        right = (g.perm == truth.perm) & (g.signs == truth.signs)
        ctx.keep(f"trajectory.{key}", bootstrap(right.astype(float), what="coordinates (one training draw)"))
    last = curve[-1]
    summary = {"composed": last["composed"], "endpoint": last["endpoint"], "via_base": last["via_base"],
               "step": last["step"], "n_hops": len(full),
               "weakest_hop": f"{weakest.source} -> {weakest.target}",
               "weakest_hop_confidence": weakest.mean_confidence,
               "mean_hop_confidence": float(np.mean([h.mean_confidence for h in full]))}
    return summary, curve
