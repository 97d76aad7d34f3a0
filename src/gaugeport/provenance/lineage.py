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
   N(0, 1) variables has variance at most 1, so this never overstates the evidence). A dense block inside
   a mixture (``mlp_only_layers``, ``first_k_dense_replace``: the view's ``dense_blocks`` rules) is read
   as its one MLP, labelled ``"dense"``.
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
from dataclasses import dataclass, field, replace
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


@dataclass(frozen=True)
class Expert:
    """One virtual dense MLP of a block: a routed expert, a shared expert, or a dense model's MLP."""

    label: int | str  # the routed expert's index, "shared", or "dense"
    rename: dict[str, str]  # virtual template -> real template (with {layer}, {expert})
    index: int | None  # the value of {expert}
    dims: HiddenDims  # its MLP width in ``dims.mlp``
    layers: frozenset[int] | None = None  # the blocks that hold it (None: every block)

    def holds(self, layer: int) -> bool:
        return self.layers is None or layer in self.layers


@dataclass
class InnerCheckpoint:
    """The language model inside a multimodal wrapper, read under the dense family's names: ``names`` are the
    inner names (``model.layers.0...``), ``tensor`` reads the wrapper's own (``language_model.model.layers.0...``)."""

    outer: Checkpoint
    config: dict[str, Any]  # the wrapper's text section, with the inner model_type
    real: dict[str, str]  # inner name -> name on disk
    prefixes: dict[str, str]  # wrapper prefix -> inner prefix, those that matched a tensor
    not_compared: dict[str, int]  # first two dotted parts of every tensor outside the language model -> count

    @property
    def path(self) -> Path:
        return self.outer.path

    @property
    def names(self) -> list[str]:
        return list(self.real)

    @property
    def model_type(self) -> str:
        return str(self.config["model_type"])

    @property
    def spec(self) -> ArchSpec:
        return get_spec(self.model_type)

    @property
    def d_model(self) -> int:
        from gaugeport.core.facts import ModelFacts

        return ModelFacts.from_config(self.config).d_model

    def tensor(self, name: str) -> torch.Tensor:
        return self.outer.tensor(self.real[name])

    def describe(self) -> dict[str, Any]:
        return {"model_type": self.outer.model_type, "language_model": self.model_type,
                "prefixes": dict(self.prefixes), "not_compared": dict(self.not_compared)}


def open_inner(path: str | Path) -> Checkpoint | InnerCheckpoint:
    """The checkpoint, or the language model inside it when ``lineage_views.json`` lists it as a wrapper."""
    ckpt = Checkpoint.open(path)
    entry = _views().get(ckpt.model_type, {}).get("wrapper")
    if entry is None:
        return ckpt
    section = ckpt.config.get(entry["config"], ckpt.config)  # older saves keep the text sizes at the top level
    if not isinstance(section, dict):
        raise ArchitectureError(f"{path}: the {entry['config']!r} section of config.json is not an object",
                                hint="lineage reads the language model's sizes there")
    cfg = {k: v for k, v in section.items() if k != entry["config"]}
    cfg["model_type"] = entry.get("model_types", {}).get(cfg.get("model_type"), cfg.get("model_type"))
    order = sorted(entry["language_model"].items(), key=lambda kv: -len(kv[0]))  # the longest prefix first
    real: dict[str, str] = {}
    used: dict[str, str] = {}
    rest: dict[str, int] = {}
    outside = tuple(entry.get("not_language_model", ()))
    for name in ckpt.names:
        hit = None if name.startswith(outside) else next(((s, d) for s, d in order if name.startswith(s)), None)
        if hit is None:
            group = ".".join(name.split(".")[:2])
            rest[group] = rest.get(group, 0) + 1
            continue
        real[hit[1] + name[len(hit[0]):]] = name
        used[hit[0]] = hit[1]
    if not real:
        raise ArchitectureError(f"{path}: no tensor of the {ckpt.model_type} wrapper lies under its language "
                                f"model's prefixes ({', '.join(entry['language_model'])})",
                                hint="add the prefix to the wrapper's entry in lineage_views.json")
    return InnerCheckpoint(ckpt, cfg, real, dict(sorted(used.items())), dict(sorted(rest.items())))


@dataclass
class View:
    """A checkpoint read as dense blocks of one family: names are the dense family's; a
    mixture-of-experts block is one virtual dense block per expert (routed, then shared); a dense block
    inside a mixture (``mlp_only_layers``, ``first_k_dense_replace``) is read as its one dense MLP."""

    ckpt: Checkpoint | InnerCheckpoint
    dense_spec: ArchSpec
    hspec: HiddenSpec
    dims: HiddenDims  # of the routed experts (of the MLP in a dense model)
    experts: list[Expert]
    root: str
    moe_family: str | None = None
    ignored: list[str] = field(default_factory=list)  # tensor templates lineage does not read (routers, gates)

    @property
    def d(self) -> int:
        return int(self.ckpt.d_model)

    @property
    def n_experts(self) -> int:
        """Routed experts (1 for a dense model)."""
        return sum(isinstance(e.label, int) for e in self.experts) or 1

    @property
    def n_shared(self) -> int:
        return sum(e.label == "shared" for e in self.experts)

    @property
    def wrapper(self) -> dict[str, Any] | None:
        return self.ckpt.describe() if isinstance(self.ckpt, InnerCheckpoint) else None

    @property
    def dense_blocks(self) -> list[int]:
        """The blocks of a mixture that hold a dense MLP instead of experts (empty for a dense model)."""
        return sorted(x for e in self.experts if e.label == "dense" and e.layers is not None for x in e.layers)

    def block_experts(self, layer: int) -> list[int]:
        """Indices (into ``experts``) of the MLPs block ``layer`` holds."""
        return [e for e, ex in enumerate(self.experts) if ex.holds(layer)]

    def virtual_names(self, expert: int) -> list[str]:
        """The hidden-row tensors of every block that holds the expert, in the dense family's names."""
        ex = self.experts[expert]
        names = [n for n in self.ckpt.names if (hit := self.hspec.match(n)) is not None and ex.holds(hit[1])]
        for layer in range(self.dims.n_layers):
            if ex.holds(layer):
                names += [t.replace("{layer}", str(layer)) for t in ex.rename]
        return names

    def real_name(self, name: str, expert: int) -> str:
        ex = self.experts[expert]
        for vt, rt in ex.rename.items():
            head, _, tail = vt.partition("{layer}")
            if name.startswith(head) and name.endswith(tail):
                layer = name[len(head):len(name) - len(tail)]
                if layer.isdigit():
                    return rt.replace("{layer}", layer).replace("{expert}", str(ex.index))
        return name


def _config_int(cfg: dict[str, Any], keys: list[str], what: str, path: str | Path) -> int:
    v = next((cfg[k] for k in keys if cfg.get(k)), None)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ArchitectureError(f"{path}: config.json names no {what} ({' / '.join(keys)})",
                                hint="lineage_views.json lists the keys it reads")
    return int(v)


def dense_blocks(cfg: dict[str, Any], rules: dict[str, str], n_layers: int, path: str | Path) -> frozenset[int]:
    """The blocks of a mixture that the config makes dense. ``rules`` (from ``lineage_views.json``) maps a rule
    to its config key: ``first`` (blocks below the value are dense: DeepSeek-V3's ``first_k_dense_replace``),
    ``listed`` (a list of dense blocks: ``mlp_only_layers``), ``sparse_step`` (block ``l`` is a mixture only
    when ``(l + 1) % step == 0``: ``decoder_sparse_step``). A key the config lacks (or sets to null) makes no
    block dense."""
    def whole(x: object) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    dense: set[int] = set()
    for rule, key in rules.items():
        v = cfg.get(key)
        if v is None:
            continue
        low = 1 if rule == "sparse_step" else 0
        ok = isinstance(v, list) and all(whole(x) for x in v) if rule == "listed" else whole(v) and v >= low
        if not ok:
            raise ArchitectureError(f"{path}: config.json's {key} is {v!r}, not what it should be",
                                    hint="a list of block indices (mlp_only_layers) or a whole number "
                                    "(first_k_dense_replace >= 0, decoder_sparse_step >= 1)")
        if rule == "first":
            dense.update(range(min(v, n_layers)))
        elif rule == "listed":
            dense.update(x for x in v if 0 <= x < n_layers)
        elif rule == "sparse_step":
            dense.update(x for x in range(n_layers) if (x + 1) % v)
        else:
            raise ArchitectureError(f"lineage_views.json: unknown dense-block rule {rule!r}",
                                    hint="the rules are first, listed and sparse_step")
    return frozenset(dense)


def open_view(path: str | Path) -> View:
    ckpt = open_inner(path)
    mt = ckpt.model_type
    entry = _views().get(mt)
    cfg = ckpt.config.get("text_config", ckpt.config)
    if entry is not None and "experts" in entry:
        dense = entry["dense"]
        n_exp = _config_int(cfg, entry["experts"], "number of experts", path)
        hspec = get_hidden_spec(dense)
        dense_dims = dims = hspec.dims(ckpt.config, ckpt.d_model)
        if "expert_mlp" in entry:
            dims = replace(dims, mlp=_config_int(cfg, entry["expert_mlp"], "expert width", path))
        dense_at = dense_blocks(cfg, entry.get("dense_blocks", {}), dims.n_layers, path)
        moe = None if not dense_at else frozenset(range(dims.n_layers)) - dense_at
        experts = [Expert(e, dict(entry["rename"]), e, dims, moe) for e in range(n_exp)]
        if "shared" in entry:  # one shared MLP per block, its width a product of config numbers
            sh = entry["shared"]
            width = int(np.prod([_config_int(cfg, [k], "shared expert width", path) for k in sh["mlp"]]))
            experts.append(Expert("shared", dict(sh["rename"]), None, replace(dims, mlp=width), moe))
        if dense_at:  # the dense family's own MLP names, its width the dense key
            experts.append(Expert("dense", {}, None, dense_dims, dense_at))
        names = set(ckpt.names)
        missing = sorted({ex.rename[t].replace("{layer}", str(layer)).replace("{expert}", str(ex.index))
                          for ex in experts for t in ex.rename for layer in range(dims.n_layers)
                          if ex.holds(layer)} - names)
        missing += sorted(n for layer in sorted(dense_at) for t in entry["rename"]
                          if (n := t.replace("{layer}", str(layer))) not in names)
        if missing:
            rules = ", ".join(entry.get("dense_blocks", {}).values()) or "none"
            raise ArchitectureError(f"{path}: {len(missing)} expert or dense-block tensors are missing, "
                                    f"e.g. {missing[0]}",
                                    hint="lineage reads a mixture's blocks as experts, and as one dense MLP "
                                    f"where config.json says the block is dense (keys read: {rules}); check "
                                    "that the config and the tensors agree")
        return View(ckpt, get_spec(dense), hspec, dims, experts, family_root(dense), mt,
                    list(entry.get("ignored", [])))
    hspec = get_hidden_spec(mt)
    dims = hspec.dims(ckpt.config, ckpt.d_model)
    return View(ckpt, ckpt.spec, hspec, dims, [Expert("dense", {}, None, dims)], family_root(mt))


def comparable(path_a: str | Path, path_b: str | Path) -> bool:
    """Whether lineage can compare the two (both readable as dense blocks of one family). A checkpoint that
    ``lineage_views.json`` lists (a mixture of experts, a wrapper) but that cannot be read so is an error."""
    try:
        va, vb = open_view(path_a), open_view(path_b)
    except ArchitectureError:
        if any(Checkpoint.open(p).model_type in _views() for p in (path_a, path_b)):
            raise
        return False
    return va.root == vb.root


def shapes_differ(path_a: str | Path, path_b: str | Path) -> bool:
    """True when the pair is for lineage rather than ``same``: comparable families whose tables,
    vocabularies, widths, depths or hidden sizes differ, and every pair with a mixture of experts or a
    multimodal wrapper in it (lineage compares expert to expert, and the language model inside a wrapper).
    Model types that share one table (``mistral`` is read by the ``llama`` table) are one architecture.
    Tensor sets that differ on one shape (an export without its pooler, a save without a buffer) stay with
    ``same``, which compares the tensors both hold and lists the rest."""
    if not comparable(path_a, path_b):
        return False
    va, vb = open_view(path_a), open_view(path_b)
    if va.moe_family or vb.moe_family or va.wrapper or vb.wrapper:
        return True
    if va.ckpt.spec.table != vb.ckpt.spec.table or va.d != vb.d or va.dims != vb.dims:
        return True
    return _vocab_size(va.ckpt) != _vocab_size(vb.ckpt)


def _vocab_size(ckpt: Checkpoint | InnerCheckpoint) -> int:
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


def view_features(view: View, idx: np.ndarray, sign: np.ndarray | None,
                  keep: set[str] | None = None) -> list[dict[int, UnitFeatures]]:
    """Per expert, every block's unit features in the matched residual coordinates (of the tensors in ``keep``,
    default all: a tensor only one side has, such as Qwen2's q/k/v biases, would pair blocks wrongly)."""
    out = []
    for e, ex in enumerate(view.experts):
        def get(name: str, e: int = e) -> torch.Tensor:
            return _restrict(view.ckpt.tensor(view.real_name(name, e)), view.dense_spec, name, idx, sign)
        names = [n for n in view.virtual_names(e) if keep is None or n in keep]
        out.append(layer_features(names, get, view.dense_spec, view.hspec, ex.dims))
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


def _head_match(fa: UnitFeatures, fb: UnitFeatures, dims_a: HiddenDims, dims_b: HiddenDims
                ) -> tuple[float | None, dict[str, Any] | None]:
    """Heads matched on their query rows (key/value groups on their key rows); the fraction of query heads whose
    output columns confirm the match beyond chance, and the map: for each head (group) of the side with fewer,
    the head (group) of the other it came from."""
    small, big = _oriented(fa, fb, dims_a, dims_b, "heads")
    s_in, s_out = _cosines(small, big, "q_heads", "abs", "in"), _cosines(small, big, "q_heads", "abs", "out")
    kv_in = _cosines(small, big, "kv_heads", "abs", "in")
    small.cache.clear()
    if s_in is None or s_out is None or s_in.shape[1] < 2:
        return None, None
    r, c = linear_sum_assignment(s_in, maximize=True)
    top1 = float(np.mean(np.argmax(s_out[r], axis=1) == c))
    chance = 1.0 / s_in.shape[1]
    head_map: dict[str, Any] = {"rows": "B" if small is fb else "A", "heads": c.tolist(),
                                "cos": [float(x) for x in s_in[r, c]]}
    if kv_in is not None:
        _, ck = linear_sum_assignment(kv_in, maximize=True)
        head_map["kv_groups"] = ck.tolist()
    return (top1 - chance) / (1 - chance), head_map


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
    for side, v in (("A", va), ("B", vb)):
        if (w := v.wrapper) is not None:
            notes.append(f"{side} is a {w['model_type']} wrapper: its {w['language_model']} language model is read "
                         "under the prefix " + ", ".join(f"{k!r} (as {t!r})" for k, t in w["prefixes"].items())
                         + "; not compared: " + (", ".join(f"{g}.* ({n} tensors)" for g, n in w["not_compared"].items())
                                                 or "nothing"))
    if va.dims.head_dim != vb.dims.head_dim:
        notes.append(f"head_dim differs ({va.dims.head_dim} vs {vb.dims.head_dim}): heads are not compared "
                     "(a head's rows cannot be paired across head widths: RoPE gives each dimension pair a "
                     "frequency set by head_dim); blocks, MLP units, coordinates and tokens still are")
    ids_a, ids_b, how = token_pairs(path_a, path_b, _vocab_size(va.ckpt), _vocab_size(vb.ckpt))
    res = match_residual(va, vb, ids_a, ids_b)
    # hidden-axis tensors by template (layer index blanked: depths may differ); a template one side lacks is left out
    tmpl_a, tmpl_b = ({_template(n) for e in range(len(v.experts)) for n in v.virtual_names(e)} for v in (va, vb))
    if tmpl_a != tmpl_b:
        notes.append("compared the hidden-axis tensors both hold; not compared: " + ", ".join(
            f"{t} (only in {'A' if t in tmpl_a else 'B'})" for t in sorted(tmpl_a ^ tmpl_b)))
    keep = {n for v in (va, vb) for e in range(len(v.experts)) for n in v.virtual_names(e)
            if _template(n) in tmpl_a & tmpl_b}
    fa_all = view_features(va, res.idx_a, None, keep)
    fb_all = view_features(vb, res.idx_b, res.sign, keep)
    la, lb = va.dims.n_layers, vb.dims.n_layers

    # input-side evidence of every block pair a monotone map can use (pooled over experts: B's experts against
    # their best A expert); the others stay NaN (see monotone_band)
    @cache
    def expert_evidence(i: int, j: int) -> np.ndarray:  # B's experts x A's experts of the two blocks, input side
        return np.array([[_input_evidence(*_oriented(fa_all[ea][i], fb_all[eb][j], va.experts[ea].dims,
                                                     vb.experts[eb].dims))
                          for ea in va.block_experts(i)] for eb in vb.block_experts(j)])

    ev = np.full((la, lb), np.nan)
    for i, j in zip(*np.nonzero(monotone_band(la, lb)), strict=True):
        ev[i, j] = float(expert_evidence(i, j).max(axis=1).mean())
    if lb <= la:
        pairs = [(int(i), j) for j, i in enumerate(monotone_assignment(np.nan_to_num(ev, nan=-np.inf)))]
    else:
        pairs = [(i, int(j)) for i, j in enumerate(monotone_assignment(np.nan_to_num(ev.T, nan=-np.inf)))]

    blocks = []
    for i, j in pairs:
        experts = []
        in_a, in_b = va.block_experts(i), vb.block_experts(j)
        best_a = np.argmax(expert_evidence(i, j), axis=1) if len(in_a) > 1 else np.zeros(len(in_b), int)
        for kb, eb in enumerate(in_b):
            ea = in_a[int(best_a[kb])]
            small, big = _oriented(fa_all[ea][i], fb_all[eb][j], va.experts[ea].dims, vb.experts[eb].dims)
            h = held_out_statistic(small, big, va.hspec.mlp_signs)
            small.cache.clear()
            k = max(int(h.get("k", 1)), 2)
            frac = (h.get("top1_fraction", 0.0) - 1 / k) / (1 - 1 / k) if h["n"] else 0.0
            entry = {"b_expert": vb.experts[eb].label, "a_expert": va.experts[ea].label, "z": h["z"],
                     "units_fraction": frac,
                     "output_cos": h.get("matched_out_cos"), "null_output_cos": h.get("null_mean_cos")}
            experts.append(entry)
        z = float(np.mean([e["z"] for e in experts]))
        heads, head_map = (None, None) if va.dims.head_dim != vb.dims.head_dim else \
            _head_match(fa_all[in_a[0]][i], fb_all[in_b[0]][j], va.dims, vb.dims)
        blk: dict[str, Any] = {
            "a_block": i, "b_block": j, "z": z, "p_value": float(stats.norm.sf(z)),
            "input_evidence": float(ev[i, j]),
            "runner_up_evidence": _runner_up(ev[:, j] if lb <= la else ev[i, :], i if lb <= la else j),
            "units_fraction": float(np.mean([e["units_fraction"] for e in experts])),
            "heads_fraction": heads,
            "output_cos": float(np.mean([e["output_cos"] or 0.0 for e in experts])),
            "null_output_cos": float(np.mean([e["null_output_cos"] or 0.0 for e in experts])),
        }
        if va.moe_family or vb.moe_family:
            blk["experts"] = experts
        if head_map is not None and (units or va.dims.n_heads != vb.dims.n_heads):
            blk["head_map"] = head_map
        if units:
            ea, eb = in_a[0], in_b[0]
            small, big = _oriented(fa_all[ea][i], fb_all[eb][j], va.experts[ea].dims, vb.experts[eb].dims)
            s, _ = _mlp_scores(small, big, ("in",))
            small.cache.clear()
            r, c = linear_sum_assignment(s, maximize=True)
            blk["unit_map"] = {"rows": "B" if small is fb_all[eb][j] else "A", "cols": c.tolist()}
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
    shapes = {k: {"model_type": v.ckpt.model_type, "d": v.d, **v.dims.to_dict(), "experts": v.n_experts,
                  "shared_experts": v.n_shared, "dense_blocks": v.dense_blocks, "vocab": _vocab_size(v.ckpt),
                  **({"wrapper": v.wrapper} if v.wrapper else {})} for k, v in (("a", va), ("b", vb))}
    if va.moe_family or vb.moe_family:
        ignored = sorted({t for v in (va, vb) for t in v.ignored})
        notes.append("mixture of experts: each routed and shared expert read as a dense MLP, each of B's matched "
                     "to its best of A's (blocks[].experts); not compared: " + (", ".join(ignored) or "routers"))
        for side, v in (("A", va), ("B", vb)):
            if v.dense_blocks:
                notes.append(f"{side}'s blocks {v.dense_blocks} are dense (no experts): read as their one MLP")
    verdict = "derived" if logp < np.log(alpha) else "independent"
    block_ev = [[None if np.isnan(x) else float(x) for x in row] for row in ev]
    return LineageResult(verdict, float(np.exp(logp)), logp / np.log(10), alpha, effect, evidence, blocks,
                         res.to_dict(va.d, vb.d), vocab, shapes, block_ev, time.perf_counter() - t0, notes)


def _template(name: str) -> str:
    """``model.layers.3.self_attn.q_proj.bias`` -> ``model.layers.{layer}.self_attn.q_proj.bias``."""
    parts = name.split(".")
    return ".".join("{layer}" if x.isdigit() else x for x in parts)


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
