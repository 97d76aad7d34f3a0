"""Tiny models of the study and a plain torch training loop on the built-in corpus."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import transformers
from tqdm.auto import tqdm

from gaugeport.core.apply import apply_gauge_to_model
from gaugeport.core.gauge import SignedPermutation
from gaugeport.models.tiny import tiny_model
from gaugeport.study.config import ModelConfig, TrainConfig
from gaugeport.study.corpus import builtin_token_ids, tokenizer

Arch = Literal["llama", "gpt2"]
OnCheckpoint = Callable[[int, torch.nn.Module, torch.optim.Optimizer], None]


def build_model(arch: Arch, mc: ModelConfig, seed: int) -> torch.nn.Module:
    """A fresh model over the corpus vocabulary; gains start generic (B_d, not O(d), is the symmetry) and
    positive, as a trained model's usually are (training moves them; the report's figures rest on this)."""
    vocab = tokenizer().vocab_size
    if arch == "llama":
        return tiny_model("llama", seed, mixed_gain_signs=False, hidden_size=mc.d_model, intermediate_size=mc.d_ff,
                          num_attention_heads=mc.n_heads, num_key_value_heads=mc.n_heads,
                          head_dim=mc.d_model // mc.n_heads, num_hidden_layers=mc.n_layers,
                          vocab_size=vocab, max_position_embeddings=mc.seq_len)
    return tiny_model("gpt2", seed, mixed_gain_signs=False, n_embd=mc.d_model, n_inner=mc.d_ff, n_head=mc.n_heads,
                      n_layer=mc.n_layers, vocab_size=vocab, n_positions=mc.seq_len)


def corpus_batches(n_batches: int, batch_size: int, seq_len: int, seed: int) -> Iterator[torch.Tensor]:
    ids = torch.from_numpy(builtin_token_ids(n_batches * batch_size, seq_len, seed))
    yield from ids.split(batch_size)


Scheduler = torch.optim.lr_scheduler.LRScheduler


def make_optimizer(model: torch.nn.Module, tc: TrainConfig) -> tuple[torch.optim.AdamW, Scheduler]:
    """AdamW with the Hugging Face Trainer's parameter groups (weight decay, then none), so a saved
    ``optimizer.pt`` is a Trainer checkpoint's; linear warm-up, then a constant rate."""
    from gaugeport.transport.adamw import trainer_param_groups

    params = dict(model.named_parameters())
    decay, no_decay = trainer_param_groups(model)
    opt = torch.optim.AdamW([{"params": [params[n] for n, _ in decay], "weight_decay": tc.weight_decay},
                             {"params": [params[n] for n, _ in no_decay], "weight_decay": 0.0}], lr=tc.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / tc.warmup) if tc.warmup else 1.0)
    return opt, sched


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
               ids: torch.Tensor) -> float:
    """One next-token step (the model in train mode, left so); its loss."""
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return float(loss.detach())


def train_lm(model: torch.nn.Module, tc: TrainConfig, data_seed: int, seq_len: int, *,
             checkpoint_steps: tuple[int, ...] = (), on_checkpoint: OnCheckpoint | None = None,
             desc: str = "train", progress: bool = True, optimizer: torch.optim.AdamW | None = None,
             scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> list[float]:
    """Next-token training; ``on_checkpoint(step, model, optimizer)`` runs after each listed step."""
    if optimizer is None:
        optimizer, scheduler = make_optimizer(model, tc)
    model.train()
    losses = []
    batches = corpus_batches(tc.steps, tc.batch_size, seq_len, data_seed)
    bar = tqdm(batches, total=tc.steps, desc=desc, unit="step", disable=not progress, leave=False)
    for step, ids in enumerate(bar, start=1):
        losses.append(train_step(model, optimizer, scheduler, ids))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
        if on_checkpoint is not None and step in checkpoint_steps:
            model.eval()
            on_checkpoint(step, model, optimizer)
            model.train()
    model.eval()
    return losses


def save_model(model: torch.nn.Module, path: Path) -> Path:
    model.save_pretrained(str(path))
    return path


def load_model(path: Path) -> torch.nn.Module:
    from gaugeport.core.verify import load_model as _load

    return _load(path)


def in_gauge(model: torch.nn.Module, gauge: SignedPermutation) -> torch.nn.Module:
    """A copy of ``model`` rewritten in the coordinates of ``gauge`` (the original is untouched)."""
    return apply_gauge_to_model(copy.deepcopy(model), gauge)


def quiet_transformers() -> None:
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
