"""The table language itself: every field is read by something, and the facts come from one place."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import transformers

from gaugeport.core import archspec
from gaugeport.core.archspec import ArchSpec, ConfigKeys, ParamRule, get_spec, supported_architectures, table_names
from gaugeport.core.errors import ArchitectureError
from gaugeport.core.facts import ModelFacts
from gaugeport.models.tiny import tiny_config

SRC = Path(archspec.__file__).resolve().parents[1]
# keys the loader consumes while reading a table (they become other fields, or are documentation)
LOADER_KEYS = {"model_type", "extends", "params", "params_extra", "macros", "sites", "why", "name", "role",
               "axis", "optional", "embedding", "tied_to", "config", "aliases", "prefix_aliases",
               "hidden"}  # "hidden": the full-network gauge's rows, read by gaugeport.core.hidden


def _reads(attr: str) -> int:
    """Attribute reads ``.attr`` anywhere in src/ (the dataclass definitions only assign, never read)."""
    pat = re.compile(rf"\.{attr}\b")
    return sum(len(pat.findall(p.read_text())) for p in SRC.rglob("*.py"))


@pytest.mark.parametrize("cls", [ArchSpec, ParamRule, ConfigKeys])
def test_every_table_field_has_a_reader(cls):
    unread = [f.name for f in dataclasses.fields(cls) if _reads(f.name) == 0]
    assert not unread, f"{cls.__name__} fields nothing reads (dead data in the tables): {unread}"


def test_every_table_key_becomes_a_field_or_is_consumed_by_the_loader():
    fields = {f.name for c in (ArchSpec, ParamRule, ConfigKeys) for f in dataclasses.fields(c)}
    keys = archspec._TABLE_KEYS | archspec._ROW_KEYS | archspec._CONFIG_KEYS
    renamed = {"name": "template", "axis": "axes", "prefix_aliases": "prefix_aliases", "config": "config_keys",
               "num_layers": "num_layers"}
    orphans = [k for k in keys if k not in fields and renamed.get(k) not in fields and k not in LOADER_KEYS]
    assert not orphans


def test_the_reader_test_can_fail():
    assert _reads("embed_scale") == 0  # the field this test removed: nothing ever read it


@pytest.mark.parametrize("model_type", ["gemma", "gemma2", "gemma3_text", "qwen3"])
def test_llama_derived_tables_extend_rather_than_copy(model_type):
    text = (SRC / "core" / "architectures" / f"{model_type}.json").read_text()
    assert '"extends"' in text and "embed_tokens" not in text
    llama = {r.template for r in get_spec("llama").rules}
    assert llama <= {r.template for r in get_spec(model_type).rules}


def test_aliases_are_data_and_serve_the_parent_table():
    assert "mistral" in supported_architectures() and "mistral" not in table_names()
    spec = get_spec("mistral")
    assert spec.model_type == "mistral" and spec.table == "llama"


def test_every_table_flags_its_token_embedding_and_ties_heads_to_a_row():
    for model_type in table_names():
        spec = get_spec(model_type)
        assert len(spec.embedding_rules("token")) == 1, model_type
        for head in spec.embedding_rules("output"):
            assert spec.rule(head.tied_to).embedding == "token", model_type


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "bert", "gemma3"])
def test_model_facts_from_a_config_object_and_its_json_agree(model_type):
    cfg = tiny_config(model_type)
    a, b = ModelFacts.from_config(cfg), ModelFacts.from_config(cfg.to_dict())
    assert a == b and a.d_model == 32 and a.n_layers == 2 and a.vocab_size == 96
    assert {0, 1, 2} <= a.special_ids or model_type == "gemma3"


def test_model_facts_reject_a_nonsense_hidden_size():
    with pytest.raises(ArchitectureError, match="hidden size"):
        ModelFacts.from_config({"model_type": "llama", "hidden_size": "many", "num_hidden_layers": 2})


def test_unknown_embedding_kind_is_refused():
    raw = {"params": [{"name": "x.weight", "role": "write", "axis": 1, "embedding": "vocab"}]}
    with pytest.raises(ArchitectureError, match="embedding"):
        archspec._compile_rows(raw, "test")


def test_transformers_knows_every_task_class():
    for model_type in table_names():
        assert hasattr(transformers, get_spec(model_type).task_class)
