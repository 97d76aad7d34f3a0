"""A steering direction that works on the source model, shown before anything is transported.

The rule, fixed here and used by the toy and the real presets alike:

1. **Direction**: at each candidate layer, the contrastive mean difference (CAA style) of the two
   classes' residuals, as a unit vector ``u_L``; its strength is counted in units of the layer's mean
   residual norm ``rho_L``, so the added vector is ``alpha * rho_L * u_L``.
2. **Layer**: the one with the largest effect per unit strength at the smallest strength of the
   ladder :data:`LADDER` (where every layer is still linear), in the intended direction.
3. **Strength**: up the doubling ladder from the smallest strength while each doubling multiplies the
   effect by a factor in :data:`LINEAR` (the linear regime); the last such strength is used.
4. **Gate** (:func:`gate`): at that layer and strength the effect must have the intended sign (its
   bootstrap interval over prompts excludes 0 on that side), be at least ``min_effect`` nats, and be at
   least :data:`MIN_RATIO` times the largest absolute effect of :data:`N_RANDOM` random directions of
   the same norm. If it fails, the next layer by (2) is tried; when no layer passes, the direction does
   not steer this model, and no transport ratio is computed over it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gaugeport.study.evaluate import sign_reversal, steering
from gaugeport.study.stats import bootstrap, ratio_of_means

LADDER = (0.0625, 0.125, 0.25, 0.5, 1.0, 2.0)  # strengths, in units of the layer's mean residual norm
LINEAR = (1.5, 2.5)  # a doubling of the strength multiplies a linear effect by ~2
N_RANDOM = 20
MIN_RATIO = 3.0
MIN_EFFECT = 1.0  # nats of next-token log-odds


@dataclass(frozen=True)
class Probe:
    """Prompts to steer and a per-prompt metric on their logits (``[n_prompts]``)."""

    ids: torch.Tensor
    rows: Callable[[torch.Tensor], torch.Tensor]

    @torch.no_grad()
    def scores(self, model: torch.nn.Module, vector: torch.Tensor | None = None, layer: int = 0,
               scale: float = 1.0) -> np.ndarray:
        if vector is None:
            return self.rows(model(input_ids=self.ids).logits).double().cpu().numpy()
        with steering(model, {layer: vector}, scale):
            return self.rows(model(input_ids=self.ids).logits).double().cpu().numpy()


def per_prompt_effect(model: torch.nn.Module, probe: Probe, vector: torch.Tensor, layer: int,
                      base: np.ndarray | None = None) -> np.ndarray:
    """Steered minus unsteered metric, one value per prompt."""
    base = probe.scores(model) if base is None else base
    return probe.scores(model, vector, layer) - base


def random_effects(model: torch.nn.Module, probe: Probe, norm: float, layer: int, n: int = N_RANDOM,
                   seed: int = 0, base: np.ndarray | None = None) -> list[float]:
    """Mean effects of ``n`` random Gaussian directions scaled to ``norm`` (the control)."""
    base = probe.scores(model) if base is None else base
    d = _width(model)
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        z = torch.randn(d, generator=g, dtype=torch.float64)
        out.append(float(per_prompt_effect(model, probe, (z / z.norm() * norm).float(), layer, base).mean()))
    return out


def gate(effects: np.ndarray, random: Sequence[float], *, sign: int = 1, min_effect: float = MIN_EFFECT,
         min_ratio: float = MIN_RATIO, seed: int = 0) -> dict[str, Any]:
    """Does a direction steer? ``effects``: its per-prompt effects; ``random``: the controls' mean effects."""
    iv = bootstrap(effects, seed=seed, what="prompts")
    signed = sign * iv.value
    worst = max(abs(r) for r in random) if len(random) else float("nan")
    ratio = abs(iv.value) / worst if worst > 0 else float("inf")
    checks = {"intended_sign": bool(min(sign * iv.lo, sign * iv.hi) > 0),  # the interval excludes 0 that side
              "at_least_min_effect": bool(signed >= min_effect),
              "beats_random": bool(signed > 0 and ratio >= min_ratio)}
    return {"effect": iv.to_dict(), "random_max_abs": worst, "random": [float(r) for r in random],
            "ratio_to_random": ratio, "min_effect": min_effect, "min_ratio": min_ratio, "sign": sign,
            "checks": checks, "passes": all(checks.values())}


def linear_top(effects: Sequence[float], linear: tuple[float, float] = LINEAR) -> int:
    """Index of the last strength of the doubling ladder reached through linear doublings only."""
    k = 0
    while k + 1 < len(effects):
        prev, nxt = effects[k], effects[k + 1]
        if prev == 0 or not linear[0] <= nxt / prev <= linear[1]:
            break
        k += 1
    return k


def choose(model: torch.nn.Module, probe: Probe, directions: dict[int, tuple[torch.Tensor, float]], *,
           sign: int = 1, min_effect: float = MIN_EFFECT, n_random: int = N_RANDOM, seed: int = 0,
           ladder: Sequence[float] = LADDER) -> dict[str, Any]:
    """The sweep and the gate (module docstring). ``directions``: layer -> (unit direction, residual norm)."""
    base = probe.scores(model)
    table = []
    for layer, (u, rho) in directions.items():
        effs = [float(per_prompt_effect(model, probe, u * (a * rho), layer, base).mean()) for a in ladder]
        top = linear_top([sign * e for e in effs])
        table.append({"layer": int(layer), "residual_norm": float(rho), "effects": effs,
                      "slope": sign * effs[0] / ladder[0], "linear_top": ladder[top]})
    tried = []
    for row in sorted(table, key=lambda r: -r["slope"]):
        if row["slope"] <= 0:
            break
        layer = row["layer"]
        u, rho = directions[layer]
        vec = u * (row["linear_top"] * rho)
        effects = per_prompt_effect(model, probe, vec, layer, base)
        rnd = random_effects(model, probe, float(vec.norm()), layer, n_random, seed + layer, base)
        g = gate(effects, rnd, sign=sign, min_effect=min_effect, seed=seed)
        tried.append({"layer": layer, "strength": row["linear_top"], "norm": float(vec.norm()), **g})
        if g["passes"]:
            return {"ladder": list(ladder), "sweep": table, "tried": tried, "passes": True, "layer": layer,
                    "strength": row["linear_top"], "vector": vec, "effects": effects}
    return {"ladder": list(ladder), "sweep": table, "tried": tried, "passes": False}


def preserved(base_effects: np.ndarray, target_effects: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Effect on the target over the effect on the source, bootstrapped over prompts (pairs kept)."""
    return bootstrap(np.c_[base_effects, target_effects], ratio_of_means, seed=seed, what="prompts").to_dict()


def transported(keep: Callable[[str, Any], Any], choice: dict[str, Any], target: torch.nn.Module, probe: Probe,
                gauge: Any, own: torch.Tensor, variants: dict[str, bool]) -> dict[str, Any]:
    """Row 5a for a direction that passed the gate: its effect on the target once transported through
    ``gauge`` (one entry per ``variants`` name -> perm_only flag), and the target's own direction ``own``
    (scaled to the vector's norm), each over the source's effect; every figure is kept with its interval."""
    from gaugeport.transport import transport_vector

    v, layer, ea = choice["vector"], choice["layer"], choice["effects"]
    keep("steering.source_effect", bootstrap(ea, what="prompts"))
    out: dict[str, Any] = {"source_effect": float(ea.mean())}
    for key, perm_only in variants.items():
        eb = per_prompt_effect(target, probe, transport_vector(v, gauge, perm_only=perm_only), layer)
        out[key] = keep(f"steering.{key}", preserved(ea, eb))
    out["native_target"] = keep("steering.native_target", preserved(ea, per_prompt_effect(target, probe, own, layer)))
    return out


def public(choice: dict[str, Any]) -> dict[str, Any]:
    """The sweep record for ``results.json`` (no tensors)."""
    return {k: v for k, v in choice.items() if k not in ("vector", "effects")}


def _width(model: torch.nn.Module) -> int:
    return int(model.config.hidden_size)


def sweep_markdown(rec: dict[str, Any] | None, title: str) -> list[str]:
    """The sweep and the gate's tries as markdown (for both reports)."""
    if not rec:
        return []
    ladder = rec["ladder"]
    lines = [f"### {title}", "",
             "Effect (nats of next-token log-odds, mean over prompts) of the unit CAA direction at each strength "
             "(in units of the layer's mean residual norm); *linear up to*: the last strength reached by doublings "
             f"that multiplied the effect by {LINEAR[0]:g}..{LINEAR[1]:g}.", "",
             "| layer | residual norm | " + " | ".join(f"x{a:g}" for a in ladder) + " | linear up to |",
             "|---|---|" + "---|" * len(ladder) + "---|"]
    for row in rec["sweep"]:
        lines.append(f"| {row['layer']} | {row['residual_norm']:.1f} | "
                     + " | ".join(f"{e:+.2f}" for e in row["effects"]) + f" | x{row['linear_top']:g} |")
    lines += ["", "Gate, layers tried in order of effect per unit strength (95% bootstrap interval over prompts; "
              f"{N_RANDOM} random directions of the same norm):", "",
              "| layer | strength | vector norm | effect [95% CI] | largest random | ratio | sign | >= min | "
              ">= 3x random | passes |", "|---|---|---|---|---|---|---|---|---|---|"]
    for t in rec["tried"]:
        e, c = t["effect"], t["checks"]
        lines.append(f"| {t['layer']} | x{t['strength']:g} | {t['norm']:.1f} | {e['value']:+.2f} [{e['lo']:+.2f}, "
                     f"{e['hi']:+.2f}] | {t['random_max_abs']:.2f} | {t['ratio_to_random']:.1f} | "
                     f"{_yes(c['intended_sign'])} | {_yes(c['at_least_min_effect'])} | {_yes(c['beats_random'])} | "
                     f"**{_yes(t['passes'])}** |")
    if not rec["tried"]:
        lines.append("| (no layer moves the metric in the intended direction) | | | | | | | | | |")
    lines.append("")
    return lines


def verdict(rec: dict[str, Any] | None) -> str:
    """One phrase: where the direction works, or why no layer does."""
    if not rec:
        return "not measured"
    if rec["passes"]:
        t = rec["tried"][-1]
        e = t["effect"]
        return (f"works at layer {t['layer']}, strength x{t['strength']:g}: {e['value']:+.2f} nats "
                f"[{e['lo']:+.2f}, {e['hi']:+.2f}], {t['ratio_to_random']:.1f}x the largest of {N_RANDOM} random "
                "directions")
    if not rec["tried"]:
        return "no layer moves the metric in the intended direction"
    best = max(rec["tried"], key=lambda t: t["effect"]["value"] * t["sign"])
    e = best["effect"]
    return (f"no layer passes the gate (best: layer {best['layer']}, {e['value']:+.2f} nats [{e['lo']:+.2f}, "
            f"{e['hi']:+.2f}], {best['ratio_to_random']:.1f}x the largest random direction; needs >= "
            f"{best['min_effect']:g} nats and >= {best['min_ratio']:g}x)")


def _yes(ok: bool) -> str:
    return "yes" if ok else "no"


def refusal_under_transport(keep: Callable[[str, Any], Any], model: torch.nn.Module, probe: Probe,
                            direction: torch.Tensor, native: torch.Tensor, gauge: Any, layer: int,
                            source_effects: np.ndarray) -> dict[str, Any]:
    """Rows 5b of the toy and real studies: the source's refusal direction carried through ``gauge`` signed
    and permutation-only; per variant its cosine with the target's own direction, its effect on the target
    relative to the source's (``preserved``, kept with its interval by ``keep``) and whether it reverses."""
    from gaugeport.transport import transport_vector

    keep("refusal.source_effect", bootstrap(source_effects, what="requests"))
    cosine: dict[str, float] = {}
    effect: dict[str, Any] = {"source_effect": float(source_effects.mean())}
    reverses: dict[str, float] = {}
    for key, perm_only in {"signed": False, "perm_only": True}.items():
        moved = transport_vector(direction, gauge, perm_only=perm_only)
        cosine[key] = float(torch.nn.functional.cosine_similarity(moved.double().cpu(), native.double().cpu(), dim=0))
        effect[key] = keep(f"refusal.{key}", preserved(source_effects, per_prompt_effect(model, probe, moved, layer)))
        reverses[key] = float(sign_reversal(1.0, effect[key]))
    return {"refusal_cosine": cosine, "refusal_effect": effect, "refusal_reverses": reverses}
