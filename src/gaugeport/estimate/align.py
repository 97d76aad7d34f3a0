"""Estimate the gauge between two checkpoints: from activation moments, or from weights alone.

One gauge serves the whole residual stream, so every chosen site votes: the assignment maximizes
the mean over sites of ``|C_site|`` (``C_site`` for ``raw``), and signs come from the mean of
``C_site`` at the matched entries. Each site's *agreement* (the fraction of A's coordinates whose
best match at that site alone is the consensus column with the consensus sign) shows which sites
carry the evidence and which disagree.

On LayerNorm models the gauge group has one global sign, not one per coordinate; ``signed``
estimates are projected onto it (the sign that best fits the matched entries).

``align_by_weights`` needs no data: the token embedding (a writer, ``vocab x d``) and an untied
``lm_head`` (a reader) transform exactly like the stream, so their columns over a shared vocabulary
correlate one-to-one through the gauge; norm gains (permuted, never signed) add an unsigned
fingerprint. Evidence sources are combined as Fisher z-scores, ``atanh(r) sqrt(n - 3)``, so each
counts by how many rows support it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaugeport.core.errors import ArchitectureError, DataError
from gaugeport.core.gauge import SignedPermutation, save_gauge
from gaugeport.estimate.matching import METHODS, ConfidenceSummary, Match, match_margin, match_scores
from gaugeport.estimate.moments import CrossMoments, MomentSet

LOW_MARGIN = 0.05  # coordinates matched by less than this margin are listed in the report
ALL_METHODS = (*METHODS, "weights")


@dataclass
class Alignment(ConfidenceSummary):
    """An estimated gauge A -> B with its per-coordinate confidence and a JSON-ready report."""

    gauge: SignedPermutation
    confidence: np.ndarray
    margin: np.ndarray
    method: str
    sites: list[str]
    site_agreement: dict[str, float] = field(default_factory=dict)
    n_tokens: int = 0
    report: dict[str, Any] = field(default_factory=dict)

    def provenance(self) -> dict[str, Any]:
        """The metadata a gauge file carries."""
        keys = ("method", "sites", "n_tokens", "mean_confidence", "min_confidence", "mean_margin",
                "n_low_confidence", "group", "model_a", "model_b", "shard_ids", "solver", "a", "b", "data",
                "a_revision", "b_revision")
        return {k: self.report[k] for k in keys if k in self.report}

    def summary(self) -> str:
        """Method, evidence, confidence and site agreement, as ``gaugeport align`` prints them."""
        r = self.report
        evidence = (f"from {', '.join(r['sites'])}" if r["method"] == "weights"
                    else f"{len(r['sites'])} site(s), {r['n_tokens']:,} tokens")
        lines = [f"method {r['method']}, d={r['d']}, {evidence}",
                 f"confidence        mean {r['mean_confidence']:.3f}   min {r['min_confidence']:.3f}   "
                 f"mean margin {r['mean_margin']:.3f}",
                 f"low confidence    {r['n_low_confidence']} coordinate(s) with margin < {r['low_margin_threshold']}"]
        if r.get("site_agreement"):
            worst = min(r["site_agreement"], key=r["site_agreement"].get)
            lines.append(f"site agreement    min {r['site_agreement'][worst]:.3f} ({worst})")
        return "\n".join(lines)

    def extras(self) -> dict[str, np.ndarray]:
        return {"confidence": self.confidence.astype(np.float32), "margin": self.margin.astype(np.float32)}

    def save(self, path: str | Path, *, force: bool = False, provenance: dict[str, Any] | None = None) -> Path:
        return save_gauge(self.gauge, path, {**self.provenance(), **(provenance or {})}, self.extras(),
                          force=force)

    def accuracy(self, truth: SignedPermutation) -> dict[str, float]:
        return self.gauge.accuracy(truth)


# ----------------------------------------------------------------------------- from moments
MIN_ALIGN_TOKENS = 16  # fewer counted positions give correlations that are all noise (or undefined)


def align_from_moments(moments: MomentSet, method: str = "signed", sites: Sequence[str] | None = None) -> Alignment:
    """Match on collected moments (all their sites vote unless ``sites`` restricts them)."""
    if method not in METHODS:
        raise DataError(f"method {method!r} does not use activation moments",
                        hint="choose signed, raw or perm-only (weights needs the checkpoints, not moments)")
    if moments.n_tokens < MIN_ALIGN_TOKENS:
        raise DataError(f"the moments count only {moments.n_tokens} token position(s); alignment needs at least "
                        f"{MIN_ALIGN_TOKENS}", hint="give more data (--tokens, longer rows): a correlation from a "
                        "handful of positions carries no information about the gauge")
    names = _pick_sites(moments, sites)
    sum_abs: np.ndarray | None = None
    sum_c: np.ndarray | None = None
    per_site: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    dead: dict[str, dict[str, int]] = {}
    for name in names:
        cm = moments.sites[name]
        c = cm.correlation()
        sum_c = c.copy() if sum_c is None else sum_c + c
        sum_abs = np.abs(c) if sum_abs is None else sum_abs + np.abs(c)
        own = c if method == "raw" else np.abs(c)
        best = own.argmax(axis=1)
        per_site[name] = (best, np.sign(c[np.arange(c.shape[0]), best]), float(own.max(axis=1).mean()))
        dead[name] = {"a": len(cm.dead_a()), "b": len(cm.dead_b())}
    assert sum_abs is not None and sum_c is not None
    n = len(names)
    score = (sum_c if method == "raw" else sum_abs) / n
    match = match_scores(score, sum_c / n, method)
    match, group_note = _project_group(match, sum_c / n, moments.info.get("norm"), method)
    agreement = {s: _agreement(best, sign, match, method) for s, (best, sign, _) in per_site.items()}
    extra = {"site_mean_best_abs_corr": {s: v[2] for s, v in per_site.items()}, "dead_coordinates": dead,
             "shard_ids": moments.shard_ids, "model_a": moments.model_a, "model_b": moments.model_b,
             "group": group_note, "info": moments.info}
    return _alignment(match, method, names, agreement, moments.n_tokens, extra)


def _pick_sites(moments: MomentSet, sites: Sequence[str] | None) -> list[str]:
    if not moments.sites:
        raise DataError("the moments hold no site")
    if not sites:
        return list(moments.sites)
    from gaugeport.transport.sites import canonical_site  # TransformerLens hook names, module paths

    sites = [canonical_site(s) for s in sites]
    missing = [s for s in sites if s not in moments.sites]
    if missing:
        raise DataError(f"site(s) {', '.join(missing)} not in the moments",
                        hint="collected sites: " + ", ".join(moments.sites))
    return list(dict.fromkeys(sites))


def _agreement(best: np.ndarray, sign: np.ndarray, match: Match, method: str) -> float:
    ok = best == match.gauge.perm
    if method != "perm-only":
        ok &= sign == match.gauge.signs
    return float(ok.mean())


def _project_group(match: Match, sign_source: np.ndarray, norm: str | None, method: str) -> tuple[Match, str]:
    """LayerNorm models allow one global sign: keep the one that best fits the matched correlations."""
    if norm != "layer":
        return match, "B_d (signed permutations)" if norm == "rms" else "B_d (norm kind unknown)"
    if method != "signed":
        return match, "S_d x {+-1} (LayerNorm); baseline left unprojected"
    d = match.gauge.d
    total = float(sign_source[np.arange(d), match.gauge.perm].sum())
    signs = np.full(d, -1 if total < 0 else 1, dtype=np.int8)
    g = SignedPermutation(match.gauge.perm, signs)
    return Match(g, match.confidence, match.margin, match.method, match.solver), \
        "S_d x {+-1} (LayerNorm: signs projected to one global sign)"


def _alignment(match: Match, method: str, sites: list[str], agreement: dict[str, float], n_tokens: int,
               extra: dict[str, Any]) -> Alignment:
    low = match.low_confidence(LOW_MARGIN)
    report = {
        "method": method, "sites": sites, "n_tokens": int(n_tokens), "d": match.gauge.d,
        "fingerprint": match.gauge.fingerprint(), "positive_fraction": match.gauge.positive_fraction,
        "mean_confidence": float(np.mean(match.confidence)), "min_confidence": float(np.min(match.confidence)),
        "mean_margin": float(np.mean(match.margin)), "low_margin_threshold": LOW_MARGIN,
        "n_low_confidence": int(np.sum(match.margin < LOW_MARGIN)), "low_confidence": low,
        "site_agreement": agreement, "solver": match.solver, **extra,
    }
    return Alignment(match.gauge, match.confidence, match.margin, method, sites, agreement, int(n_tokens), report)


# ----------------------------------------------------------------------------- in-memory models
def align_models(model_a: torch.nn.Module, model_b: torch.nn.Module, batches: Iterable[Any] | None = None,
                 method: str = "signed", sites: Sequence[str] | None = None, progress: bool = True) -> Alignment:
    """Estimate the gauge from ``model_a`` to ``model_b`` on ``batches`` (A and B see the same tokens).

    ``batches``: :class:`~gaugeport.estimate.data.Batch` es or ``[b, t]`` token-id tensors. ``method="weights"``
    ignores them and matches weights (see :func:`align_by_weights`).
    """
    if method == "weights":
        return align_by_weights(model_a, model_b)
    if method not in METHODS:
        raise DataError(f"unknown method {method!r}", hint="choose one of: " + ", ".join(ALL_METHODS))
    if batches is None:
        raise DataError("align_models needs token batches for an activation method",
                        hint="pass batches (see gaugeport.estimate.data.load_token_batches) or use method='weights'")
    from gaugeport.estimate.activations import collect_moments

    moments = collect_moments(model_a, model_b, batches, sites=sites, progress=progress)
    return align_from_moments(moments, method)


# ----------------------------------------------------------------------------- data-free
@dataclass
class _Weights:
    """The tensors weight matching reads, in one model's own layout."""

    model_type: str
    norm: str
    d: int
    embed: torch.Tensor  # vocab x d
    lm_head: torch.Tensor | None  # vocab x d, None when tied
    gains: list[torch.Tensor]  # each length d
    tokens: dict[str, int] | None  # token string -> id, when a tokenizer is at hand
    fingerprint: str


def align_by_weights(a: Any, b: Any, *, use_gains: bool = True) -> Alignment:
    """Data-free gauge estimate from two checkpoint directories or two transformers models."""
    wa, wb = _read_weights(a), _read_weights(b)
    if wa.model_type != wb.model_type:
        raise ArchitectureError(f"different architectures: A is {wa.model_type}, B is {wb.model_type}",
                                hint="a gauge relates two checkpoints of one architecture")
    if wa.d != wb.d:
        raise DataError(f"width mismatch: A has d_model={wa.d}, B has d_model={wb.d}")
    rows_a, rows_b, vocab_note = _shared_rows(wa, wb)
    sources: dict[str, CrossMoments] = {
        "embed_tokens": CrossMoments(wa.d).update(wa.embed[rows_a].double(), wb.embed[rows_b].double())}
    if wa.lm_head is not None and wb.lm_head is not None:
        sources["lm_head"] = CrossMoments(wa.d).update(wa.lm_head[rows_a].double(), wb.lm_head[rows_b].double())
    z_signed = sum(_fisher_z(cm.correlation(), cm.count) for cm in sources.values())
    score = np.abs(z_signed)
    used = list(sources)
    if use_gains and len(wa.gains) >= 4 and len(wa.gains) == len(wb.gains):
        ga, gb = _gain_rows(wa.gains), _gain_rows(wb.gains)
        if ga is not None and gb is not None:
            cg = CrossMoments(wa.d).update(ga, gb)
            score = score + np.maximum(_fisher_z(cg.correlation(), cg.count), 0.0)  # unsigned: only + counts
            used.append(f"gains[{len(wa.gains)}]")
    match = match_scores(score, z_signed, "signed")
    # report confidence in correlation units (the token embedding's |corr|), not in z units
    emb_abs = np.abs(sources["embed_tokens"].correlation())
    cols = match.gauge.perm
    match = Match(match.gauge, emb_abs[np.arange(wa.d), cols], match_margin(emb_abs, cols), "weights", match.solver)
    match, group_note = _project_group(match, z_signed, wa.norm, "signed")
    extra = {"model_a": wa.fingerprint, "model_b": wb.fingerprint, "group": group_note,
             "weight_sources": used, "vocabulary": vocab_note, "shared_vocab_rows": int(len(rows_a))}
    return _alignment(match, "weights", used, {}, 0, extra)


def _fisher_z(c: np.ndarray, n: float) -> np.ndarray:
    return np.arctanh(np.clip(c, -1 + 1e-9, 1 - 1e-9)) * np.sqrt(max(n - 3.0, 1.0))


def _gain_rows(gains: list[torch.Tensor]) -> torch.Tensor | None:
    """One row per norm, standardized across coordinates (removes per-norm offsets such as Gemma's 1 + w)."""
    g = torch.stack([x.double().reshape(-1) for x in gains])
    sd = g.std(dim=1, keepdim=True)
    if bool((sd == 0).any()):
        return None  # a uniform gain carries no fingerprint
    return (g - g.mean(dim=1, keepdim=True)) / sd


def _shared_rows(wa: _Weights, wb: _Weights) -> tuple[np.ndarray, np.ndarray, str]:
    va, vb = wa.embed.shape[0], wb.embed.shape[0]
    if wa.tokens is not None and wb.tokens is not None and wa.tokens != wb.tokens:
        shared = sorted(set(wa.tokens) & set(wb.tokens))
        rows = [(wa.tokens[t], wb.tokens[t]) for t in shared if wa.tokens[t] < va and wb.tokens[t] < vb]
        if len(rows) < max(2 * wa.d, 16):
            raise DataError(f"the vocabularies differ: only {len(rows)} tokens are shared "
                            f"(need at least {max(2 * wa.d, 16)} for d={wa.d})",
                            hint="weight matching needs the same (or a largely shared) tokenizer; use --data instead")
        ra, rb = np.array(rows).T
        return ra, rb, f"{len(rows)} tokens shared by the two tokenizers"
    if va != vb:
        raise DataError(f"the vocabularies differ: A has {va} embedding rows, B has {vb}",
                        hint="weight matching needs one shared vocabulary (save both tokenizers with the "
                        "checkpoints so shared tokens can be found), or use an activation method with --data")
    rows = np.arange(va)
    note = "identical tokenizers" if wa.tokens is not None and wb.tokens is not None else \
        "same vocabulary size; no tokenizers to compare, ids assumed to mean the same tokens"
    return rows, rows, note


def _read_weights(x: Any) -> _Weights:
    if isinstance(x, torch.nn.Module):
        from gaugeport.estimate.activations import d_model, model_fingerprint, model_spec

        spec = model_spec(x)
        state = x.state_dict()
        cfg = getattr(x.config, "text_config", None) or x.config
        return _weights_from(spec, d_model(x), state, int(getattr(cfg, "vocab_size", 0) or 0), None,
                             model_fingerprint(x))
    from gaugeport.core.checkpoint import Checkpoint
    from gaugeport.estimate.data import tokenizer_for

    ckpt = Checkpoint.open(x)
    cfg = ckpt.config.get("text_config", ckpt.config)
    tok = tokenizer_for(ckpt.path)
    tokens = dict(tok.get_vocab()) if tok is not None and hasattr(tok, "get_vocab") else None
    spec = ckpt.spec
    wanted = {n for n in ckpt.names if spec.classify(n).role in ("write", "read", "gain")}
    state = _LazyState(ckpt, wanted)
    return _weights_from(spec, ckpt.d_model, state, int(cfg.get("vocab_size", 0) or 0), tokens,
                         f"{spec.model_type}:{ckpt.path.resolve()}")


class _LazyState(dict):  # type: ignore[type-arg]
    """Tensor names of a checkpoint whose values are read on first access (gains and embeddings only)."""

    def __init__(self, ckpt: Any, names: Iterable[str]) -> None:
        super().__init__({n: None for n in names})
        self.ckpt = ckpt

    def __getitem__(self, name: str) -> torch.Tensor:
        val = super().__getitem__(name)
        if val is None:
            val = self.ckpt.tensor(name)
            super().__setitem__(name, val)
        return val


def _weights_from(spec: Any, d: int, state: Any, vocab: int, tokens: dict[str, int] | None,
                  fingerprint: str) -> _Weights:
    if vocab <= 0:
        raise ArchitectureError("the config names no vocab_size; weight matching cannot find the token embedding")
    embed = lm_head = None
    gains: list[torch.Tensor] = []
    for name in sorted(state):
        try:
            rule = spec.classify(name)
        except ArchitectureError:
            continue
        if rule.role == "gain":
            gains.append(state[name].float())
        elif rule.role in ("write", "read") and rule.axes == (1,) and _is_vocab_matrix(name, state, vocab, d):
            t = state[name].float()
            if rule.role == "write" and embed is None:
                embed = t
            elif rule.role == "read":
                lm_head = t
    if embed is None:
        raise ArchitectureError(f"no token embedding (vocab x d write matrix) found in this {spec.model_type} model",
                                hint="weight matching needs the token embedding; use an activation method")
    if lm_head is not None and lm_head.shape == embed.shape and torch.equal(lm_head, embed):
        lm_head = None  # tied: the same evidence twice
    return _Weights(spec.model_type, spec.norm, d, embed, lm_head, gains, tokens, fingerprint)


def _is_vocab_matrix(name: str, state: Any, vocab: int, d: int) -> bool:
    if any(k in name for k in ("position", "wpe", "token_type")):
        return False  # position / segment embeddings: not indexed by the vocabulary
    t = state[name]
    return t.ndim == 2 and t.shape[1] == d and t.shape[0] == vocab
