"""The facts gaugeport reads from a model's config, in one place.

Hidden size, layer count, vocabulary and special token ids sit under different keys per family
(``n_embd`` in GPT-2) and, in multimodal wrappers, inside a sub-config (``text_config``). The
architecture table says where (its ``config`` entry); :meth:`ModelFacts.from_config` reads them,
from a ``config.json`` dict or a transformers ``PretrainedConfig`` alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gaugeport.core.archspec import ArchSpec, spec_for_config
from gaugeport.core.errors import ArchitectureError

SPECIAL_TOKEN_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id")


@dataclass(frozen=True)
class ModelFacts:
    model_type: str
    spec: ArchSpec
    d_model: int
    n_layers: int
    vocab_size: int | None
    special_ids: frozenset[int]  # pad / bos / eos (masked out of statistics)
    pad_id: int | None
    tie_word_embeddings: bool | None  # None: the config does not say
    architectures: tuple[str, ...]  # config.architectures: the class the checkpoint was saved from

    @classmethod
    def from_config(cls, config: Any) -> ModelFacts:
        """Facts of a ``config.json`` dict or a ``PretrainedConfig``; the table names the keys."""
        top = _as_dict(config)
        spec = spec_for_config(top)
        keys = spec.config_keys
        cfg = top
        if keys.section is not None:
            section = top.get(keys.section)
            if not isinstance(section, Mapping):
                raise ArchitectureError(f"{spec.model_type} config has no {keys.section!r} section",
                                        hint="the architecture table expects the text model's facts there")
            cfg = dict(section)
        d = _int(cfg, keys.hidden_size, spec, "hidden size")
        if d is None or d <= 0:
            raise ArchitectureError(f"{spec.model_type} config names no hidden size ({' / '.join(keys.hidden_size)})",
                                    hint="is config.json complete?")
        layers = _int(cfg, keys.num_layers, spec, "layer count") or 0
        vocab = _int(cfg, keys.vocab_size, spec, "vocabulary size")
        specials: set[int] = set()
        for k in SPECIAL_TOKEN_KEYS:
            for src in (cfg, top):
                v = src.get(k)
                specials |= {int(x) for x in (v if isinstance(v, list | tuple) else [v])
                             if isinstance(x, int) and not isinstance(x, bool)}
        pad = cfg.get("pad_token_id", top.get("pad_token_id"))
        tie = top.get("tie_word_embeddings", cfg.get("tie_word_embeddings"))
        arch = top.get("architectures") or ()
        return cls(str(top["model_type"]), spec, d, layers, vocab if vocab and vocab > 0 else None,
                   frozenset(specials), pad if isinstance(pad, int) and not isinstance(pad, bool) else None,
                   bool(tie) if tie is not None else None,
                   tuple(str(a) for a in arch) if isinstance(arch, list | tuple) else ())


def facts_of(model: Any) -> ModelFacts:
    """:meth:`ModelFacts.from_config` of an ``nn.Module``'s ``config``."""
    config = getattr(model, "config", None)
    if config is None:
        raise ArchitectureError(f"{type(model).__name__} has no .config; gaugeport needs a transformers model")
    return ModelFacts.from_config(config)


def _as_dict(config: Any) -> dict[str, Any]:
    if isinstance(config, Mapping):
        return dict(config)
    to_dict = getattr(config, "to_dict", None)
    if to_dict is None:
        raise ArchitectureError(f"expected a config dict or a transformers config, got {type(config).__name__}")
    return to_dict()


def _int(cfg: Mapping[str, Any], keys: tuple[str, ...], spec: ArchSpec, what: str) -> int | None:
    for k in keys:
        v = cfg.get(k)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or int(v) != v or v < 0:
            raise ArchitectureError(f"{spec.model_type} config: {k}={v!r} is not a valid {what}")
        return int(v)
    return None
