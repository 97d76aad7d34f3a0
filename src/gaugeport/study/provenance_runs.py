"""Small, seeded training runs for provenance checks: independent seeds and fine-tunes of one base.

Used by the provenance tests and benchmark; it trains with the study's loop, so it lives in the study.
A Llama-style model with grouped-query attention (generic norm gains), trained with AdamW on the
built-in corpus. Everything is deterministic for its seeds.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from gaugeport.models.tiny import tiny_model


@dataclass(frozen=True)
class TinyRun:
    d_model: int = 32
    d_ff: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    seq_len: int = 32
    batch_size: int = 8
    lr: float = 3e-3


def fresh_model(seed: int, run: TinyRun = TinyRun()) -> torch.nn.Module:
    from gaugeport.study.corpus import tokenizer

    return tiny_model("llama", seed, hidden_size=run.d_model, intermediate_size=run.d_ff,
                      num_attention_heads=run.n_heads, num_key_value_heads=run.n_kv_heads,
                      head_dim=run.d_model // run.n_heads, num_hidden_layers=run.n_layers,
                      vocab_size=tokenizer().vocab_size, max_position_embeddings=run.seq_len,
                      tie_word_embeddings=False)


def train(model: torch.nn.Module, steps: int, data_seed: int, run: TinyRun = TinyRun(),
          lr: float | None = None) -> list[float]:
    """``steps`` AdamW steps of next-token loss on the built-in corpus (seeded); the model is trained in place."""
    from gaugeport.study.config import TrainConfig
    from gaugeport.study.models import train_lm

    torch.manual_seed(data_seed)
    tc = TrainConfig(steps=steps, batch_size=run.batch_size, lr=lr if lr is not None else run.lr, warmup=10)
    return train_lm(model, tc, data_seed, run.seq_len, progress=False)


def trained(seed: int, steps: int, run: TinyRun = TinyRun()) -> torch.nn.Module:
    """A model initialised with ``seed`` and trained ``steps`` steps on data seeded by ``seed``."""
    m = fresh_model(seed, run)
    train(m, steps, data_seed=1000 + seed, run=run)
    return m


def finetuned(base: torch.nn.Module, steps: int, data_seed: int, run: TinyRun = TinyRun(),
              lr: float = 1e-3) -> torch.nn.Module:
    """A copy of ``base`` trained ``steps`` more steps on other data."""
    m = copy.deepcopy(base)
    train(m, steps, data_seed=data_seed, run=run, lr=lr)
    return m


def healed(model: torch.nn.Module, steps: int, data_seed: int, lr: float = 1e-3) -> torch.nn.Module:
    """A copy of ``model`` trained ``steps`` more steps on the built-in corpus (a short healing run)."""
    from gaugeport.provenance.derivations import _n_layers

    m = copy.deepcopy(model)
    c = m.config
    run = TinyRun(d_model=int(c.hidden_size), d_ff=int(c.intermediate_size), n_layers=_n_layers(m),
                  n_heads=int(c.num_attention_heads), n_kv_heads=int(c.num_key_value_heads),
                  seq_len=int(c.max_position_embeddings))
    m.train()
    train(m, steps, data_seed=data_seed, run=run, lr=lr)
    m.eval()
    return m
