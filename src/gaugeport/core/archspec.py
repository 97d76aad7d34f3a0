"""Architecture gauge tables: which stored tensors read or write the residual stream.

Each supported architecture is one JSON file in ``gaugeport/core/architectures/`` (data, not code).
A row names a parameter by template (``model.layers.{layer}.mlp.down_proj.weight``; other
``{macro}`` placeholders expand to the alternatives listed under ``macros``) and gives its
``role`` and the *stored* axis that carries the residual coordinates:

=================  ==============  ================================================================
role               modes per axis  meaning
=================  ==============  ================================================================
``read``           signed          matrix that reads the stream (q/k/v/gate/up, lm_head); W' = W M^T
``write``          signed          matrix that writes the stream (embeddings, o_proj, down_proj); W' = M W
``read_write``     signed, signed  both axes are residual-like; ``axis`` is a list
``read_permute``   signed, abs     reads the stream (first axis) and writes a space that is only
                                   permuted (second axis): a non-odd activation (GELU) follows
``permute``        abs             a vector on such a permuted-only space (that matrix's bias)
``write_bias``     signed          bias added to the stream
``norm_bias``      signed          LayerNorm bias (added after normalisation, so it moves with the stream)
``gain``           abs             norm gain of the stream: permuted, never signed (Gemma's ``1 + w`` too)
``signed_gain``    signed          gain of a norm that reads a permuted-only space and whose output is
                                   read as the stream again (the sign re-enters there)
``untouched``      none            off the residual axis (q/k/v biases, q/k-norm over head_dim, buffers)
=================  ==============  ================================================================

Row flags: ``optional`` (a config switch can drop the tensor: biases, buffers, untied heads),
``embedding`` (``token``, ``position``, ``token_type`` or ``output``: which vocabulary-indexed matrix
the row is) and ``tied_to`` (the template of the tensor an output head shares storage with when tied).

Table keys beside ``params``: ``norm`` (``rms``/``layer``), ``gain_offset`` (stored gain = g - offset),
``extends`` (inherit a table; ``params_extra`` appends rows), ``aliases`` (other ``model_type`` values
this table serves), ``task_class`` (the head class to load when ``config.architectures`` names none),
``prefix_aliases`` (``{"on disk": "in the templates"}`` prefix rewrites: a bare base model without
``model.``, a multimodal wrapper's ``language_model.model.``), ``untouched_subtrees`` (prefixes whose
tensors are all off the stream, e.g. a vision tower), ``config`` (which ``config.json`` keys hold the
hidden size, layer count and vocabulary, and the ``section`` holding them, e.g. ``text_config``) and
``sites`` (where activation collection hooks in).

``{layer}``, ``{expert}`` and ``{index}`` match any index, so one row covers every block, every
expert of a published per-expert layout (``experts.{expert}.w1.weight``) and every per-head norm
(``q_layernorm.norms.{index}.weight``).
Fused mixture-of-experts tensors (``experts.gate_up_proj`` of shape ``[E, 2I, d]``) need nothing
special: the leading expert axis is just not named, and ``axis`` is the residual one.
An optional ``blocks`` list, parallel to ``axis``, says how many residual vectors are concatenated
along each named axis (default 1 each): DeepSeek's multi-token-prediction ``eh_proj`` reads
``[enorm(embedding); hnorm(hidden)]``, so its row is ``"axis": [0, 1], "blocks": [1, 2]`` and the
gauge acts on each ``d``-sized block of the input axis separately.

Files are validated strictly: an unknown key is an error, so no field can become dead data.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from typing import Any, Literal

from gaugeport.core.errors import ArchitectureError

# How a gauge acts on one residual axis of a tensor: signed permutation, permutation only, or not at all.
Mode = Literal["signed", "abs", "none"]
Role = Literal["read", "write", "read_write", "read_permute", "permute", "write_bias", "norm_bias", "gain",
               "signed_gain", "untouched"]
# The mode of each residual axis a role names, in the order of the row's ``axis`` list; a single mode
# applies to every axis the row names.
ROLE_MODES: dict[str, tuple[Mode, ...]] = {
    "read": ("signed",),
    "write": ("signed",),
    "read_write": ("signed",),
    "read_permute": ("signed", "abs"),
    "permute": ("abs",),
    "write_bias": ("signed",),
    "norm_bias": ("signed",),
    "gain": ("abs",),
    "signed_gain": ("signed",),
    "untouched": (),
}
EMBEDDING_KINDS = ("token", "position", "token_type", "output")
_TABLE_KEYS = {
    "model_type", "extends", "norm", "gain_offset", "task_class", "aliases", "prefix_aliases",
    "untouched_subtrees", "config", "params", "params_extra", "macros", "sites",
    "hidden",  # MLP-unit and attention-head rows of the full-network gauge (parsed by core/hidden.py)
}
_ROW_KEYS = {"name", "role", "axis", "optional", "embedding", "tied_to", "why", "blocks"}
_INDEX_PLACEHOLDERS = {"layer", "expert", "index"}  # each matches any decimal index
_SITE_KEYS = {"layers", "mid", "final"}
_HOOK_KEYS = {"module", "hook"}
_CONFIG_KEYS = {"section", "hidden_size", "num_layers", "vocab_size"}
CONFIG_DEFAULTS: dict[str, tuple[str, ...]] = {
    "hidden_size": ("hidden_size",),
    "num_layers": ("num_hidden_layers",),
    "vocab_size": ("vocab_size",),
}


@dataclass(frozen=True)
class ParamRule:
    template: str
    role: Role
    axes: tuple[int, ...]
    optional: bool
    pattern: re.Pattern[str] = field(repr=False, compare=False)
    embedding: str | None = None  # token / position / token_type / output
    tied_to: str | None = None  # template of the tensor an output head shares storage with when tied
    blocks: tuple[int, ...] = ()  # residual vectors concatenated along each axis; () means one each

    @property
    def modes(self) -> tuple[Mode, ...]:
        """The mode of each axis in ``axes`` (signed, or abs: permuted only)."""
        m = ROLE_MODES[self.role]
        return m * len(self.axes) if len(m) == 1 else m

    @property
    def mode(self) -> Mode:
        """The one mode of every axis; roles that mix modes must be read through ``modes``."""
        modes = set(ROLE_MODES[self.role])
        if len(modes) > 1:
            raise ArchitectureError(f"row {self.template} ({self.role}) mixes modes per axis; read .modes")
        return modes.pop() if modes else "none"

    @property
    def is_stream_gain(self) -> bool:
        """A norm gain on the residual stream (its values fingerprint the coordinates)."""
        return self.role == "gain"

    def blocks_on(self, i: int) -> int:
        """How many ``d``-sized residual blocks are concatenated along ``self.axes[i]``."""
        return self.blocks[i] if self.blocks else 1


@dataclass(frozen=True)
class HookPoint:
    module: str  # attribute path (relative to the layer for ``mid``)
    hook: Literal["input", "output"]


@dataclass(frozen=True)
class SiteSpec:
    """Where residual-stream sites hook in (used by activation collection)."""

    layers: str  # attribute path of the ModuleList of blocks
    mid: HookPoint | None  # resid_mid.L, relative to block L; None where the block has none
    final: HookPoint | None  # stream before the final norm; None: the last block's output


@dataclass(frozen=True)
class ConfigKeys:
    """Where a ``config.json`` keeps the facts gaugeport needs (read by ``ModelFacts.from_config``)."""

    section: str | None = None  # e.g. "text_config" in a multimodal wrapper
    hidden_size: tuple[str, ...] = CONFIG_DEFAULTS["hidden_size"]
    num_layers: tuple[str, ...] = CONFIG_DEFAULTS["num_layers"]
    vocab_size: tuple[str, ...] = CONFIG_DEFAULTS["vocab_size"]


@dataclass(frozen=True)
class ArchSpec:
    model_type: str
    norm: Literal["rms", "layer"]
    rules: tuple[ParamRule, ...]
    sites: SiteSpec
    gain_offset: float = 0.0
    task_class: str = "AutoModelForCausalLM"
    prefix_aliases: tuple[tuple[str, str], ...] = ()  # (prefix on disk / in memory, prefix in the templates)
    untouched_subtrees: tuple[str, ...] = ()
    config_keys: ConfigKeys = ConfigKeys()
    table: str = ""  # the JSON file (model_type, or the table an alias points to)

    @property
    def group(self) -> str:
        """The gauge group for generic gains."""
        return "B_d" if self.norm == "rms" else "S_d x {+-1}"

    @property
    def allows_coordinate_signs(self) -> bool:
        return self.norm == "rms"

    def canonical_names(self, name: str) -> list[str]:
        """``name`` and its spellings under the table's prefix aliases (the templates use one spelling)."""
        return [name] + [to + name[len(src):] for src, to in self.prefix_aliases if name.startswith(src)]

    def module_paths(self, path: str) -> list[str]:
        """A template-spelled module path and its spellings in the other layouts (inverse of the aliases)."""
        return [path] + [src + path[len(to):] for src, to in self.prefix_aliases if path.startswith(to)]

    def rule(self, template: str) -> ParamRule:
        """The row whose template is ``template``."""
        for r in self.rules:
            if r.template == template:
                return r
        raise ArchitectureError(f"the {self.model_type!r} table has no row {template!r}")

    def classify(self, name: str) -> ParamRule:
        """The unique rule claiming ``name``; an error naming the parameter when none or several do."""
        candidates = self.canonical_names(name)
        for sub in self.untouched_subtrees:
            if any(c.startswith(sub) for c in candidates):
                return ParamRule(sub + "*", "untouched", (), True, re.compile(re.escape(sub) + ".*"))
        hits = [r for r in self.rules if any(r.pattern.fullmatch(c) for c in candidates)]
        if not hits:
            raise ArchitectureError(
                f"parameter {name!r} is not classified by the {self.model_type!r} gauge table",
                hint="this checkpoint has a tensor gaugeport does not know how to transform; "
                "add a row to the architecture table (src/gaugeport/core/architectures/"
                f"{self.table or self.model_type}.json) rather than skipping it",
            )
        if len(hits) > 1:
            raise ArchitectureError(
                f"parameter {name!r} is claimed by several rows of the {self.model_type!r} table: "
                + ", ".join(r.template for r in hits)
            )
        return hits[0]

    def classify_all(self, names: list[str] | tuple[str, ...]) -> dict[str, ParamRule]:
        """Classify every name; all unclaimed names are reported together; required rows must match."""
        out: dict[str, ParamRule] = {}
        missing: list[str] = []
        for n in names:
            try:
                out[n] = self.classify(n)
            except ArchitectureError as exc:
                if "not classified" not in exc.message:
                    raise
                missing.append(n)
        if missing:
            raise ArchitectureError(
                f"{len(missing)} parameter(s) not classified by the {self.model_type!r} gauge table: "
                + ", ".join(missing[:8])
                + (" ..." if len(missing) > 8 else ""),
                hint=f"add rows to src/gaugeport/core/architectures/{self.table or self.model_type}.json; "
                "nothing is skipped",
            )
        claimed = {r.template for r in out.values()}
        unmatched = [r.template for r in self.rules if not r.optional and r.template not in claimed]
        if unmatched:
            raise ArchitectureError(
                f"checkpoint lacks tensors the {self.model_type!r} table requires: {', '.join(unmatched[:5])}",
                hint="is config.json's model_type right for these weights?",
            )
        return out

    def embedding_rules(self, kind: str) -> list[ParamRule]:
        """Rows flagged ``"embedding": kind`` (token, position, token_type, output)."""
        return [r for r in self.rules if r.embedding == kind]


# --------------------------------------------------------------------- loading
def table_names() -> list[str]:
    """The JSON tables shipped (one per architecture; aliases excluded)."""
    return sorted(p.name[: -len(".json")] for p in resources.files("gaugeport.core.architectures").iterdir()
                  if p.name.endswith(".json"))


def supported_architectures() -> list[str]:
    """Every ``model_type`` gaugeport knows: one per table plus the tables' ``aliases``."""
    return sorted(set(table_names()) | set(_alias_index()))


@cache
def _alias_index() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in table_names():
        raw = json.loads(resources.files("gaugeport.core.architectures").joinpath(f"{name}.json").read_text())
        for alias in raw.get("aliases", []):
            if alias in out or alias in table_names():
                raise ArchitectureError(f"model_type alias {alias!r} is declared twice (in {name}.json)")
            out[alias] = name
    return out


def get_spec(model_type: str) -> ArchSpec:
    """The gauge table for ``model_type`` (as in a HF ``config.json``; a table's ``aliases`` count)."""
    table = _alias_index().get(model_type, model_type)
    spec = _load(table)
    if table != model_type:
        spec = replace(spec, model_type=model_type)
    return spec


def spec_for_config(config: Any) -> ArchSpec:
    """Accepts a transformers ``PretrainedConfig`` or a ``config.json`` dict."""
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    if not model_type:
        raise ArchitectureError("config has no model_type", hint="is this a Hugging Face checkpoint directory?")
    return get_spec(model_type)


@cache
def _load(model_type: str) -> ArchSpec:
    raw = _raw_table(model_type)
    sites = raw["sites"]
    _check_keys(sites, _SITE_KEYS, f"{model_type}.sites")
    aliases = raw.get("prefix_aliases", {})
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise ArchitectureError(f"{model_type}: prefix_aliases must map prefix strings to prefix strings")
    return ArchSpec(
        model_type=model_type,
        norm=_norm(raw, model_type),
        rules=tuple(_compile_rows(raw, model_type)),
        sites=SiteSpec(sites["layers"], _hook(sites.get("mid"), model_type), _hook(sites.get("final"), model_type)),
        gain_offset=float(raw.get("gain_offset", 0.0)),
        task_class=raw.get("task_class", "AutoModelForCausalLM"),
        prefix_aliases=tuple(aliases.items()),
        untouched_subtrees=tuple(raw.get("untouched_subtrees", ())),
        config_keys=_config_keys(raw.get("config", {}), model_type),
        table=model_type,
    )


def _raw_table(model_type: str) -> dict[str, Any]:
    """Read one table, resolving ``extends`` (the child's keys win; ``params_extra`` appends; macros,
    prefix aliases and untouched subtrees merge). ``extends`` may name another table's alias."""
    model_type = _alias_index().get(model_type, model_type)
    if model_type not in table_names():
        raise ArchitectureError(
            f"unsupported architecture {model_type!r}",
            hint="supported: " + ", ".join(supported_architectures())
            + ". Adding one is a JSON table in src/gaugeport/core/architectures/ plus a test.",
        )
    raw = json.loads(resources.files("gaugeport.core.architectures").joinpath(f"{model_type}.json").read_text())
    _check_keys(raw, _TABLE_KEYS, model_type)
    if raw.get("model_type") != model_type:
        raise ArchitectureError(f"table {model_type}.json declares model_type={raw.get('model_type')!r}")
    if "extends" in raw:
        parent = _raw_table(raw["extends"])
        parent.pop("aliases", None)  # a parent's aliases name the parent, not the child
        extra = raw.pop("params_extra", [])
        merged = {**parent, **{k: v for k, v in raw.items() if k != "extends"}}
        merged["params"] = parent["params"] + parent.get("params_extra", []) + extra
        merged["macros"] = {**parent.get("macros", {}), **raw.get("macros", {})}
        merged["prefix_aliases"] = {**parent.get("prefix_aliases", {}), **raw.get("prefix_aliases", {})}
        merged["untouched_subtrees"] = parent.get("untouched_subtrees", []) + raw.get("untouched_subtrees", [])
        merged.pop("params_extra", None)
        return merged
    raw["params"] = raw["params"] + raw.pop("params_extra", [])
    return raw


def _compile_rows(raw: dict[str, Any], model_type: str) -> list[ParamRule]:
    macros: dict[str, list[str]] = raw.get("macros", {})
    rules = []
    for row in raw["params"]:
        _check_keys(row, _ROW_KEYS, f"{model_type}: row {row.get('name')}")
        role = row["role"]
        if role not in ROLE_MODES:
            raise ArchitectureError(f"{model_type}: row {row['name']} has unknown role {role!r}")
        axis = row.get("axis")
        axes = () if role == "untouched" else tuple(axis if isinstance(axis, list) else [axis])
        if role != "untouched" and any(not isinstance(a, int) for a in axes):
            raise ArchitectureError(f"{model_type}: row {row['name']} (role {role}) needs an integer axis")
        if len(ROLE_MODES[role]) > 1 and len(axes) != len(ROLE_MODES[role]):
            raise ArchitectureError(f"{model_type}: row {row['name']} (role {role}) needs "
                                    f"{len(ROLE_MODES[role])} axes, one per mode {ROLE_MODES[role]}")
        emb = row.get("embedding")
        if emb is not None and emb not in EMBEDDING_KINDS:
            raise ArchitectureError(f"{model_type}: row {row['name']} has embedding {emb!r}; "
                                    f"expected one of {', '.join(EMBEDDING_KINDS)}")
        blocks = tuple(row.get("blocks", ()))
        if blocks and (len(blocks) != len(axes) or any(not isinstance(b, int) or b < 1 for b in blocks)):
            raise ArchitectureError(f"{model_type}: row {row['name']} needs one positive integer in 'blocks' per axis")
        rules.append(ParamRule(row["name"], role, axes, bool(row.get("optional", False)),
                               _template_regex(row["name"], macros, model_type), emb, row.get("tied_to"), blocks))
    templates = {r.template for r in rules}
    for r in rules:
        if r.tied_to is not None and r.tied_to not in templates:
            raise ArchitectureError(f"{model_type}: row {r.template} is tied_to {r.tied_to!r}, which is no row")
    return rules


def _config_keys(raw: dict[str, Any], model_type: str) -> ConfigKeys:
    _check_keys(raw, _CONFIG_KEYS, f"{model_type}.config")

    def keys(name: str) -> tuple[str, ...]:
        v = raw.get(name, CONFIG_DEFAULTS[name])
        return (v,) if isinstance(v, str) else tuple(v)

    return ConfigKeys(raw.get("section"), keys("hidden_size"), keys("num_layers"), keys("vocab_size"))


def _template_regex(template: str, macros: dict[str, list[str]], model_type: str) -> re.Pattern[str]:
    parts = re.split(r"(\{\w+\})", template)
    out = []
    for part in parts:
        m = re.fullmatch(r"\{(\w+)\}", part)
        if not m:
            out.append(re.escape(part))
        elif m.group(1) in _INDEX_PLACEHOLDERS:
            out.append(r"\d+")
        elif m.group(1) in macros:
            out.append("(?:" + "|".join(re.escape(v) for v in macros[m.group(1)]) + ")")
        else:
            raise ArchitectureError(f"{model_type}: template {template!r} uses undefined macro {part}")
    return re.compile("".join(out))


def _hook(raw: dict[str, Any] | None, model_type: str) -> HookPoint | None:
    if raw is None:
        return None
    _check_keys(raw, _HOOK_KEYS, f"{model_type}.sites hook")
    if raw["hook"] not in ("input", "output"):
        raise ArchitectureError(f"{model_type}: hook must be 'input' or 'output', got {raw['hook']!r}")
    return HookPoint(raw["module"], raw["hook"])


def _norm(raw: dict[str, Any], model_type: str) -> Literal["rms", "layer"]:
    if raw.get("norm") not in ("rms", "layer"):
        raise ArchitectureError(f"{model_type}: norm must be 'rms' or 'layer', got {raw.get('norm')!r}")
    return raw["norm"]


def _check_keys(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(obj) - allowed
    if unknown:
        raise ArchitectureError(f"{where}: unknown key(s) {sorted(unknown)} in architecture table")
