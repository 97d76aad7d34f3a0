"""Shared by the library-side scripts (run inside each library's own virtual environment: no gaugeport here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

WORDS = 90  # word-level vocabulary w0..w89 plus specials: fits the tiny models' 96 tokens


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": 4 + i for i in range(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def pairs(n: int = 12) -> list[tuple[str, str]]:
    """Contrastive prompts: the same context ending in a 'positive' or a 'negative' word."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ctx = " ".join(f"w{int(i)}" for i in torch.randint(10, WORDS, (6,), generator=g))
        out.append((f"{ctx} w1 w2 w3", f"{ctx} w4 w5 w6"))
    return out


def probes() -> list[str]:
    g = torch.Generator().manual_seed(1)
    return [" ".join(f"w{int(i)}" for i in torch.randint(0, WORDS, (10,), generator=g)) for _ in range(4)]


def load(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()


def logits(model, tok, texts: list[str]) -> torch.Tensor:
    enc = tok(texts, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits


def write(path: str, payload: dict) -> None:
    Path(path).write_text(json.dumps(payload, indent=2))
    print(json.dumps(payload), file=sys.stderr)
