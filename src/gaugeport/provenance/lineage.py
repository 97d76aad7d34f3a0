"""Lineage across shape changes: is B derived from A when their shapes differ?

``same`` relates two checkpoints of one shape by a gauge. Published derivations change the shape:
blocks removed (depth pruning), MLP units, heads and residual coordinates removed (width pruning),
tokens appended or dropped (vocabulary changes), a dense MLP copied into experts (MoE upcycling).
This module finds, data-free and under any full gauge (signed permutation of the residual stream,
MLP units, heads), which part of A each part of B comes from, and tests it.

1. **Tokens.** Rows of the token embeddings are paired by token string when both checkpoints ship
   a tokenizer (``tokenizer.json`` or ``vocab.txt``), else by id on the shared range
   (``min(V_A, V_B)``): extended, shrunk and, with tokenizers, re-ordered vocabularies.
2. **Residual coordinates.** Over the paired tokens, every coordinate (column) of A's embedding is
   correlated with every coordinate of B's (and of the untied output heads when both have one);
   a rectangular assignment on ``|corr|`` gives a *signed partial permutation*: each coordinate of
   the narrower model gets one coordinate of the wider one and a sign (Minitron prunes the residual
   width). Both models are then read on their matched coordinates only.
3. **Blocks.** Every pair (block ``i`` of A, block ``j`` of B) gets input-side evidence: the mean,
   over the smaller side's MLP units, of the best cosine of their stream-reading rows (gate/up, in
   the matched coordinates). A monotone assignment (dynamic programming, :func:`monotone_assignment`)
   maps the shallower model's blocks onto an increasing subsequence of the deeper one's; only the block
   pairs such a map can use are scored (:func:`monotone_band`: the diagonal band of width ``|L_A - L_B| + 1``).
4. **Units, heads, experts.** Per mapped block, the held-out statistic of ``same``
   (:func:`gaugeport.estimate.hidden.held_out_statistic`: units matched on their input rows, the
   match tested on their output columns, never used to match) gives a per-block z; the narrower side
   is the one matched (a signed partial permutation of units). A mixture-of-experts checkpoint is
   read as one virtual dense block per expert (``lineage_views.json``; routers ignored): each of B's
   experts is tested against its best expert of A (A's dense MLP when A is dense), and the block's z
   is the *mean* of its experts' z (experts need not be independent of each other, and a mean of
   N(0, 1) variables has variance at most 1, so this never overstates the evidence).
5. **Verdict.** Stouffer's combination of the mapped blocks' z gives the p-value under the null of
   independent training (the null of ``same``); ``derived`` when ``p < alpha``.

**Graded evidence** (the p-value underflows for every real derived pair, so it cannot rank them):
per block and overall, the fraction of units whose held-out match is confirmed by the output side
beyond chance (``(top1 - 1/k) / (1 - 1/k)``: 0 for independent models, 1 when every unit's output
columns single it out), the same for heads, the matched output cosine and its null mean, and two
cross-fitted measures (the residual match fitted on half of the paired tokens, scored on the other
half, both ways, so the fit's own selection does not inflate them): the fraction of coordinates both
halves match alike, and the fraction of held-out tokens whose row in B retrieves its own row in A
(each beyond chance). ``effect`` is the mean of the units, heads and tokens
fractions, the number the suite's ROC ranks by.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from scipy.optimize import linear_sum_assignment

from gaugeport.core.archspec import ArchSpec, get_spec
from gaugeport.core.checkpoint import Checkpoint
from gaugeport.core.errors import ArchitectureError, GaugeError
from gaugeport.core.hidden import HiddenDims, HiddenSpec, get_hidden_spec
from gaugeport.estimate.hidden import UnitFeatures, _cosines, _mlp_scores, held_out_statistic, layer_features

DEFAULT_ALPHA = 1e-3
VIEWS_FILE = Path(__file__).with_name("lineage_views.json")
TOKEN_SAMPLE = 4096  # tokens scored by retrieval (a seeded sample of the paired ones)
EVIDENCE_UNITS = 256  # units per block sampled for the block-map evidence (all of them are tested after)
COORD_NULL_SDS = 4.0  # |corr| above 4 / sqrt(tokens): beyond what independent columns reach


# ----------------------------------------------------------------------------- views
@cache
def _views() -> dict[str, Any]:
    return {k: v for k, v in json.loads(VIEWS_FILE.read_text()).items() if not k.startswith("_")}


@cache
def family_root(model_type: str) -> str:
    """The root of a table's ``extends`` chain (aliases resolved): families sharing it read alike."""
    from importlib import resources

    table = get_spec(model_type).table or model_type
    raw = json.loads(resources.files("gaugeport.core.architectures").joinpath(f"{table}.json").read_text())
    return family_root(raw["extends"]) if "extends" in raw else table


@dataclass
class View:
    """A checkpoint read as dense blocks of one family: names are the dense family's; a
    mixture-of-experts block is one virtual dense block per expert."""

    ckpt: Checkpoint
    dense_spec: ArchSpec
    hspec: HiddenSpec
    dims: HiddenDims
    n_experts: int  # 1 for a dense model
    rename: dict[str, str]  # virtual template -> real template (with {layer}, {expert})
    root: str
    moe_family: str | None = None

    @property
    def d(self) -> int:
        return int(self.ckpt.d_model)

    def virtual_names(self, expert: int) -> list[str]:
        """The hidden-row tensors of every block, in the dense family's names."""
        names = [n for n in self.ckpt.names if self.hspec.match(n) is not None]
        for layer in range(self.dims.n_layers):
            names += [t.replace("{layer}", str(layer)) for t in self.rename]
        return names

    def real_name(self, name: str, expert: int) -> str:
        for vt, rt in self.rename.items():
            head, _, tail = vt.partition("{layer}")
            if name.startswith(head) and name.endswith(tail):
                layer = name[len(head):len(name) - len(tail)]
                if layer.isdigit():
                    return rt.replace("{layer}", layer).replace("{expert}", str(expert))
        return name


def open_view(path: str | Path) -> View:
    ckpt = Checkpoint.open(path)
    mt = ckpt.model_type
    entry = _views().get(mt)
    cfg = ckpt.config.get("text_config", ckpt.config)
    if entry is not None:
        dense = entry["dense"]
        n_exp = next((int(cfg[k]) for k in entry["experts"] if cfg.get(k)), 0)
        if n_exp <= 0:
            raise ArchitectureError(f"{path}: config.json names no number of experts "
                                    f"({', '.join(entry['experts'])})")
        hspec = get_hidden_spec(dense)
        return View(ckpt, get_spec(dense), hspec, hspec.dims(ckpt.config, ckpt.d_model), n_exp,
                    dict(entry["rename"]), family_root(dense), mt)
    hspec = get_hidden_spec(mt)
    return View(ckpt, ckpt.spec, hspec, hspec.dims(ckpt.config, ckpt.d_model), 1, {}, family_root(mt))


def comparable(path_a: str | Path, path_b: str | Path) -> bool:
    """Whether lineage can compare the two (both readable as dense blocks of one family)."""
    try:
        va, vb = open_view(path_a), open_view(path_b)
    except ArchitectureError:
        return False
    return va.root == vb.root


def shapes_differ(path_a: str | Path, path_b: str | Path) -> bool:
    """True when the pair is for lineage rather than ``same``: comparable families whose model
    types, vocabularies, widths, depths or hidden sizes differ. Tensor sets that differ on one shape
    (an export without its pooler, a save without a buffer) stay with ``same``, which compares the
    tensors both hold and lists the rest."""
    ca, cb = Checkpoint.open(path_a), Checkpoint.open(path_b)
    if not comparable(path_a, path_b):
        return False
    if ca.model_type != cb.model_type or ca.d_model != cb.d_model:
        return True
    va, vb = open_view(path_a), open_view(path_b)
    if va.dims != vb.dims:
        return True
    return _vocab_size(ca) != _vocab_size(cb)


def _vocab_size(ckpt: Checkpoint) -> int:
    return int(ckpt.config.get("text_config", ckpt.config).get("vocab_size", 0) or 0)


# ----------------------------------------------------------------------------- tokens
def token_strings(path: str | Path) -> list[str | None] | None:
    """Token string of every id from ``tokenizer.json`` (BPE/WordPiece vocab or Unigram list, plus
    added tokens) or ``vocab.txt``; None when the checkpoint ships neither."""
    p = Path(path)
    if (p / "tokenizer.json").is_file():
        try:
            tok = json.loads((p / "tokenizer.json").read_text())
        except (OSError, ValueError):
            return None
        vocab = (tok.get("model") or {}).get("vocab")
        pairs: list[tuple[int, str]] = []
        if isinstance(vocab, dict):
            pairs = [(int(i), str(s)) for s, i in vocab.items()]
        elif isinstance(vocab, list):
            pairs = [(i, str(e[0] if isinstance(e, list) else e)) for i, e in enumerate(vocab)]
        pairs += [(int(a["id"]), str(a["content"])) for a in tok.get("added_tokens", []) if "id" in a]
        if not pairs:
            return None
        out: list[str | None] = [None] * (max(i for i, _ in pairs) + 1)
        for i, s in pairs:
            out[i] = s
        return out
    if (p / "vocab.txt").is_file():
        return [ln.rstrip("\n") for ln in (p / "vocab.txt").read_text(encoding="utf-8").splitlines()]
    return None


def token_pairs(path_a: str | Path, path_b: str | Path, v_a: int, v_b: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``(ids in A, ids in B, how)``: the rows of the two embeddings that hold the same token."""
    sa, sb = token_strings(path_a), token_strings(path_b)
    if sa is not None and sb is not None:
        where_b = {s: i for i, s in enumerate(sb[:v_b]) if s is not None}
        ia = [i for i, s in enumerate(sa[:v_a]) if s is not None and s in where_b]
        if ia:
            return np.asarray(ia), np.asarray([where_b[sa[i]] for i in ia]), "token strings"
    n = min(v_a, v_b)
    return np.arange(n), np.arange(n), "ids on the shared range"


# ----------------------------------------------------------------------------- residual
@dataclass
class ResidualMatch:
    """Coordinate ``idx_a[k]`` of A is coordinate ``idx_b[k]`` of B times ``sign[k]``."""

    idx_a: np.ndarray
    idx_b: np.ndarray
    sign: np.ndarray
    corr: np.ndarray  # |corr| of each matched pair
    threshold: float

    def to_dict(self, d_a: int, d_b: int) -> dict[str, Any]:
        return {"d_a": d_a, "d_b": d_b, "matched": int(self.idx_a.size),
                "matched_fraction": float(np.mean(self.corr > self.threshold)) if self.corr.size else 0.0,
                "mean_abs_corr": float(self.corr.mean()) if self.corr.size else 0.0,
                "null_threshold": self.threshold}


def _vocab_matrix(view: View, kind: str) -> str | None:
    for n in sorted(view.ckpt.names):
        r = view.ckpt.spec.classify(n)
        if r.embedding == kind:
            return n
    return None


def _standardize(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(0)
    return x / np.maximum(x.std(0), 1e-12)


def _vocab_corr(va: View, vb: View, ids_a: np.ndarray, ids_b: np.ndarray) -> np.ndarray:
    """Correlation of every coordinate of A with every coordinate of B over the paired tokens (token
    embeddings, and the untied output heads when both have one), ``d_A x d_B``."""
    corr = np.zeros((va.d, vb.d))
    used = 0
    for kind in ("token", "output"):
        na, nb = _vocab_matrix(va, kind), _vocab_matrix(vb, kind)
        if na is None or nb is None:
            continue
        ea = va.ckpt.tensor(na).double().numpy()[ids_a]
        eb = vb.ckpt.tensor(nb).double().numpy()[ids_b]
        corr += _standardize(ea).T @ _standardize(eb) / len(ids_a)
        used += 1
    if not used:
        raise ArchitectureError("no token embedding found in both checkpoints",
                                hint="lineage pairs the residual coordinates through the vocabulary matrices")
    return corr / used


def _assign_coordinates(corr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r, c = linear_sum_assignment(np.abs(corr), maximize=True)
    order = np.argsort(c) if corr.shape[1] <= corr.shape[0] else np.argsort(r)  # the narrower side's order
    return r[order], c[order]


def match_residual(va: View, vb: View, ids_a: np.ndarray, ids_b: np.ndarray) -> ResidualMatch:
    """Signed partial permutation of the residual coordinates from the vocabulary matrices' columns."""
    corr = _vocab_corr(va, vb, ids_a, ids_b)
    r, c = _assign_coordinates(corr)
    return ResidualMatch(r, c, np.where(corr[r, c] < 0, -1, 1), np.abs(corr[r, c]),
                         COORD_NULL_SDS / np.sqrt(max(len(ids_a), 1)))


def cross_fitted_tokens(va: View, vb: View, ids_a: np.ndarray, ids_b: np.ndarray,
                        how: str) -> tuple[dict[str, Any], float]:
    """Token and coordinate evidence free of the fit's own selection: the residual match is fitted on
    one half of the shared tokens (even / odd positions) and the token rows are scored on the other
    half, both ways. Coordinates: the fraction of the narrower side's coordinates that both halves
    match to the same coordinate and sign, beyond the chance of ``1 / d_wide``."""
    halves = [np.arange(len(ids_a))[k::2] for k in (0, 1)]
    fits = []
    for fit in halves:
        corr = _vocab_corr(va, vb, ids_a[fit], ids_b[fit])
        r, c = _assign_coordinates(corr)
        fits.append(ResidualMatch(r, c, np.where(corr[r, c] < 0, -1, 1), np.abs(corr[r, c]), 0.0))
    docs = [_token_evidence(va, vb, ids_a[halves[1 - k]], ids_b[halves[1 - k]], fits[k], how) for k in (0, 1)]
    out = {key: float(np.mean([d[key] for d in docs])) for key in ("mean_cos", "retrieved", "tokens_fraction")}
    out.update(paired_by=how, shared=int(len(ids_a)), only_a=_vocab_size(va.ckpt) - int(len(ids_a)),
               only_b=_vocab_size(vb.ckpt) - int(len(ids_b)), cross_fitted=True)
    narrow_is_b = vb.d <= va.d
    key = [dict(zip((f.idx_b if narrow_is_b else f.idx_a).tolist(),
                    zip((f.idx_a if narrow_is_b else f.idx_b).tolist(), f.sign.tolist(), strict=True), strict=True))
           for f in fits]
    agree = float(np.mean([key[0][x] == key[1].get(x) for x in key[0]])) if key[0] else 0.0
    chance = 1.0 / max(va.d, vb.d)
    return out, (agree - chance) / (1 - chance)


def _restrict(t: torch.Tensor, spec: ArchSpec, name: str, idx: np.ndarray, sign: np.ndarray | None) -> torch.Tensor:
    rule = spec.classify(name)
    out = t.float()
    ix = torch.from_numpy(idx)
    for ax, mode in zip(rule.axes, rule.modes, strict=True):
        if mode == "none":
            continue
        out = out.index_select(ax, ix)
        if sign is not None and mode == "signed":
            shape = [1] * out.ndim
            shape[ax] = -1
            out = out * torch.from_numpy(sign.astype(np.float32)).reshape(shape)
    return out


def view_features(view: View, idx: np.ndarray, sign: np.ndarray | None) -> list[dict[int, UnitFeatures]]:
    """Per expert, every block's unit features in the matched residual coordinates."""
    out = []
    for e in range(view.n_experts):
        def get(name: str, e: int = e) -> torch.Tensor:
            return _restrict(view.ckpt.tensor(view.real_name(name, e)), view.dense_spec, name, idx, sign)
        out.append(layer_features(view.virtual_names(e), get, view.dense_spec, view.hspec, view.dims))
    return out


# ----------------------------------------------------------------------------- blocks
def monotone_assignment(score: np.ndarray) -> np.ndarray:
    """Rows ``r_0 < r_1 < ... < r_{n-1}`` maximising ``sum_j score[r_j, j]`` (``n`` columns <= ``m`` rows)."""
    m, n = score.shape
    if n > m:
        raise ValueError(f"monotone assignment needs columns <= rows, got {score.shape}")
    best = np.full((m + 1, n + 1), -np.inf)
    best[:, 0] = 0.0
    take = np.zeros((m + 1, n + 1), dtype=bool)
    for i in range(1, m + 1):
        for j in range(1, min(i, n) + 1):
            skip, use = best[i - 1, j], best[i - 1, j - 1] + score[i - 1, j - 1]
            take[i, j] = use >= skip
            best[i, j] = use if take[i, j] else skip
    rows = np.empty(n, dtype=np.int64)
    i, j = m, n
    while j > 0:
        if take[i, j]:
            rows[j - 1] = i - 1
            j -= 1
        i -= 1
    return rows


def _subsample(f: UnitFeatures, n: int) -> UnitFeatures:
    """The features of ``n`` units (a seeded sample, the same for every block of that width), or ``f``."""
    sizes = {len(x) for blocks in f.blocks.values() for x in blocks}
    if not sizes or max(sizes) <= n:
        return f
    out = UnitFeatures()
    for key, blocks in f.blocks.items():
        for x in blocks:
            idx = np.sort(np.random.default_rng(len(x)).choice(len(x), n, replace=False)) if len(x) > n else \
                np.arange(len(x))
            out.add(*key, x[idx])
    out.degenerate = {k: v[np.sort(np.random.default_rng(len(v)).choice(len(v), n, replace=False))]
                      if len(v) > n else v for k, v in getattr(f, "degenerate", {}).items()}
    return out


def _input_evidence(small: UnitFeatures, big: UnitFeatures) -> float:
    """Mean over (up to ``EVIDENCE_UNITS`` of) the smaller side's MLP units of their best input-side score
    against the other block: the block map's evidence, read on the input side only."""
    small = _subsample(small, EVIDENCE_UNITS)
    s, _ = _mlp_scores(small, big, ("in",))
    small.cache.clear()
    return float(np.max(s, axis=1).mean()) if np.ndim(s) == 2 and s.size else 0.0


def _oriented(fa: UnitFeatures, fb: UnitFeatures, dims_a: HiddenDims, dims_b: HiddenDims,
              kind: str = "mlp") -> tuple[UnitFeatures, UnitFeatures]:
    size_a = dims_a.mlp if kind == "mlp" else dims_a.n_heads
    size_b = dims_b.mlp if kind == "mlp" else dims_b.n_heads
    return (fb, fa) if size_b <= size_a else (fa, fb)


def _head_fraction(fa: UnitFeatures, fb: UnitFeatures, dims_a: HiddenDims, dims_b: HiddenDims) -> float | None:
    """Heads matched on their query rows; the fraction whose output columns confirm the match beyond chance."""
    small, big = _oriented(fa, fb, dims_a, dims_b, "heads")
    s_in, s_out = _cosines(small, big, "q_heads", "abs", "in"), _cosines(small, big, "q_heads", "abs", "out")
    small.cache.clear()
    if s_in is None or s_out is None or s_in.shape[1] < 2:
        return None
    r, c = linear_sum_assignment(s_in, maximize=True)
    top1 = float(np.mean(np.argmax(s_out[r], axis=1) == c))
    chance = 1.0 / s_in.shape[1]
    return (top1 - chance) / (1 - chance)


# ----------------------------------------------------------------------------- result
@dataclass
class LineageResult:
    verdict: str
    p_value: float
    log10_p: float
    alpha: float
    effect: float
    evidence: dict[str, Any]
    blocks: list[dict[str, Any]]
    residual: dict[str, Any]
    vocabulary: dict[str, Any]
    shapes: dict[str, Any]
    block_evidence: list[list[float | None]]  # input-side evidence, A's blocks x B's blocks (None: off the band)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": "lineage", "verdict": self.verdict, "p_value": self.p_value, "log10_p_value": self.log10_p,
                "alpha": self.alpha, "effect": self.effect, "evidence": self.evidence, "blocks": self.blocks,
                "residual": self.residual, "vocabulary": self.vocabulary, "shapes": self.shapes,
                "block_evidence": self.block_evidence, "seconds": self.seconds, "notes": self.notes,
                "null": "independent training: input-side unit matches carry no information about output-side "
                        "weights"}


def lineage(path_a: str | Path, path_b: str | Path, *, alpha: float = DEFAULT_ALPHA,
            units: bool = False) -> LineageResult:
    """Compare two checkpoints whose shapes may differ (see the module docstring).

    ``units``: also list, per block, which unit of the wider side each unit of the narrower one matched.
    """
    t0 = time.perf_counter()
    if not 0 < alpha < 1:
        raise GaugeError(f"alpha must lie in (0, 1), got {alpha}")
    va, vb = open_view(path_a), open_view(path_b)
    if va.root != vb.root:
        raise ArchitectureError(f"different architectures: A is {va.ckpt.model_type}, B is {vb.ckpt.model_type}",
                                hint="lineage compares families that share a table (or an extends chain), "
                                "and mixture-of-experts models listed in lineage_views.json with their dense family")
    notes: list[str] = []
    if va.dims.head_dim != vb.dims.head_dim:
        notes.append(f"head_dim differs ({va.dims.head_dim} vs {vb.dims.head_dim}): heads are not compared")
    ids_a, ids_b, how = token_pairs(path_a, path_b, _vocab_size(va.ckpt), _vocab_size(vb.ckpt))
    res = match_residual(va, vb, ids_a, ids_b)
    fa_all = view_features(va, res.idx_a, None)
    fb_all = view_features(vb, res.idx_b, res.sign)
    la, lb = va.dims.n_layers, vb.dims.n_layers

    # input-side evidence of every block pair a monotone map can use (pooled over experts: B's experts against
    # their best A expert); the others stay NaN (see monotone_band)
    ev = np.full((la, lb), np.nan)
    for i, j in zip(*np.nonzero(monotone_band(la, lb)), strict=True):
        ev[i, j] = np.mean([max(_input_evidence(*_oriented(fa[i], fb[j], va.dims, vb.dims))
                                for fa in fa_all) for fb in fb_all])
    if lb <= la:
        pairs = [(int(i), j) for j, i in enumerate(monotone_assignment(np.nan_to_num(ev, nan=-np.inf)))]
    else:
        pairs = [(i, int(j)) for i, j in enumerate(monotone_assignment(np.nan_to_num(ev.T, nan=-np.inf)))]

    blocks = []
    for i, j in pairs:
        experts = []
        for eb, fb in enumerate(fb_all):
            ea = int(np.argmax([_input_evidence(*_oriented(fa[i], fb[j], va.dims, vb.dims)) for fa in fa_all]))
            small, big = _oriented(fa_all[ea][i], fb[j], va.dims, vb.dims)
            h = held_out_statistic(small, big, va.hspec.mlp_signs)
            small.cache.clear()
            k = max(int(h.get("k", 1)), 2)
            frac = (h.get("top1_fraction", 0.0) - 1 / k) / (1 - 1 / k) if h["n"] else 0.0
            entry = {"b_expert": eb, "a_expert": ea, "z": h["z"], "units_fraction": frac,
                     "output_cos": h.get("matched_out_cos"), "null_output_cos": h.get("null_mean_cos")}
            experts.append(entry)
        z = float(np.mean([e["z"] for e in experts]))
        heads = None if va.dims.head_dim != vb.dims.head_dim else \
            _head_fraction(fa_all[0][i], fb_all[0][j], va.dims, vb.dims)
        blk: dict[str, Any] = {
            "a_block": i, "b_block": j, "z": z, "p_value": float(stats.norm.sf(z)),
            "input_evidence": float(ev[i, j]),
            "runner_up_evidence": _runner_up(ev[:, j] if lb <= la else ev[i, :], i if lb <= la else j),
            "units_fraction": float(np.mean([e["units_fraction"] for e in experts])),
            "heads_fraction": heads,
            "output_cos": float(np.mean([e["output_cos"] or 0.0 for e in experts])),
            "null_output_cos": float(np.mean([e["null_output_cos"] or 0.0 for e in experts])),
        }
        if len(experts) > 1 or va.n_experts > 1:
            blk["experts"] = experts
        if units:
            small, big = _oriented(fa_all[0][i], fb_all[0][j], va.dims, vb.dims)
            s, _ = _mlp_scores(small, big, ("in",))
            small.cache.clear()
            r, c = linear_sum_assignment(s, maximize=True)
            blk["unit_map"] = {"rows": "B" if small is fb_all[0][j] else "A", "cols": c.tolist()}
        blk["status"] = "derived" if blk["p_value"] < alpha else "unrelated"
        blocks.append(blk)

    zs = [b["z"] for b in blocks]
    z_all = float(np.sum(zs) / np.sqrt(len(zs))) if zs else 0.0
    logp = float(stats.norm.logsf(z_all))
    vocab, coords = cross_fitted_tokens(va, vb, ids_a, ids_b, how)
    heads_fr = [b["heads_fraction"] for b in blocks if b["heads_fraction"] is not None]
    evidence = {
        "units_fraction": float(np.mean([b["units_fraction"] for b in blocks])),
        "heads_fraction": float(np.mean(heads_fr)) if heads_fr else None,
        "tokens_fraction": vocab["tokens_fraction"],
        "coordinates_fraction": coords,
        "blocks_fraction": float(np.mean([b["p_value"] < alpha for b in blocks])),
        "output_cos": float(np.mean([b["output_cos"] for b in blocks])),
        "null_output_cos": float(np.mean([b["null_output_cos"] for b in blocks])),
        "z": z_all,
    }
    parts = [evidence["units_fraction"], evidence["tokens_fraction"]]
    if evidence["heads_fraction"] is not None:
        parts.append(evidence["heads_fraction"])
    effect = float(np.mean(parts))
    shapes = {"a": {"model_type": va.ckpt.model_type, "d": va.d, **va.dims.to_dict(), "experts": va.n_experts,
                    "vocab": _vocab_size(va.ckpt)},
              "b": {"model_type": vb.ckpt.model_type, "d": vb.d, **vb.dims.to_dict(), "experts": vb.n_experts,
                    "vocab": _vocab_size(vb.ckpt)}}
    if va.moe_family or vb.moe_family:
        notes.append("mixture of experts: each expert read as a dense MLP; routers and shared experts ignored")
    verdict = "derived" if logp < np.log(alpha) else "independent"
    block_ev = [[None if np.isnan(x) else float(x) for x in row] for row in ev]
    return LineageResult(verdict, float(np.exp(logp)), logp / np.log(10), alpha, effect, evidence, blocks,
                         res.to_dict(va.d, vb.d), vocab, shapes, block_ev, time.perf_counter() - t0, notes)


def monotone_band(la: int, lb: int) -> np.ndarray:
    """The block pairs (A block ``i``, B block ``j``) that some strictly increasing map of the shallower model's
    blocks into the deeper one's can use: with ``lb <= la``, block ``j`` of B can only land on
    ``j <= i <= j + la - lb`` (``j`` blocks of A must lie below it, ``lb - 1 - j`` above); symmetrically
    when A is the shallower. Evidence outside this band cannot change the map, so it is not computed (equal
    depths: the diagonal only, ``la * lb`` evaluations become ``min(la, lb) * (|la - lb| + 1)``)."""
    i, j = np.ogrid[:la, :lb]
    return (i >= j) & (i <= j + la - lb) if lb <= la else (j >= i) & (j <= i + lb - la)


def _runner_up(candidates: np.ndarray, chosen: int) -> float | None:
    """The best evidence of another block the map could have used instead (None when there is none)."""
    rest = np.delete(candidates, chosen)
    rest = rest[~np.isnan(rest)]
    return float(rest.max()) if rest.size else None


def _token_evidence(va: View, vb: View, ids_a: np.ndarray, ids_b: np.ndarray, res: ResidualMatch,
                    how: str) -> dict[str, Any]:
    """Retrieval on the paired tokens: each of B's token rows (in the matched coordinates) against
    every paired row of A by cosine; the fraction whose best row is its own token, beyond the chance
    of ``1 / n`` (at most ``TOKEN_SAMPLE`` tokens, a seeded sample)."""
    na, nb = _vocab_matrix(va, "token"), _vocab_matrix(vb, "token")
    assert na is not None and nb is not None  # match_residual found them
    if len(ids_a) > TOKEN_SAMPLE:
        pick = np.sort(np.random.default_rng(0).choice(len(ids_a), TOKEN_SAMPLE, replace=False))
        ids_a, ids_b = ids_a[pick], ids_b[pick]
    ea = va.ckpt.tensor(na).double().numpy()[ids_a][:, res.idx_a]
    eb = vb.ckpt.tensor(nb).double().numpy()[ids_b][:, res.idx_b] * res.sign
    ea = ea / np.maximum(np.linalg.norm(ea, axis=1, keepdims=True), 1e-12)
    eb = eb / np.maximum(np.linalg.norm(eb, axis=1, keepdims=True), 1e-12)
    n = len(ids_a)
    if n < 2:
        return {"mean_cos": 0.0, "tokens_fraction": 0.0, "retrieved": 0.0}
    sim = eb @ ea.T
    own = np.diag(sim)
    retrieved = float(np.mean(np.argmax(sim, axis=1) == np.arange(n)))
    chance = 1.0 / n
    return {"mean_cos": float(own.mean()), "retrieved": retrieved,
            "tokens_fraction": (retrieved - chance) / (1 - chance)}


# ----------------------------------------------------------------------------- plot
def plot_blocks(result: LineageResult, path: str | Path) -> Path | None:
    """Per-block evidence: the input-side evidence matrix with the block map, and each mapped block's z
    and units fraction (matplotlib, imported here only; None without it: ``gaugeport[study]``)."""
    try:
        import matplotlib
    except ImportError:  # the plot is optional; the report has every figure
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gaugeport.core.fileio import atomic_path

    ev = np.asarray(result.block_evidence, dtype=float)  # None (off the monotone band) -> NaN, left blank
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4))
    im = ax0.imshow(ev, aspect="auto", origin="lower", cmap="viridis")
    ax0.plot([b["b_block"] for b in result.blocks], [b["a_block"] for b in result.blocks], "r.-", label="block map")
    ax0.set_xlabel("B block")
    ax0.set_ylabel("A block")
    ax0.set_title("input-side evidence")
    ax0.legend(loc="upper left")
    fig.colorbar(im, ax=ax0)
    xs = [b["b_block"] for b in result.blocks]
    ax1.bar(xs, [b["z"] for b in result.blocks], color="tab:blue", label="z (held-out)")
    ax1.axhline(stats.norm.isf(result.alpha), color="k", lw=0.8, ls="--", label=f"z at alpha={result.alpha:g}")
    ax1.set_xlabel("B block")
    ax1.set_ylabel("z")
    ax2 = ax1.twinx()
    ax2.plot(xs, [b["units_fraction"] for b in result.blocks], "o-", color="tab:orange", label="units fraction")
    ax2.set_ylim(-0.1, 1.05)
    ax2.set_ylabel("units fraction")
    ax1.set_title(f"{result.verdict}: effect {result.effect:.2f}, log10 p {result.log10_p:.1f}")
    ax1.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_path(Path(path), force=True) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
