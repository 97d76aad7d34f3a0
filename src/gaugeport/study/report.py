"""``report.md`` and the PNG plots: our measurements beside the paper's figures, with a sentence
per row saying, from the numbers, where ours agree and where they differ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gaugeport.study import steer
from gaugeport.study.paper import PAPER


def _magnitude(ours: float, paper: float, what: str, fmt=None) -> str:  # noqa: ANN001
    """A sentence comparing one figure with the paper's: close (within 25%), or higher / lower."""
    f = fmt or (lambda x: f"{x:.3g}")
    if abs(ours - paper) <= 0.25 * abs(paper):
        return f"our {what} figure ({f(ours)}) is close to the paper's ({f(paper)})"
    return f"our {what} figure ({f(ours)}) is {'higher' if ours > paper else 'lower'} than the paper's ({f(paper)})"


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def sci(x: float) -> str:
    return f"{x:.2e}"


def _iv(r: dict[str, Any], name: str) -> dict[str, Any] | None:
    return (r.get("intervals") or {}).get(name)


def _with(r: dict[str, Any], name: str, value: float, f: Any = None) -> str:
    """``value [lo, hi]`` from the run's interval for ``name`` (the plain value when the run has none)."""
    f = f or (lambda x: f"{x:.3g}")
    iv = _iv(r, name)
    return f(value) if iv is None else f"{f(iv['value'])} [{f(iv['lo'])}, {f(iv['hi'])}]"


def _apart(r: dict[str, Any], a: str, b: str) -> bool:
    """The two figures' intervals do not overlap (the difference is supported)."""
    x, y = _iv(r, a), _iv(r, b)
    return x is not None and y is not None and (x["hi"] < y["lo"] or y["hi"] < x["lo"])


def _gated(r: dict[str, Any], ratio: str, sweep: str) -> Any:
    """The ratio only when the run's sweep shows its source direction passed the gate (a run without a
    sweep, e.g. an older ``results.json``, has no working direction to show)."""
    return r.get(ratio) if (r.get(sweep) or {}).get("passes") else None


def _function_row(r: dict[str, Any]) -> list[str]:
    f = r["function_max_logit_diff"]
    scale = f["logit_scale"]
    ok = f["rmsnorm_signed"] < 1e-5 * scale and f["layernorm_perm_only"] < 1e-5 * scale
    broken = (_iv(r, "function.layernorm_signed") or {"lo": f["layernorm_signed"]})["lo"] > 1e-3 * scale
    verdict = ("Agrees, in every gauge drawn: the RMSNorm model is unchanged to float precision under a signed "
               "permutation, the LayerNorm control only under a permutation, and per-coordinate signs break it."
               if ok and broken else
               f"Differs: RMSNorm diff {sci(f['rmsnorm_signed'])}, LayerNorm signed {sci(f['layernorm_signed'])}, "
               f"LayerNorm permutation-only {sci(f['layernorm_perm_only'])} (logit scale {scale:.3g}).")
    n = (_iv(r, "function.rmsnorm_signed") or {"n": 1})["n"]
    return [f"1. max abs logit diff after a random gauge (worst of {n}; range)",
            f"RMSNorm {sci(f['rmsnorm_signed'])} ({_range(r, 'function.rmsnorm_signed')})",
            f"LayerNorm, permutation only {sci(f['layernorm_perm_only'])} "
            f"({_range(r, 'function.layernorm_perm_only')})",
            f"LayerNorm, per-coordinate signs {sci(f['layernorm_signed'])} ({_range(r, 'function.layernorm_signed')})",
            PAPER["function"], verdict]


def _range(r: dict[str, Any], name: str) -> str:
    iv = _iv(r, name)
    return f"{sci(iv['lo'])}..{sci(iv['hi'])}" if iv else "one gauge"


def _matching_row(r: dict[str, Any]) -> list[str]:
    m, curve = r["matching"], r["matching_ceiling"]
    excess = max(c["raw"] - c["positive_fraction"] for c in curve)
    bound = "never exceeds" if excess <= 0 else f"exceeds by at most {pct(excess)}"
    verdict = (f"Agrees: raw signed matching {bound} the positive-sign fraction over the {len(curve)} fractions "
               f"tried (see ceiling.png), while sign-marginalized matching recovers {pct(m['signed'])}."
               if excess <= 0.05 else
               f"Differs: raw matching exceeded the positive-sign fraction by {pct(excess)} at some fraction.")
    if excess <= 0.05 and not _apart(r, "matching.signed", "matching.raw"):
        verdict += " (The signed and raw ranges overlap here, so their order is not established.)"
    return ["2. matching accuracy (hidden gauges, 50% positive signs; mean [min, max])",
            _with(r, "matching.signed", m["signed"], pct), _with(r, "matching.perm_only", m["perm_only"], pct),
            f"raw {_with(r, 'matching.raw', m['raw'], pct)}", PAPER["matching"], verdict]


def _trajectory_row(r: dict[str, Any]) -> list[str]:
    t, p = r["trajectory"], PAPER["trajectory"]
    gain = t["composed"] - t["endpoint"]
    if gain >= 0.1 and (_apart(r, "trajectory.composed", "trajectory.endpoint") or not r.get("intervals")):
        via = ("so routing through the base does not explain the gain" if t["via_base"] < t["composed"] - 0.05
               else "but routing through the base recovers about as much")
        verdict = (f"Same direction as the paper: at step {t['step']} composing the {t['n_hops']} local gauges keeps "
                   f"{pct(t['composed'])} of coordinates against {pct(t['endpoint'])} by endpoint matching and "
                   f"{pct(t['via_base'])} via the base, {via}. "
                   f"Our run is shorter ({t['step']} vs {p['steps']} steps) and far smaller, so only the shape "
                   "compares, not the percentages. " + _drift_note(r))
    else:
        verdict = (f"Differs or not established: at step {t['step']} composition ({pct(t['composed'])}) does not beat "
                   "endpoint "
                   f"matching ({pct(t['endpoint'])}); the paper reports {pct(p['composed'])} vs {pct(p['endpoint'])}.")
    return [f"3. cross-run coordinate accuracy at step {t['step']} (95% CI over coordinates, one training draw)",
            f"composed {_with(r, 'trajectory.composed', t['composed'], pct)}", "",
            f"endpoint {_with(r, 'trajectory.endpoint', t['endpoint'], pct)}, via base "
            f"{_with(r, 'trajectory.via_base', t['via_base'], pct)}",
            f"{pct(p['composed'])} composed vs {pct(p['endpoint'])} endpoint at {p['steps']:,} steps", verdict]


def _drift_note(r: dict[str, Any]) -> str:
    loss, ft = r["training_loss"], r["config"]["finetune"]
    return (f"At this scale the drift comes from aggressive fine-tuning (lr {ft['lr']:g}): the runs end at "
            f"training loss {loss['run-1']:.2f} / {loss['run-2']:.2f} against the base's {loss['base']:.2f}, so "
            "this is a stress test of estimation rather than a fine-tune one would keep (when the sizes were "
            "calibrated, gentle fine-tuning left endpoint matching intact at this scale).")


def _sae_row(r: dict[str, Any]) -> list[str]:
    s, p = r["sae_nmse"], PAPER["sae_nmse"]
    if s["signed"] < s["perm_only"] and _apart(r, "sae_nmse.signed", "sae_nmse.perm_only"):
        verdict = (f"Same ordering as the paper (intervals apart); {_magnitude(s['signed'], p['signed'], 'B_d')} and "
                   f"{_magnitude(s['perm_only'], p['perm_only'], 'S_d')}. The SAE reconstructs its own model at "
                   f"{s['native']:.4f}; untransported on the target it scores {s['untransported']:.3f}.")
    else:
        verdict = (f"Differs or not established: signed {s['signed']:.3f} vs permutation-only {s['perm_only']:.3f} "
                   "(intervals overlap or the order is reversed).")
    return ["4. SAE reconstruction NMSE after transport", _with(r, "sae_nmse.signed", s["signed"], _f4),
            _with(r, "sae_nmse.perm_only", s["perm_only"], _f3),
            f"on its own model {_with(r, 'sae_nmse.native', s['native'], _f4)}; untransported "
            f"{_with(r, 'sae_nmse.untransported', s['untransported'], _f3)}",
            f"{p['signed']} vs {p['perm_only']} ({p['note']})", verdict]


def _steering_row(r: dict[str, Any]) -> list[str]:
    s, p = _gated(r, "steering_preserved", "steering_sweep"), PAPER["steering_preserved"]
    if s is None:
        return ["5a. polarity steering effect preserved", "no ratio", "no ratio",
                steer.verdict(r.get("steering_sweep")),
                f"{pct(p['signed'])} vs {pct(p['perm_only'])}",
                "Not measurable: the polarity direction does not pass the gate on the base at any layer (see the "
                "steering sweep), so a preserved ratio would divide by noise."]
    if s["signed"] > s["perm_only"] and _apart(r, "steering.signed", "steering.perm_only"):
        verdict = (f"Same ordering, intervals apart; {_magnitude(s['signed'], p['signed'], 'B_d', pct)} and "
                   f"{_magnitude(s['perm_only'], p['perm_only'], 'S_d', pct)}. For reference, the target's own "
                   f"direction gives {pct(s['native_target'])}; a ratio above 100% means the target responds more "
                   "strongly than the base to the same vector.")
    else:
        verdict = (f"Differs or not established: B_d preserved {pct(s['signed'])}, S_d {pct(s['perm_only'])} "
                   "(intervals overlap or the order is reversed).")
    return ["5a. polarity steering effect preserved (95% CI over prompts)",
            _with(r, "steering.signed", s["signed"], pct),
            _with(r, "steering.perm_only", s["perm_only"], pct),
            f"target's own direction {_with(r, 'steering.native_target', s['native_target'], pct)}; source "
            f"{steer.verdict(r.get('steering_sweep'))}", f"{pct(p['signed'])} vs {pct(p['perm_only'])}", verdict]


def _refusal_row(r: dict[str, Any]) -> list[str]:
    c, e = r.get("refusal_cosine"), _gated(r, "refusal_effect", "refusal_sweep")
    if e is None:
        return ["5b. refusal-like direction", "no ratio", "no ratio", steer.verdict(r.get("refusal_sweep")),
                PAPER["refusal"], "Not measurable: the refusal-like direction does not pass the gate on the base "
                "(see the refusal sweep), so no ratio is printed."]
    hi = (_iv(r, "refusal.perm_only") or {"hi": e["perm_only"]})["hi"]
    if r["refusal_reverses"]["perm_only"] and not r["refusal_reverses"]["signed"] and hi < 0:
        verdict = (f"Agrees: under S_d the refusal-like steering effect reverses, its whole interval below 0 (ratio "
                   f"{e['perm_only']:.2f}; cosine with the target's own direction {c['perm_only']:.2f}), under B_d "
                   f"it keeps {pct(e['signed'])} (cosine {c['signed']:.2f}).")
    else:
        verdict = (f"Differs in part: under S_d the direction is scrambled (cosine {c['perm_only']:.2f} vs "
                   f"{c['signed']:.2f} under B_d) but a reversal of the steering effect is not supported by its "
                   f"interval (ratio {_with(r, 'refusal.perm_only', e['perm_only'], _f2)}); with a random gauge the "
                   "wrong-signed direction is near-orthogonal rather than opposite.")
    return ["5b. refusal-like direction: cosine with target's own / effect ratio (95% CI over requests)",
            f"{c['signed']:.2f} / {_with(r, 'refusal.signed', e['signed'], _f2)}",
            f"{c['perm_only']:.2f} / {_with(r, 'refusal.perm_only', e['perm_only'], _f2)}",
            f"source {steer.verdict(r.get('refusal_sweep'))}", PAPER["refusal"], verdict]


def _f2(x: float) -> str:
    return f"{x:.2f}"


def _f3(x: float) -> str:
    return f"{x:.3f}"


def _f4(x: float) -> str:
    return f"{x:.4f}"


def _merge_row(r: dict[str, Any]) -> list[str]:
    m = r["merge_loss"]
    worst_parent = max(m["model_a"], m["model_b"])
    agrees = (m["signed"] < m["perm_only"] and m["signed"] < m["none"]
              and _apart(r, "merge_loss.signed", "merge_loss.perm_only")
              and _apart(r, "merge_loss.signed", "merge_loss.none"))
    verdict = (f"Agrees, intervals apart: the coordinate-preserving merge scores {m['signed']:.3f} nats/token (parents "
               f"{m['model_a']:.3f}, {m['model_b']:.3f}); permutation-only {m['perm_only']:.3f}, no alignment "
               f"{m['none']:.3f}." if agrees else
               f"Differs: signed merge {m['signed']:.3f} vs permutation-only {m['perm_only']:.3f}, none "
               f"{m['none']:.3f} (parents up to {worst_parent:.3f}).")
    return ["6. merge loss (nats/token; 95% CI over tokens)", _with(r, "merge_loss.signed", m["signed"], _f3),
            _with(r, "merge_loss.perm_only", m["perm_only"], _f3),
            f"no alignment {_with(r, 'merge_loss.none', m['none'], _f3)}; parents "
            f"{_with(r, 'merge_loss.model_a', m['model_a'], _f3)} / "
            f"{_with(r, 'merge_loss.model_b', m['model_b'], _f3)}",
            PAPER["merge"], verdict]


def _adamw_row(r: dict[str, Any]) -> list[str]:
    a, last = r["adamw_divergence"], r["adamw_divergence_curve"][-1]
    hi = (_iv(r, "adamw.signed") or {"hi": a["signed"]})["hi"]
    lo = (_iv(r, "adamw.perm_only") or {"lo": a["perm_only"]})["lo"]
    agrees = hi < 0.01 and lo > 10 * max(hi, 1e-6)
    verdict = (f"Agrees: after {a['steps']} resumed steps the signed-transported run stays on the reference "
               f"trajectory (divergence {sci(a['signed'])}), the permutation-only one leaves it "
               f"({a['perm_only']:.2f})." if agrees else
               f"Differs: divergence {sci(a['signed'])} (B_d) vs {a['perm_only']:.3f} (S_d) after {a['steps']} steps.")
    if last["steps"] > a["steps"]:
        verdict += (f" Resumed for {last['steps']} steps at this learning rate, float rounding itself grows "
                    f"(B_d {sci(last['signed'])}, S_d {last['perm_only']:.2f}).")
    return [f"7. AdamW resumed-trajectory divergence ({a['steps']} steps; 95% CI over tokens)",
            _with(r, "adamw.signed", a["signed"], sci), _with(r, "adamw.perm_only", a["perm_only"], _f3),
            "", PAPER["adamw"], verdict]


def _audit_row(r: dict[str, Any]) -> list[str]:
    a = r["audit"]
    n_bare = sum(1 for c in a["claims"] if c["stated"] == "bare indices")
    n_framed = a["n_claims"] - n_bare
    agrees = a["bare_index_bound"] == n_bare and a["framed_covariant"] == n_framed
    verdict = (f"Agrees: all {n_bare} bare-index claims are index-bound and all {n_framed} claims stated relative "
               "to an explicit gauge survive the sweep (including the gauge estimated to a hidden-gauge copy)."
               if agrees else
               f"Differs in part: {a['bare_index_bound']}/{n_bare} bare claims index-bound, "
               f"{a['framed_covariant']}/{n_framed} framed claims survive: "
               + "; ".join(f"{c['name']}: {c['note']}" for c in a["claims"]
                           if (c["verdict"] == "gauge-covariant") == (c["stated"] == "bare indices")) + ".")
    return ["8. audit verdicts", f"{a['framed_covariant']}/{n_framed} framed claims survive",
            f"{a['bare_index_bound']}/{n_bare} bare claims index-bound", "", PAPER["audit"], verdict]


def _independent_merge_row(r: dict[str, Any]) -> list[str]:
    m = r.get("independent_merge")
    if not m:
        return ["9. merge of independent runs", "", "", "not measured", "", ""]
    best = min(m["none"], m["residual"], m["full"])
    verdict = (f"Full-network alignment {m['full']:.3f} nats/token vs residual-only {m['residual']:.3f} and none "
               f"{m['none']:.3f} (parents {m['model_a']:.3f} / {m['model_b']:.3f}); "
               + ("full alignment merges best" if m["full"] == best else "full alignment does not merge best here")
               + ("; the intervals of the best two overlap, so the order is not established." if _close_best(r, m)
                  else "."))
    def c(k: str) -> str:
        return _with(r, f"independent_merge.{k}", m[k], _f3)

    return ["9. merge of independent runs (nats/token; 95% CI over tokens)", f"full {c('full')}", "",
            f"residual only {c('residual')}; no alignment {c('none')}; parents {c('model_a')} / {c('model_b')}",
            "(not in the paper)", verdict]


def _close_best(r: dict[str, Any], m: dict[str, Any]) -> bool:
    a, b = sorted(("none", "residual", "full"), key=lambda k: m[k])[:2]
    return bool(r.get("intervals")) and not _apart(r, f"independent_merge.{a}", f"independent_merge.{b}")


ROWS = (_function_row, _matching_row, _trajectory_row, _sae_row, _steering_row, _refusal_row, _merge_row,
        _adamw_row, _audit_row, _independent_merge_row)


def markdown(r: dict[str, Any]) -> str:
    cfg, t, b = r["config"], r["timings"], r["base_behaviour"]
    m = cfg["model"]
    lines = [
        "# gaugeport reproduction study", "",
        f"Preset `{cfg['preset']}`, seed {cfg['seed']}: Llama-style (RMSNorm) base and GPT-2-style (LayerNorm) "
        f"control, d_model={m['d_model']}, {m['n_layers']} layers, trained on the built-in corpus; two fine-tuning "
        f"runs of {cfg['finetune']['steps']} steps (lr {cfg['finetune']['lr']:g}, warm-up "
        f"{cfg['finetune']['warmup']}), {len(cfg['checkpoint_steps'])} checkpoints each, every checkpoint saved "
        "in its own hidden random gauge. Artifacts (SAE, steering directions, audit claims) are made on the base "
        f"and carried to run-1's checkpoint at step {cfg['transfer_step']} through the gauge *estimated* by "
        "sign-marginalized matching (B_d), or through the same permutation with every sign +1 (S_d, what "
        "permutation-only matching gives).", "",
        f"The base learned what the artifacts are about: next-token log-odds gap "
        f"{_with(r, 'base.polarity_gap', b['polarity_gap'], _f2)} nats "
        f"(positive vs negative words, after a positive vs a negative review) and "
        f"{_with(r, 'base.refusal_gap', b['refusal_gap'], _f2)} nats "
        "(\"sorry\" vs \"sure\", after a forbidden vs a benign request); 0 would mean not learned. The transfer "
        f"gauge recovered {pct(r['transfer_gauge']['accuracy'])} of the hidden gauge.", "",
        f"Total time {t['total']:.0f} s (training {t.get('training', 0):.0f} s; cache reused for: "
        f"{', '.join(r['cache']['hits']) or 'nothing'}).", "",
        "| measurement | ours, B_d (signed) | ours, S_d (perm-only) | ours, other | paper | ours vs paper |",
        "|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        lines.append("| " + " | ".join(row(r)) + " |")
    lines += ["", "Intervals: `value [lo, hi]` is a 95% percentile bootstrap over prompts, tokens or coordinates "
              "(named in each row); for gauge draws, the mean and [min, max] over the draws. The last column states a "
              "difference only where the intervals are apart.", "",
              "## Steering sweep (on the base, before anything is transported)", "",
              "Rule fixed in `gaugeport.study.steer`: CAA mean differences at every layer; the layer with the largest "
              "effect per unit strength; the strength at the top of the linear regime; the gate (intended sign, "
              f">= {steer.MIN_EFFECT:g} nat, >= {steer.MIN_RATIO:g}x the largest of {steer.N_RANDOM} random "
              "directions of the same norm). No ratio is printed over a direction that fails it.", ""]
    lines += steer.sweep_markdown(r.get("steering_sweep"), "Polarity (positive minus negative reviews)")
    lines += steer.sweep_markdown(r.get("refusal_sweep"), "Refusal-like (forbidden minus benign requests)")
    lines += ["", "## Definitions", "",
              "- matching accuracy: fraction of coordinates whose permutation *and* sign are right.",
              "- cross-run accuracy: the gauge between run-1 and run-2 at the same step (both in hidden gauges) "
              "against the truth `G2 G1^-1`; *composed* chains run-1's local gauges down to the base and run-2's "
              "up; *via base* composes the two endpoint-to-base estimates.",
              "- SAE NMSE: `sum |x - SAE(x)|^2 / sum |x - mean x|^2` on the target's activations.",
              "- steering preserved: effect of the transported vector on the target / effect of the original on "
              "the base; effect = change of the next-token log-odds of positive vs negative words.",
              "- refusal: cosine of the transported direction with the target's own (difference of means), and "
              "the transported vector's effect on \"sorry\" vs \"sure\" relative to the original's.",
              "- merge loss: next-token loss of the average of run-1 and run-2 (B brought into A's gauge first).",
              "- merge of independent runs: the base and a second base trained from another seed and data order, "
              "averaged as stored (none), after aligning the residual stream (signed matching on activations), and "
              "after full-network alignment (residual, then MLP units on activation correlations, heads on weights).",
              "- AdamW divergence: after resuming, `|logits - reference| / |reference logit change|`, where the "
              "reference resumes run-1 in its own coordinates.",
              "- audit: a claim survives a gauge when its effect size there is at least 80% of the reference.",
              "", "## Plots", "", "![ceiling](ceiling.png)", "", "![trajectory](trajectory.png)", "",
              "![transport](transport.png)", "", "## Audit", "",
              "Claims in `claims.json`; full verdicts and per-gauge evidence in `audit/audit.md`.", "",
              "| claim | stated | verdict | evidence |", "|---|---|---|---|"]
    lines += [f"| {c['name']} | {c['stated']} | {c['verdict']} | {c['note']} |" for c in r["audit"]["claims"]]
    lines += ["", "## Timings (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in t.items()]
    lines += ["", "All figures are measured by this run (`results.json`); the paper column quotes the paper's "
              "abstract (arXiv 2606.31963).", ""]
    return "\n".join(lines)


def plots(r: dict[str, Any], out: Path) -> list[Path]:
    from gaugeport.core.errors import require

    matplotlib: Any = require("matplotlib", "study", "the study's plots")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    curve = r["matching_ceiling"]
    fig, ax = plt.subplots(figsize=(5, 4))
    xs = [c["positive_fraction"] for c in curve]
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="ceiling: positive fraction")
    for key, style in (("signed", "o-"), ("raw", "s-"), ("perm_only", "^-")):
        ax.plot(xs, [c[key] for c in curve], style, label=key.replace("_", "-"))
    ax.set(xlabel="fraction of positive signs in the hidden gauge", ylabel="matching accuracy (perm + sign)",
           title="Ceiling theorem of raw signed matching", ylim=(-0.03, 1.03))
    ax.legend()
    paths.append(_save(fig, out / "ceiling.png"))

    traj = r["trajectory_curve"]
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [c["step"] for c in traj]
    for key, style in (("composed", "o-"), ("endpoint", "s-"), ("via_base", "^-")):
        ax.plot(steps, [c[key] for c in traj], style, label=key.replace("_", " "), markersize=4)
    ax.set(xscale="log", xlabel="fine-tuning step", ylabel="cross-run coordinate accuracy",
           title="Composing local gauges vs endpoint matching", ylim=(-0.03, 1.03))
    ax.legend()
    paths.append(_save(fig, out / "trajectory.png"))

    panels = (("SAE NMSE", r["sae_nmse"]), ("steering preserved", r.get("steering_preserved")),
              ("refusal cosine", r.get("refusal_cosine")), ("merge loss", r["merge_loss"]),
              ("AdamW divergence", r["adamw_divergence"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2))
    for ax, (title, vals) in zip(axes, panels, strict=True):
        if vals is None:  # no working source direction: nothing to compare
            ax.text(0.5, 0.5, "no working\nsource direction", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(title, fontsize=10)
            continue
        ax.bar(["B_d", "S_d"], [vals["signed"], vals["perm_only"]], color=["tab:blue", "tab:orange"])
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_title(title, fontsize=10)
    fig.suptitle("Transport through the estimated gauge: signed (B_d) vs permutation-only (S_d)")
    paths.append(_save(fig, out / "transport.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
