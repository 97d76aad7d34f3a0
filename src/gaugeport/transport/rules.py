"""The transport vocabulary: the artifact kinds, and how SAE tensors and Adam moments move (as data).

``rules.json`` beside this module holds rule rows in the vocabulary of the architecture tables
(``name``, ``role``, ``axis``, ``why``; see :mod:`gaugeport.core.archspec`), so an SAE's ``W_enc`` is a
``read`` on axis 0 as a model's ``q_proj`` is a ``read`` on axis 1. Adam moments are rows relative
to their parameter: ``param`` (as the parameter: signed for a matrix, permuted only for a gain),
``param_abs`` (permuted like the parameter, never signed) or ``kept``. The file is validated
strictly, by the same code as the architecture tables: an unknown key, role or rule is an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any, Literal

from gaugeport.core.archspec import Mode, ParamRule, _check_keys, _compile_rows
from gaugeport.core.errors import ArtifactError

Follows = Literal["param", "param_abs", "kept"]
_SECTIONS = {"sae", "sae_whitening", "adam_moments"}
_MOMENT_KEYS = {"name", "follows", "why"}


class ArtifactKind(StrEnum):
    """The artifact kinds, spelled once: detection, ``gaugeport transport --kind`` and the audit use these."""

    VECTOR = "vector"  # steering vectors, probe directions, control vectors
    SAE = "sae"  # an SAELens SAE or transcoder directory
    COORDINATES = "coordinates"  # top-k coordinate sets: indices, each with its sign
    ATTRIBUTIONS = "attributions"  # (coordinate, signed score) lists
    TRAINER_CHECKPOINT = "trainer-checkpoint"  # a Hugging Face Trainer checkpoint-N/ with AdamW state


@dataclass(frozen=True)
class MomentRule:
    """An optimizer moment, relative to the parameter it belongs to."""

    name: str
    follows: Follows
    why: str

    def mode(self, param_mode: Mode) -> Mode | None:
        """The mode the moment moves with (``None``: kept as it is, not even permuted)."""
        if self.follows == "kept":
            return None
        if self.follows == "param" or param_mode == "none":
            return param_mode
        return "abs"


def _raw() -> dict[str, Any]:
    raw = json.loads(resources.files("gaugeport.transport").joinpath("rules.json").read_text())
    _check_keys(raw, _SECTIONS, "transport rules.json")
    return raw


@cache
def tensor_rules(section: Literal["sae", "sae_whitening"]) -> dict[str, ParamRule]:
    """Tensor name -> its rule; rows are read (and validated) exactly as architecture table rows are."""
    rows = _compile_rows({"params": _raw()[section]}, f"rules.json {section}")
    return {r.template: r for r in rows}


@cache
def moment_rules() -> dict[str, MomentRule]:
    out = {}
    for row in _raw()["adam_moments"]:
        _check_keys(row, _MOMENT_KEYS, f"rules.json adam_moments: {row.get('name')}")
        if row["follows"] not in ("param", "param_abs", "kept"):
            raise ArtifactError(f"rules.json adam_moments: {row['name']} follows {row['follows']!r}")
        out[row["name"]] = MomentRule(row["name"], row["follows"], row.get("why", ""))
    return out
