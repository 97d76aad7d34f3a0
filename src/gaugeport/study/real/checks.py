"""The 8 measurements of ``reproduce --preset real``, with the same result keys as the toy presets.

Every gauge that carries an artifact is *estimated* from activations on real text (never read from
the hidden truth, which only scores). B_d = the estimated signed permutation; S_d = the same
permutation with every sign +1 (what permutation-only matching yields).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaugeport.core.gauge import SignedPermutation, load_gauge
from gaugeport.estimate.align import align_from_moments
from gaugeport.estimate.data import Batch
from gaugeport.study import steer, text
from gaugeport.study.config import StudyConfig
from gaugeport.study.evaluate import (
    sae_token_errors,
    site_activations,
    token_losses,
)
from gaugeport.study.models import in_gauge, make_optimizer
from gaugeport.study.probes import log_odds, site_name
from gaugeport.study.real.stages import (
    Acts,
    RealArtifacts,
    RealConfig,
    activations,
    batches,
    derived,
    load,
    match,
    moments,
)
from gaugeport.study.sae import load_saelens
from gaugeport.study.stats import Interval, bootstrap, ratio_of_sums, spread
from gaugeport.study.steer import Probe

METHODS = {"signed": "signed", "raw": "raw", "perm_only": "perm-only"}
VARIANTS = {"signed": False, "perm_only": True}


@dataclass
class RealContext:
    cfg: StudyConfig
    rc: RealConfig
    art: RealArtifacts
    work: Path
    progress: bool = True
    _models: dict[Path, torch.nn.Module] = field(default_factory=dict)
    _acts: dict[str, Acts] = field(default_factory=dict)
    intervals: dict[str, dict[str, Any]] = field(default_factory=dict)  # figure -> Interval.to_dict()

    def keep(self, name: str, iv: Interval | dict[str, Any]) -> float:
        """Record ``name``'s interval; returns its value (what the row prints beside it)."""
        d = iv.to_dict() if isinstance(iv, Interval) else iv
        self.intervals[name] = d
        return float(d["value"])

    @property
    def seed(self) -> int:
        return self.cfg.seed

    @property
    def tok(self) -> Any:
        return self.art.src.tokenizer

    def model(self, path: Path) -> torch.nn.Module:
        if path not in self._models:
            self._models[path] = load(path, self.rc.device)
        return self._models[path]

    @property
    def base(self) -> torch.nn.Module:
        return self.model(self.art.src.lm)

    @property
    def target_path(self) -> Path:
        """Gentle run-1's final checkpoint, in its hidden gauge: where base artifacts are carried."""
        return self.art.gentle / "run-1"

    @property
    def target(self) -> torch.nn.Module:
        return self.model(self.target_path)

    def rows(self, split: text.Split, n: int, salt: int) -> torch.Tensor:
        return text.token_rows(self.tok.encode, split, n, self.rc.seq_len, derived(self.seed, salt)).to(self.rc.device)

    def probe(self) -> list:
        return batches(self.rows("probe", self.rc.probe_rows, 300), self.rc.forward_batch)

    def acts(self, key: str, model: torch.nn.Module) -> Acts:
        """Probe activations, kept for the run (the base's are used by several measurements)."""
        if key not in self._acts:
            self._acts[key] = activations(model, self.probe())
        return self._acts[key]

    def estimate(self, a: torch.nn.Module, b: torch.nn.Module, key_a: str, key_b: str) -> SignedPermutation:
        return match(self.acts(key_a, a), self.acts(key_b, b)).gauge


# ------------------------------------------------------------------------------------- text helpers
def pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and each row's last real position (causal models never look right)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r))
    return ids, torch.tensor([len(r) - 1 for r in rows])


def residuals(ctx: RealContext, model: torch.nn.Module, rows: Sequence[Sequence[int]], layer: int,
              last_only: bool) -> torch.Tensor:
    ids, last = pad(rows, ctx.tok.pad_id)
    h = site_activations(model, site_name(layer), ids.to(ctx.rc.device)).reshape(*ids.shape, -1)
    if last_only:
        return h[torch.arange(len(rows)), last.to(h.device)]
    keep = torch.zeros(ids.shape, dtype=torch.bool)
    for i, r in enumerate(rows):
        keep[i, 1: len(r)] = True  # real tokens, position 0 (attention sink) left out
    return h[keep.to(h.device)]


def mean_difference(ctx: RealContext, model: torch.nn.Module, pos: Sequence[Sequence[int]],
                    neg: Sequence[Sequence[int]], layer: int, last_only: bool) -> torch.Tensor:
    return residuals(ctx, model, pos, layer, last_only).mean(0) - residuals(ctx, model, neg, layer, last_only).mean(0)


def next_token_metric(ctx: RealContext, rows: Sequence[Sequence[int]], up: Sequence[int], down: Sequence[int]):  # noqa: ANN201
    ids, last = pad(rows, ctx.tok.pad_id)
    r = torch.arange(len(rows))
    return ids.to(ctx.rc.device), lambda lg: log_odds(lg[r, last.to(lg.device)].cpu(), up, down).mean()


def sentiment_data(ctx: RealContext) -> dict[str, Any]:
    enc = ctx.tok.encode
    return {"pos": [enc(s) for s in text.POSITIVE], "neg": [enc(s) for s in text.NEGATIVE],
            "prompts": [enc(s) for s in text.STEERING_PROMPTS],
            "up": text.token_ids(enc, text.POSITIVE_WORDS), "down": text.token_ids(enc, text.NEGATIVE_WORDS)}


def refusal_data(ctx: RealContext) -> dict[str, Any]:
    enc = ctx.tok.encode
    return {"harmful": [ctx.tok.chat(s) for s in text.HARMFUL], "harmless": [ctx.tok.chat(s) for s in text.HARMLESS],
            "up": text.token_ids(enc, text.REFUSAL_STARTS), "down": text.token_ids(enc, text.COMPLY_STARTS)}


# ------------------------------------------------------------------------------------- 0 + 1
@torch.no_grad()
def base_behaviour(ctx: RealContext) -> dict[str, float]:
    """Does the pretrained model carry what the artifacts are about? Next-token log-odds gaps:
    positive vs negative words after a positive vs a negative sentence; refusal vs compliance openings
    after a harmful vs a harmless request (0 = no sensitivity). Paired by prompt, bootstrapped over pairs."""
    s, r, base = sentiment_data(ctx), refusal_data(ctx), ctx.base
    enc = ctx.tok.encode

    def scores(rows: list[list[int]], up: list[int], down: list[int]) -> np.ndarray:
        return probe_of(ctx, rows, up, down).scores(base)

    pos = [enc(a + " " + p) for a, p in zip(text.POSITIVE, text.STEERING_PROMPTS, strict=True)]
    neg = [enc(a + " " + p) for a, p in zip(text.NEGATIVE, text.STEERING_PROMPTS, strict=True)]
    polarity = scores(pos, s["up"], s["down"]) - scores(neg, s["up"], s["down"])
    refusal = scores(r["harmful"], r["up"], r["down"]) - scores(r["harmless"], r["up"], r["down"])
    return {"polarity_gap": ctx.keep("base.polarity_gap", bootstrap(polarity, what="prompt pairs")),
            "refusal_gap": ctx.keep("base.refusal_gap", bootstrap(refusal, what="request pairs"))}


@torch.no_grad()
def function_preservation(ctx: RealContext) -> dict[str, float]:
    """1. The real LM under random signed gauges; the real LayerNorm BERT under their permutations
    only and under the signed gauges forced on it (final hidden states mapped back and compared).
    ``gauge_draws`` gauges each; the row's figure is the worst (largest) difference."""
    from gaugeport.study.estimation_checks import forced_gauge

    ids = ctx.rows("probe", 2, 301)
    base = ctx.base
    ref = base(input_ids=ids).logits
    control = load(ctx.art.src.control, ctx.rc.device)
    cids = _control_ids(ctx, control)

    def hidden(m: torch.nn.Module) -> torch.Tensor:
        o = m(input_ids=cids, output_hidden_states=True)  # a base model or a task head (BertForMaskedLM)
        return o.last_hidden_state if getattr(o, "last_hidden_state", None) is not None else o.hidden_states[-1]

    h = hidden(control)
    draws: dict[str, list[float]] = {"rmsnorm_signed": [], "layernorm_signed": [], "layernorm_perm_only": []}
    for k in range(ctx.rc.gauge_draws):
        g = SignedPermutation.random(base.config.hidden_size, seed=derived(ctx.seed, 70, k))
        draws["rmsnorm_signed"].append(float((ref - in_gauge(base, g)(input_ids=ids).logits).abs().max()))
        gc = SignedPermutation.random(control.config.hidden_size, seed=derived(ctx.seed, 71, k))
        for key, model, gauge in (("layernorm_signed", forced_gauge(control, gc), gc),
                                  ("layernorm_perm_only", in_gauge(control, gc.perm_only()), gc.perm_only())):
            back = torch.as_tensor(gauge.inverse().apply(hidden(model).cpu())).to(h)
            draws[key].append(float((back - h).abs().max()))
    out = {key: max(v) for key, v in draws.items()}
    for key, v in draws.items():
        ctx.keep(f"function.{key}", spread(v, "random gauges"))
    out["logit_scale"] = float(ref.abs().max())
    out["control_scale"] = float(h.abs().max())
    return out


def _control_ids(ctx: RealContext, control: torch.nn.Module) -> torch.Tensor:
    if ctx.rc.stand_in:
        g = torch.Generator().manual_seed(derived(ctx.seed, 72))
        return torch.randint(5, control.config.vocab_size, (2, 32), generator=g).to(ctx.rc.device)
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(ctx.art.src.control))
    paras = text.split("probe")[:2]
    enc = tok(paras, padding="max_length", truncation=True, max_length=128, return_tensors="pt")
    return enc["input_ids"].to(ctx.rc.device)


# ------------------------------------------------------------------------------------- 2
def matching(ctx: RealContext) -> tuple[dict[str, float], list[dict[str, float]]]:
    """2. Each method on the base vs hidden-gauge copies (``gauge_draws`` of them; the row gives the mean
    and the range), on the probe tokens of real text; the ceiling sweep varies the hidden gauge's
    fraction of positive signs."""
    from tqdm.auto import tqdm

    base = ctx.base
    d = base.config.hidden_size
    a = ctx.acts("base", base)

    def accs(truth: SignedPermutation) -> dict[str, float]:
        ms = moments(a, activations(in_gauge(base, truth), ctx.probe()))
        return {k: align_from_moments(ms, m).gauge.accuracy(truth)["full"] for k, m in METHODS.items()}

    curve = []
    for k, frac in enumerate(tqdm(ctx.rc.ceiling_fractions, desc="matching", disable=not ctx.progress, leave=False)):
        truth = SignedPermutation.random(d, seed=derived(ctx.seed, 80, k), positive_fraction=frac)
        curve.append({"positive_fraction": truth.positive_fraction, **accs(truth)})
    draws = [accs(SignedPermutation.random(d, seed=derived(ctx.seed, 81, k))) for k in range(ctx.rc.gauge_draws)]
    head = {k: ctx.keep(f"matching.{k}", spread([x[k] for x in draws], "hidden gauges")) for k in METHODS}
    return head, curve


# ------------------------------------------------------------------------------------- 3
def trajectory(ctx: RealContext) -> dict[str, Any]:
    """3. Both regimes, read from the lockstep training stages; the headline is the regime listed
    first (the aggressive one), the gentle one sits beside it."""
    import json

    regimes = {}
    for name, path in ctx.art.trajectories.items():
        rec = json.loads((path / "trajectory.json").read_text())
        last = rec["curve"][-1]
        regimes[name] = {"composed": last["composed"], "endpoint": last["endpoint"], "via_base": last["via_base"],
                         "step": last["step"], "n_hops": rec["n_hops"], "lr": rec["regime"]["lr"],
                         "warmup": rec["regime"]["warmup"],
                         "weakest_hop": "min over both runs", "weakest_hop_confidence": last["weakest_hop_confidence"],
                         "mean_hop_confidence": float(np.mean([c for r in rec["hop_confidence"] for c in r])),
                         "final_train_loss": [last["loss_run_1"], last["loss_run_2"]],
                         "eval_loss": rec["eval_loss"], "curve": rec["curve"],
                         "seeds": [_seed_summary(s, p) for s, p in ctx.art.replicates.get(name, {}).items()]}
    for name, reg in regimes.items():
        for key in ("composed", "endpoint", "via_base"):
            ctx.keep(f"trajectory.{name}.{key}", spread([x[key] for x in reg["seeds"]], "seeds"))
    head = regimes[next(iter(regimes))]
    return {"trajectory": {k: v for k, v in head.items() if k != "curve"},
            "trajectory_curve": head["curve"], "trajectory_regimes": regimes}


def _seed_summary(seed: int, path: Any) -> dict[str, Any]:
    """One seed's pair of runs: the last checkpoint's three accuracies and the held-out losses."""
    import json

    rec = json.loads((path / "trajectory.json").read_text())
    last = rec["curve"][-1]
    return {"seed": seed, "composed": last["composed"], "endpoint": last["endpoint"], "via_base": last["via_base"],
            "eval_loss": rec["eval_loss"]}


# ------------------------------------------------------------------------------------- 4-5
def transfer_gauge(ctx: RealContext) -> SignedPermutation:
    return ctx.estimate(ctx.base, ctx.target, "base", "target")


def _eval_site_acts(ctx: RealContext, model: torch.nn.Module, layer: int) -> torch.Tensor:
    site = site_name(layer)
    return activations(model, batches(ctx.rows("eval", ctx.rc.eval_rows, 302), ctx.rc.forward_batch), [site])[site]


def sae_transfer(ctx: RealContext, gauge: SignedPermutation) -> dict[str, float]:
    """4. The base's SAE (SAELens format) on gentle run-1's activations (hidden gauge), held-out text;
    NMSE bootstrapped over the held-out tokens."""
    from gaugeport.transport import transport_sae_dir

    layer = ctx.rc.sae_layer
    sae = load_saelens(ctx.art.sae)
    target_acts = _eval_site_acts(ctx, ctx.target, layer).cpu()
    saes = {"native": (sae, _eval_site_acts(ctx, ctx.base, layer).cpu()), "untransported": (sae, target_acts)}
    for key, perm_only in VARIANTS.items():
        moved = transport_sae_dir(ctx.art.sae, gauge, ctx.work / f"sae-{key}", perm_only=perm_only)
        saes[key] = (load_saelens(moved), target_acts)
    return {key: ctx.keep(f"sae_nmse.{key}", bootstrap(sae_token_errors(w, acts), ratio_of_sums, what="tokens"))
            for key, (w, acts) in saes.items()}



def probe_of(ctx: RealContext, rows: Sequence[Sequence[int]], up: Sequence[int], down: Sequence[int]) -> Probe:
    """Prompts (right-padded) and their per-prompt next-token log-odds of ``up`` against ``down``."""
    ids, last = pad(rows, ctx.tok.pad_id)
    r = torch.arange(len(rows))
    return Probe(ids.to(ctx.rc.device), lambda lg: log_odds(lg[r, last.to(lg.device)].cpu(), up, down))


@torch.no_grad()
def layer_directions(ctx: RealContext, model: torch.nn.Module, pos: Sequence[Sequence[int]],
                     neg: Sequence[Sequence[int]], layers: Sequence[int], last_only: bool
                     ) -> dict[int, tuple[torch.Tensor, float]]:
    """At every layer: the unit CAA direction (mean of ``pos`` minus mean of ``neg``) and the mean residual
    norm of the tokens it was made from (one forward per batch for all layers)."""
    sites = [site_name(layer) for layer in layers]

    def acts(rows: Sequence[Sequence[int]]) -> Acts:
        ids, last = pad(rows, ctx.tok.pad_id)
        keep = torch.zeros(ids.shape, dtype=torch.bool)
        for i, r in enumerate(rows):
            if last_only:
                keep[i, len(r) - 1] = True
            else:
                keep[i, 1: len(r)] = True  # position 0 (attention sink) left out
        fb = ctx.rc.forward_batch * 4
        return activations(model, [Batch(ids[j: j + fb].to(ctx.rc.device), torch.ones_like(ids[j: j + fb]).to(
            ctx.rc.device), keep[j: j + fb].to(ctx.rc.device)) for j in range(0, len(rows), fb)], sites)

    a, b = acts(pos), acts(neg)
    out = {}
    for layer, site in zip(layers, sites, strict=True):
        v = a[site].mean(0) - b[site].mean(0)
        rho = float(torch.cat([a[site], b[site]]).norm(dim=1).mean())
        out[int(layer)] = ((v / v.norm()).float(), rho)
    return out


def steering(ctx: RealContext, gauge: SignedPermutation) -> dict[str, Any]:
    """5. Sentiment direction (400 contrastive pairs: 16 handwritten, 384 generated from handwritten
    templates) and refusal direction (handwritten requests in the chat template), each chosen on the base
    by the sweep and gate of :mod:`gaugeport.study.steer`; only a direction that passes is carried to
    gentle run-1 in its hidden gauge, and only then is a preserved ratio reported."""

    base, target = ctx.base, ctx.target
    layers = [x for x in ctx.rc.steering_layers if x < base.config.num_hidden_layers]
    pairs = text.sentiment_pairs()
    enc = ctx.tok.encode
    s = sentiment_data(ctx)
    probe = probe_of(ctx, [enc(p) for p in (*text.STEERING_PROMPTS, *text.MORE_STEERING_PROMPTS)], s["up"], s["down"])
    dirs = layer_directions(ctx, base, [enc(a) for a, _ in pairs], [enc(b) for _, b in pairs], layers, False)
    choice = steer.choose(base, probe, dirs, seed=derived(ctx.seed, 330))
    out: dict[str, Any] = {"steering_sweep": steer.public(choice)}
    if choice["passes"]:
        own = dirs_on(ctx, target, pairs, choice["layer"]) * float(choice["vector"].norm())
        out["steering_preserved"] = steer.transported(ctx.keep, choice, target, probe, gauge, own, VARIANTS)
    else:
        out["steering_preserved"] = None
    out["steering_pairs"] = (f"{len(pairs)} pairs: {len(text.POSITIVE)} handwritten, {len(pairs) - len(text.POSITIVE)} "
                             "generated from handwritten templates and word lists (`gaugeport.study.text`); "
                             f"{len(probe.ids)} handwritten steering prompts")

    r = refusal_data(ctx)
    out["refusal_model_gap"] = ctx.intervals.get("base.refusal_gap")
    rprobe = probe_of(ctx, r["harmless"], r["up"], r["down"])
    rdirs = layer_directions(ctx, base, r["harmful"], r["harmless"], layers, last_only=True)
    rchoice = steer.choose(base, rprobe, rdirs, seed=derived(ctx.seed, 331))
    out["refusal_sweep"] = steer.public(rchoice)
    if not rchoice["passes"]:
        out.update(refusal_cosine=None, refusal_effect=None, refusal_reverses=None)
        return out
    d, layer, ea = rchoice["vector"], rchoice["layer"], rchoice["effects"]
    d_native = layer_directions(ctx, target, r["harmful"], r["harmless"], [layer], last_only=True)[layer][0]
    out.update(steer.refusal_under_transport(ctx.keep, target, rprobe, d, d_native, gauge, layer, ea))
    return out


def dirs_on(ctx: RealContext, model: torch.nn.Module, pairs: Sequence[tuple[str, str]], layer: int) -> torch.Tensor:
    """The unit sentiment direction of ``model`` at ``layer`` (the fine-tune's own)."""
    enc = ctx.tok.encode
    return layer_directions(ctx, model, [enc(a) for a, _ in pairs], [enc(b) for _, b in pairs], [layer],
                            last_only=False)[layer][0]


# ------------------------------------------------------------------------------------- 6-7
def merge(ctx: RealContext) -> dict[str, float]:
    """6. Average the two gentle fine-tunes (each in its hidden gauge) through the composed chain; losses
    bootstrapped over the held-out tokens."""
    from gaugeport.transport import merge_models

    g = load_gauge(ctx.art.gentle / "run-1-to-run-2.safetensors")
    a, b = ctx.target, ctx.model(ctx.art.gentle / "run-2")
    ids = ctx.rows("eval", ctx.rc.eval_rows, 303)
    models = {"model_a": a, "model_b": b, "base": ctx.base}
    for key, perm_only in VARIANTS.items():
        models[key] = merge_models(a, b, g, perm_only=perm_only)
    models["none"] = merge_models(a, b, SignedPermutation.identity(g.d))
    out = {key: ctx.keep(f"merge_loss.{key}", bootstrap(token_losses(m, ids), what="tokens"))
           for key, m in models.items()}
    truth = load_gauge(ctx.art.gentle / "run-2-truth.safetensors") @ \
        load_gauge(ctx.art.gentle / "run-1-truth.safetensors").inverse()
    out["gauge_accuracy"] = g.accuracy(truth)["full"]
    return out


def _resume(ctx: RealContext, ckpt: Path, ids: torch.Tensor, at: tuple[int, ...]) -> dict[int, torch.Tensor]:
    from gaugeport.study.config import TrainConfig
    from gaugeport.study.real.stages import lm_step, train_rows

    reg = ctx.rc.gentle
    model = load(ckpt, ctx.rc.device)
    opt, sched = make_optimizer(model, TrainConfig(steps=reg.steps, batch_size=0, lr=reg.lr, warmup=reg.warmup))
    opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location=ctx.rc.device))
    sched.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    data = train_rows(ctx.tok, ctx.rc, max(at), derived(ctx.seed, 310)).to(ctx.rc.device).split(ctx.rc.train_batch)
    out = {}
    for step, batch in enumerate(data, start=1):
        lm_step(model, opt, sched, batch)
        if step in at:
            with torch.no_grad():
                out[step] = model(input_ids=ids).logits.float()
    return out


def adamw(ctx: RealContext) -> tuple[dict[str, float], list[dict[str, float]]]:
    """7. Resume gentle run-1 from its Trainer checkpoint natively, and from the checkpoint transported
    (weights + AdamW moments) into a hidden gauge through the gauge estimated to a copy saved there."""
    from gaugeport.transport import transport_trainer_checkpoint

    src = ctx.art.gentle / "adamw"
    native = load(src, ctx.rc.device)
    hidden = in_gauge(native, SignedPermutation.random(native.config.hidden_size, seed=derived(ctx.seed, 320)))
    gauge = match(activations(native, ctx.probe()), activations(hidden, ctx.probe())).gauge
    del hidden
    ids = ctx.rows("eval", 2, 304)
    k = ctx.rc.adamw_resume_steps
    at = tuple(sorted({1, k}))
    with torch.no_grad():
        start = native(input_ids=ids).logits.float()
    ref = _resume(ctx, src, ids, at)
    runs = {key: _resume(ctx, transport_trainer_checkpoint(src, gauge, ctx.work / f"adamw-{key}", perm_only=po),
                         ids, at) for key, po in VARIANTS.items()}
    curve = [{"steps": s, **{key: float((run[s] - ref[s]).norm() / (ref[s] - start).norm())
                             for key, run in runs.items()}} for s in at]
    head = curve[-1]
    for key, run in runs.items():  # per token: |resumed - native|^2 and |native change|^2, bootstrapped
        per_token = np.c_[(run[k] - ref[k]).pow(2).sum(-1).reshape(-1).double().cpu().numpy(),
                          (ref[k] - start).pow(2).sum(-1).reshape(-1).double().cpu().numpy()]
        ctx.keep(f"adamw.{key}", bootstrap(per_token, lambda x: float(np.sqrt(ratio_of_sums(x))), what="tokens"))
    return {"signed": head["signed"], "perm_only": head["perm_only"], "steps": head["steps"],
            "reference_logit_change": float((ref[k] - start).norm())}, curve


# ------------------------------------------------------------------------------------- 8
def audit(ctx: RealContext, out: Path) -> dict[str, Any]:
    """8. Index-level claims about the real model's residual stream (sentiment: every token of the
    handwritten sentences; refusal: the last token of each request), audited over random gauges and
    the gauge estimated to a hidden-gauge copy of the model."""
    from gaugeport.study.audit_check import audit_with_claims

    base, layer = ctx.base, ctx.rc.audit_layer
    hidden = in_gauge(base, SignedPermutation.random(base.config.hidden_size, seed=derived(ctx.seed, 121)))
    s, r = sentiment_data(ctx), refusal_data(ctx)

    def evidence(m: torch.nn.Module) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        ev = {}
        for key, (a, b, last) in {"polarity": (s["pos"], s["neg"], False),
                                  "refusal": (r["harmful"], r["harmless"], True)}.items():
            xa, xb = residuals(ctx, m, a, layer, last), residuals(ctx, m, b, layer, last)
            ev[key] = (torch.cat([xa, xb]).double().cpu().numpy(),
                       np.r_[np.ones(len(xa)), np.zeros(len(xb))].astype(bool))
        return ev

    base_ev, hidden_ev = evidence(base), evidence(hidden)
    estimated = ctx.estimate(base, hidden, "base", "audit-hidden")
    return audit_with_claims(base_ev, hidden_ev, site_name(layer), base.config.hidden_size,
                             ctx.rc.audit_random_gauges, derived(ctx.seed, 120) % 10_000, estimated, out)
