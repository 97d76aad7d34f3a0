"""Hidden axes of the architecture tables: MLP units and attention heads (the full-network gauge).

Beside the residual rows, a table may carry a ``"hidden"`` section naming every stored tensor
that carries an MLP hidden-unit axis or an attention-head axis::

    "hidden": {
      "mlp_signs": true,
      "rows": [
        {"name": "model.layers.{layer}.mlp.gate_proj.weight", "axis": 0, "segments": ["mlp:abs"]},
        {"name": "model.layers.{layer}.mlp.up_proj.weight",   "axis": 0, "segments": ["mlp:signed"]},
        {"name": "model.layers.{layer}.mlp.down_proj.weight", "axis": 1, "segments": ["mlp:signed"]},
        {"name": "model.layers.{layer}.self_attn.q_proj.weight", "axis": 0, "segments": ["q_heads"]},
        ...
      ]
    }

``axis`` is the stored axis carrying the hidden units; ``segments`` lists, in order along that
axis, what it is made of (fused tensors such as Phi-3's ``qkv_proj`` have several):

=================  =========================================================================
segment            meaning
=================  =========================================================================
``mlp:signed``     the MLP's units, permuted and sign-flipped with the gauge (a gated block's
                   ``up`` rows and ``down`` columns: ``act(g) * u`` is odd in ``u``)
``mlp:abs``        the MLP's units, permuted only (a gate; any ungated GELU/ReLU MLP)
``q_heads``        the query heads, one block of ``head_dim`` per head, permuted as blocks
``kv_heads``       the key/value heads (grouped-query attention: one per group)
``q_heads*3``      one block of ``3 * head_dim`` per query head (GPT-NeoX's interleaved q/k/v)
``q_heads[1]``     one slice per query head (``kv_heads[1]``: per group): a per-head tensor such
                   as Cohere's q/k LayerNorm gain ``[heads, head_dim]`` along its axis 0
=================  =========================================================================

``mlp_signs`` says whether the MLP units may carry signs at all (gated blocks only); a table
with ``"mlp:signed"`` rows must set it. Head permutations respect grouped-query attention: the
key/value heads (groups) are permuted, and the query heads inside each group move with it.
Sizes come from the config (``intermediate_size`` / ``n_inner``, ``num_attention_heads``,
``num_key_value_heads``, ``head_dim``) and are checked against every tensor's shape.

``attention`` (optional) names which stored tensors hold each head's queries, keys, values and output
(``{"q": [...], "k": [...], "v": [...], "o": [...]}``: templates of weights and biases; ``@i`` after a
template picks the ``i``-th segment of a fused tensor, e.g. Phi-3's ``qkv_proj.weight@1`` for the keys),
how a fused tensor is laid out (``"fused"``: ``"segments"``, the default, as just said; ``"per_head"``,
``@i`` picks instead the ``i``-th ``head_dim`` rows inside every head's block of the row's ``q_heads*m``
segment: GPT-NeoX's ``query_key_value``, viewed as ``[heads, 3, head_dim, d]``, is ``@0`` / ``@1`` / ``@2``
for queries / keys / values), the rotary layout (``"rope": "rotate_half"``, pair ``i`` is dims ``i`` and
``i + r / 2`` of the ``r`` rotary dims; ``"interleaved"``, pair ``i`` is dims ``2i`` and ``2i + 1``; or
``"none"``), the config keys of a partial rotary fraction (``rotary_fraction``) and the fraction the model
class assumes when the config names none (``rotary_default``: GPT-NeoX 0.25, Phi and GLM 0.5; 1 unless
said), and the tensors that, when a checkpoint has them, sit between the projections and RoPE
(``stops_qk_maps``: a q/k-norm's per-dimension gain), and the config keys that, when set to anything but
null, stop every map inside a head (``stops_head_maps``: OLMo's ``clip_qkv`` clamps q, k and v coordinate by
coordinate). Provenance uses it for the maps inside a head that
keep the function (value/output and query/key maps, :mod:`gaugeport.provenance.heads`).

``folds`` (optional) names, for each RMSNorm gain, the readers it can be folded into
(``W' = W diag(g)``, gain set to one); provenance uses it to undo the fold-gains-then-rotate
disguise, in which a folded checkpoint's residual stream is rotated by any orthogonal matrix.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

from gaugeport.core.archspec import _raw_table, get_spec
from gaugeport.core.errors import ArchitectureError

SegmentKind = Literal["mlp", "q_heads", "kv_heads"]
_HIDDEN_KEYS = {"mlp_signs", "rows", "macros", "dims", "folds", "attention"}
_ATTENTION_KEYS = {"q", "k", "v", "o", "fused", "rope", "rotary_fraction", "rotary_default", "stops_qk_maps",
                   "stops_head_maps", "why"}
ROPE_LAYOUTS = ("rotate_half", "interleaved", "none")
FUSED_LAYOUTS = ("segments", "per_head")
_FOLD_KEYS = {"gain", "into", "why"}
_ROW_KEYS = {"name", "axis", "segments", "why"}
_DIM_KEYS = {"mlp", "n_heads", "n_kv_heads", "head_dim"}
_SEGMENT = re.compile(r"(mlp|q_heads|kv_heads)(?:\*(\d+))?(\[1\])?(?::(signed|abs))?")
DEFAULT_DIM_KEYS: dict[str, tuple[str, ...]] = {
    "mlp": ("intermediate_size", "n_inner", "ffn_dim"),
    "n_heads": ("num_attention_heads", "n_head"),
    "n_kv_heads": ("num_key_value_heads",),
    "head_dim": ("head_dim",),
}


@dataclass(frozen=True)
class Segment:
    kind: SegmentKind
    mult: int  # block size multiplier (GPT-NeoX's interleaved qkv: 3)
    mode: Literal["signed", "abs"]
    one_per_head: bool = False  # ``q_heads[1]``: one slice per head (a [heads, head_dim] tensor's axis 0)

    def size(self, dims: HiddenDims) -> int:
        """Length of this segment along the hidden axis."""
        if self.kind == "mlp":
            return dims.mlp * self.mult
        n = dims.n_heads if self.kind == "q_heads" else dims.n_kv_heads
        return n * self.mult * (1 if self.one_per_head else dims.head_dim)


@dataclass(frozen=True)
class HiddenRule:
    template: str
    axis: int
    segments: tuple[Segment, ...]
    pattern: re.Pattern[str] = field(repr=False, compare=False)


@dataclass(frozen=True)
class HiddenDims:
    """Per-layer sizes of the hidden axes (every layer alike)."""

    n_layers: int
    mlp: int
    n_heads: int
    n_kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_kv_heads

    def to_dict(self) -> dict[str, int]:
        return {"n_layers": self.n_layers, "mlp": self.mlp, "n_heads": self.n_heads,
                "n_kv_heads": self.n_kv_heads, "head_dim": self.head_dim}


@dataclass(frozen=True)
class AttentionSpec:
    """Where a layer's attention heads live (templates with ``{layer}``; ``@i``: segment ``i`` of a fused row)."""

    q: tuple[str, ...]
    k: tuple[str, ...]
    v: tuple[str, ...]
    o: tuple[str, ...]
    rope: Literal["rotate_half", "interleaved", "none"]
    rotary_fraction: tuple[str, ...] = ()  # config keys of the fraction of head_dim that RoPE rotates
    stops_qk_maps: tuple[str, ...] = ()  # tensors between the q/k projections and RoPE (q/k-norm gains)
    fused: Literal["segments", "per_head"] = "segments"  # what ``@i`` picks: a row's segment, or a part of each head
    rotary_default: float = 1.0  # the fraction where the config names none (the model class's default)
    stops_head_maps: tuple[str, ...] = ()  # config keys that, set (not null), act on q/k/v coordinates one by one

    def head_maps_stopped_by(self, config: dict[str, Any]) -> str | None:
        """``key=value`` of the first config key in ``stops_head_maps`` that is set (OLMo's ``clip_qkv``: q, k, v
        clamped coordinate by coordinate, so no map inside a head keeps the function), else None."""
        cfg = config.get("text_config", config)
        for key in self.stops_head_maps:
            if cfg.get(key) is not None:
                return f"{key}={cfg[key]!r}"
        return None

    def rotary_dims(self, config: dict[str, Any], head_dim: int) -> int:
        """How many leading dims of each head RoPE rotates (0 without RoPE; even)."""
        if self.rope == "none":
            return 0
        cfg = config.get("text_config", config)
        for key in self.rotary_fraction:  # a dotted key reads a nested dict (rope_parameters.partial_rotary_factor)
            v: Any = cfg
            for part in key.split("."):
                v = v.get(part) if isinstance(v, dict) else None
            if v is not None:
                return int(head_dim * float(v)) // 2 * 2
        return int(head_dim * self.rotary_default) // 2 * 2


@dataclass(frozen=True)
class HiddenSpec:
    model_type: str
    mlp_signs: bool
    rules: tuple[HiddenRule, ...]
    prefixes: tuple[str, ...]
    dim_keys: dict[str, tuple[str, ...]]
    folds: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = ()
    attention: AttentionSpec | None = None

    def fold_targets(self, gain_name: str) -> list[str] | None:
        """The readers a norm gain folds into (``W' = W diag(g)``), or None when the table names none."""
        for pattern, into in self.folds:
            m = pattern.fullmatch(gain_name)
            if m:
                layer = m.groupdict().get("layer")
                return [t.replace("{layer}", layer) if layer is not None else t for t in into]
        return None

    def fold_plan(self, gain_names: Iterable[str], have: Collection[str]
                  ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """For each norm gain, the readers it folds into; and, apart, the gains whose readers are not all in
        ``have`` (an output head tied to the embedding), with the missing ones. A gain the table names no
        fold for is an error."""
        readers: dict[str, list[str]] = {}
        missing: dict[str, list[str]] = {}
        for gain in gain_names:
            targets = self.fold_targets(gain)
            if targets is None:
                raise ArchitectureError(f"the {self.model_type!r} table says nothing about folding {gain}")
            absent = [t for t in targets if t not in have]
            if absent:
                missing[gain] = absent
            else:
                readers[gain] = targets
        return readers, missing

    def match(self, name: str) -> tuple[HiddenRule, int] | None:
        """The hidden rule claiming ``name`` and the layer index, or None (no hidden axis)."""
        candidates = [name] + [name[len(p):] for p in self.prefixes if name.startswith(p)]
        hits = []
        for r in self.rules:
            for c in candidates:
                m = r.pattern.fullmatch(c)
                if m:
                    hits.append((r, int(m.group("layer"))))
                    break
        if len(hits) > 1:
            raise ArchitectureError(f"parameter {name!r} is claimed by several hidden rows of the "
                                    f"{self.model_type!r} table: " + ", ".join(h[0].template for h in hits))
        return hits[0] if hits else None

    def dims(self, config: dict[str, Any], d_model: int) -> HiddenDims:
        """Hidden sizes from a ``config.json`` dict (validated: positive, heads divisible into groups)."""
        cfg = config.get("text_config", config)

        def pick(key: str) -> int | None:
            for k in self.dim_keys[key]:
                v = cfg.get(k)
                if v is not None:
                    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                        raise ArchitectureError(f"config.json: {k}={v!r} is not a positive integer")
                    return int(v)
            return None

        n_layers = cfg.get("num_hidden_layers", cfg.get("n_layer"))
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers <= 0:
            raise ArchitectureError(f"config.json: number of layers {n_layers!r} is not a positive integer")
        n_heads = pick("n_heads")
        if n_heads is None:
            raise ArchitectureError("config.json names no number of attention heads",
                                    hint="expected one of " + ", ".join(self.dim_keys["n_heads"]))
        n_kv = pick("n_kv_heads") or n_heads
        head_dim = pick("head_dim") or d_model // n_heads
        mlp = pick("mlp") or 4 * d_model
        if n_heads % n_kv:
            raise ArchitectureError(f"config.json: {n_heads} attention heads do not split into {n_kv} key/value groups")
        return HiddenDims(int(n_layers), mlp, n_heads, n_kv, head_dim)


def has_hidden(model_type: str) -> bool:
    return _hidden_rows_apply(_raw_table(get_spec(model_type).table or model_type))


def _hidden_rows_apply(raw: dict) -> bool:
    """A table's hidden rows, unless it wraps its text model in a config section (a multimodal
    wrapper inherits the text table's rows, whose dimensions it keeps elsewhere)."""
    return "hidden" in raw and not raw.get("config", {}).get("section")


def get_hidden_spec(model_type: str) -> HiddenSpec:
    """The hidden-axis rows of ``model_type``; a clear error when its table has none."""
    return _load(get_spec(model_type).model_type)


def families_with_hidden() -> list[str]:
    from gaugeport.core.archspec import supported_architectures

    return [m for m in supported_architectures() if has_hidden(m)]


@cache
def _load(model_type: str) -> HiddenSpec:
    raw = _raw_table(model_type)
    if not _hidden_rows_apply(raw):
        raise ArchitectureError(
            f"the {model_type!r} table has no hidden-axis rows (MLP units, attention heads), so the full-network "
            "gauge is not defined for it",
            hint="this needs the full gauge (apply --full, merge --full, same, canonicalize, fingerprint); residual "
            "gauges work (apply without --full, align, verify, transport). To support it, add a \"hidden\" section "
            f"to src/gaugeport/core/architectures/{model_type}.json (see gaugeport/core/hidden.py)")
    hidden = raw["hidden"]
    where = f"{model_type}.hidden"
    _check_keys(hidden, _HIDDEN_KEYS, where)
    macros = {**raw.get("macros", {}), **hidden.get("macros", {})}
    dim_keys = dict(DEFAULT_DIM_KEYS)
    for k, v in hidden.get("dims", {}).items():
        if k not in _DIM_KEYS or not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ArchitectureError(f"{where}.dims: {k!r} must be one of {sorted(_DIM_KEYS)} with a list of keys")
        dim_keys[k] = tuple(v)
    mlp_signs = hidden.get("mlp_signs", False)
    if not isinstance(mlp_signs, bool):
        raise ArchitectureError(f"{where}.mlp_signs must be true or false")
    rules = []
    for row in hidden.get("rows", []):
        _check_keys(row, _ROW_KEYS, f"{where}: row {row.get('name')}")
        axis = row.get("axis")
        if isinstance(axis, bool) or not isinstance(axis, int) or axis < 0:
            raise ArchitectureError(f"{where}: row {row.get('name')} needs a non-negative integer axis")
        segs = []
        for s in row.get("segments", []):
            m = _SEGMENT.fullmatch(s) if isinstance(s, str) else None
            if m is None:
                raise ArchitectureError(f"{where}: row {row['name']} has a bad segment {s!r}",
                                        hint="segments: mlp:signed, mlp:abs, q_heads, kv_heads, q_heads*3, q_heads[1]")
            kind, mult, one_per_head, mode = m.group(1), int(m.group(2) or 1), bool(m.group(3)), m.group(4) or "abs"
            if kind == "mlp" and one_per_head:
                raise ArchitectureError(f"{where}: row {row['name']}: [1] (one slice per head) is for heads only")
            if kind != "mlp" and mode == "signed":
                raise ArchitectureError(f"{where}: row {row['name']}: heads are permuted, never signed")
            if mode == "signed" and not mlp_signs:
                raise ArchitectureError(f"{where}: row {row['name']} signs MLP units but mlp_signs is false")
            segs.append(Segment(kind, mult, mode, one_per_head))  # type: ignore[arg-type]
        if not segs:
            raise ArchitectureError(f"{where}: row {row['name']} lists no segments")
        rules.append(HiddenRule(row["name"], axis, tuple(segs), _template_regex(row["name"], macros, model_type)))
    if not rules:
        raise ArchitectureError(f"{where} has no rows")
    folds = []
    for f in hidden.get("folds", []):
        _check_keys(f, _FOLD_KEYS, f"{where}.folds")
        into = f.get("into")
        if not isinstance(f.get("gain"), str) or not isinstance(into, list) or \
                not all(isinstance(x, str) for x in into):
            raise ArchitectureError(f"{where}.folds: each fold needs a gain template and a list of readers")
        folds.append((_template_regex(f["gain"], macros, model_type, need_layer=False), tuple(into)))
    return HiddenSpec(model_type, mlp_signs, tuple(rules), tuple(raw.get("prefixes", ())) + tuple(
        src for src, to in raw.get("prefix_aliases", {}).items() if src and to == ""), dim_keys, tuple(folds),
        _attention(hidden.get("attention"), f"{where}.attention"))


def _attention(raw: Any, where: str) -> AttentionSpec | None:
    if raw is None:
        return None
    _check_keys(raw, _ATTENTION_KEYS, where)

    def strings(key: str, required: bool) -> tuple[str, ...]:
        v = raw.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v) or (required and not v):
            raise ArchitectureError(f"{where}.{key} must be a {'non-empty ' if required else ''}list of strings")
        return tuple(v)

    if raw.get("rope") not in ROPE_LAYOUTS:
        raise ArchitectureError(f"{where}.rope must be one of {', '.join(ROPE_LAYOUTS)}, got {raw.get('rope')!r}")
    fused = raw.get("fused", "segments")
    if fused not in FUSED_LAYOUTS:
        raise ArchitectureError(f"{where}.fused must be one of {', '.join(FUSED_LAYOUTS)}, got {fused!r}")
    default = raw.get("rotary_default", 1.0)
    if isinstance(default, bool) or not isinstance(default, (int, float)) or not 0 < default <= 1:
        raise ArchitectureError(f"{where}.rotary_default must be a fraction in (0, 1], got {default!r}")
    return AttentionSpec(strings("q", True), strings("k", True), strings("v", True), strings("o", True),
                         raw["rope"], strings("rotary_fraction", False), strings("stops_qk_maps", False),
                         fused, float(default), strings("stops_head_maps", False))


def _template_regex(template: str, macros: dict[str, list[str]], model_type: str,
                    need_layer: bool = True) -> re.Pattern[str]:
    out = []
    for part in re.split(r"(\{\w+\})", template):
        m = re.fullmatch(r"\{(\w+)\}", part)
        if not m:
            out.append(re.escape(part))
        elif m.group(1) == "layer":
            out.append(r"(?P<layer>\d+)")
        elif m.group(1) in macros:
            out.append("(?:" + "|".join(re.escape(v) for v in macros[m.group(1)]) + ")")
        else:
            raise ArchitectureError(f"{model_type}: hidden template {template!r} uses undefined macro {part}")
    if need_layer and "(?P<layer>" not in "".join(out):
        raise ArchitectureError(f"{model_type}: hidden template {template!r} has no {{layer}}")
    return re.compile("".join(out))


def _check_keys(obj: Any, allowed: set[str], where: str) -> None:
    if not isinstance(obj, dict):
        raise ArchitectureError(f"{where}: expected a JSON object")
    unknown = set(obj) - allowed
    if unknown:
        raise ArchitectureError(f"{where}: unknown key(s) {sorted(unknown)} in architecture table")
