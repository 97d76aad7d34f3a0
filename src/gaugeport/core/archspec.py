"""Architecture gauge tables: which stored tensors read or write the residual stream.

Each supported architecture is one JSON file in ``gaugeport/core/architectures/`` (data, not code).
A row names a parameter by template (``model.layers.{layer}.mlp.down_proj.weight``; other
``{macro}`` placeholders expand to the alternatives listed under ``macros``) and gives its
``role`` and the *stored* axis that carries the residual coordinates:

==============  ======  =====================================================================
role            mode    meaning
==============  ======  =====================================================================
``read``        signed  matrix that reads the stream (q/k/v/gate/up, lm_head); W' = W M^T
``write``       signed  matrix that writes the stream (embeddings, o_proj, down_proj); W' = M W
``read_write``  signed  both axes are residual-like (BERT's MLM transform); ``axis`` is a list
``write_bias``  signed  bias added to the stream
``norm_bias``   signed  LayerNorm bias (added after normalisation, so it moves with the stream)
``gain``        abs     norm gain: permuted, never signed (Gemma's ``1 + w`` too)
``untouched``   none    off the residual axis (q/k/v biases, q/k-norm over head_dim, buffers)
==============  ======  =====================================================================

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
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Literal

from gaugeport.core.errors import ArchitectureError
from gaugeport.core.gauge import Mode

Role = Literal["read", "write", "read_write", "write_bias", "norm_bias", "gain", "untouched"]
ROLE_MODE: dict[str, Mode] = {
    "read": "signed",
    "write": "signed",
    "read_write": "signed",
    "write_bias": "signed",
    "norm_bias": "signed",
    "gain": "abs",
    "untouched": "none",
}
_TABLE_KEYS = {
    "model_type", "extends", "norm", "gain_offset", "embed_scale", "auto_class", "prefixes",
    "params", "params_extra", "macros", "sites",
    "hidden",  # MLP-unit and attention-head rows of the full-network gauge (parsed by core/hidden.py)
}
_ROW_KEYS = {"name", "role", "axis", "optional", "why", "blocks"}
_INDEX_PLACEHOLDERS = {"layer", "expert", "index"}  # each matches any decimal index
_SITE_KEYS = {"layers", "mid", "final"}
_HOOK_KEYS = {"module", "hook"}


@dataclass(frozen=True)
class ParamRule:
    template: str
    role: Role
    axes: tuple[int, ...]
    optional: bool
    pattern: re.Pattern[str] = field(repr=False, compare=False)
    blocks: tuple[int, ...] = ()  # residual vectors concatenated along each axis; () means one each

    @property
    def mode(self) -> Mode:
        return ROLE_MODE[self.role]

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
class ArchSpec:
    model_type: str
    norm: Literal["rms", "layer"]
    rules: tuple[ParamRule, ...]
    sites: SiteSpec
    gain_offset: float = 0.0
    embed_scale: str | None = None
    auto_class: str = "AutoModelForCausalLM"
    prefixes: tuple[str, ...] = ()

    @property
    def group(self) -> str:
        """The gauge group for generic gains."""
        return "B_d" if self.norm == "rms" else "S_d x {+-1}"

    @property
    def allows_coordinate_signs(self) -> bool:
        return self.norm == "rms"

    def classify(self, name: str) -> ParamRule:
        """The unique rule claiming ``name``; an error naming the parameter when none or several do."""
        candidates = [name] + [name[len(p):] for p in self.prefixes if name.startswith(p)]
        hits = [r for r in self.rules if any(r.pattern.fullmatch(c) for c in candidates)]
        if not hits:
            raise ArchitectureError(
                f"parameter {name!r} is not classified by the {self.model_type!r} gauge table",
                hint="this checkpoint has a tensor gaugeport does not know how to transform; "
                "add a row to the architecture table (src/gaugeport/core/architectures/"
                f"{self.model_type}.json) rather than skipping it",
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
                hint=f"add rows to src/gaugeport/core/architectures/{self.model_type}.json; nothing is skipped",
            )
        claimed = {r.template for r in out.values()}
        unmatched = [r.template for r in self.rules if not r.optional and r.template not in claimed]
        if unmatched:
            raise ArchitectureError(
                f"checkpoint lacks tensors the {self.model_type!r} table requires: {', '.join(unmatched[:5])}",
                hint="is config.json's model_type right for these weights?",
            )
        return out


# --------------------------------------------------------------------- loading
def supported_architectures() -> list[str]:
    return sorted(p.name[: -len(".json")] for p in resources.files("gaugeport.core.architectures").iterdir()
                  if p.name.endswith(".json"))


_ALIASES = {"gemma3": "gemma3_text"}


def get_spec(model_type: str) -> ArchSpec:
    """The gauge table for ``model_type`` (as in a HF ``config.json``)."""
    return _load(_ALIASES.get(model_type, model_type))


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
    return ArchSpec(
        model_type=model_type,
        norm=_norm(raw, model_type),
        rules=tuple(_compile_rows(raw, model_type)),
        sites=SiteSpec(sites["layers"], _hook(sites.get("mid"), model_type), _hook(sites.get("final"), model_type)),
        gain_offset=float(raw.get("gain_offset", 0.0)),
        embed_scale=raw.get("embed_scale"),
        auto_class=raw.get("auto_class", "AutoModelForCausalLM"),
        prefixes=tuple(raw.get("prefixes", ())),
    )


def _raw_table(model_type: str) -> dict[str, Any]:
    """Read one table, resolving ``extends`` (the child's keys win; ``params_extra`` appends)."""
    if model_type not in supported_architectures():
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
        extra = raw.pop("params_extra", [])
        merged = {**parent, **{k: v for k, v in raw.items() if k != "extends"}}
        merged["params"] = parent["params"] + parent.get("params_extra", []) + extra
        merged["macros"] = {**parent.get("macros", {}), **raw.get("macros", {})}
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
        if role not in ROLE_MODE:
            raise ArchitectureError(f"{model_type}: row {row['name']} has unknown role {role!r}")
        axis = row.get("axis")
        axes = () if role == "untouched" else tuple(axis if isinstance(axis, list) else [axis])
        if role != "untouched" and any(not isinstance(a, int) for a in axes):
            raise ArchitectureError(f"{model_type}: row {row['name']} (role {role}) needs an integer axis")
        blocks = tuple(row.get("blocks", ()))
        if blocks and (len(blocks) != len(axes) or any(not isinstance(b, int) or b < 1 for b in blocks)):
            raise ArchitectureError(f"{model_type}: row {row['name']} needs one positive integer in 'blocks' per axis")
        rules.append(ParamRule(row["name"], role, axes, bool(row.get("optional", False)),
                               _template_regex(row["name"], macros, model_type), blocks))
    return rules


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
