"""Residual-stream readouts the study needs on labelled text: token activations at a site, class
mean differences (steering / probe directions), and next-token log-odds metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from gaugeport.study.corpus import PAD, encode_batch, tokenizer
from gaugeport.study.evaluate import site_activations


def site_name(layer: int) -> str:
    """The study's residual site: the stream leaving block ``layer``."""
    return f"resid_post.{layer}"


def token_residuals(model: torch.nn.Module, texts: Sequence[str], layer: int, last_only: bool = False) -> torch.Tensor:
    """Residual vectors of every real (non-pad) token of ``texts``, or of each text's last token."""
    ids, last = encode_batch(texts)
    h = site_activations(model, site_name(layer), torch.from_numpy(ids)).reshape(*ids.shape, -1)
    if last_only:
        return h[torch.arange(len(texts)), torch.from_numpy(last)]
    return h[torch.from_numpy(ids != tokenizer().token_id(PAD))]


def mean_difference(model: torch.nn.Module, layer: int, pos: Sequence[str], neg: Sequence[str],
                    last_only: bool = False) -> torch.Tensor:
    """Difference of class means of the stream: the classic steering / probe direction."""
    return (token_residuals(model, pos, layer, last_only).mean(0)
            - token_residuals(model, neg, layer, last_only).mean(0))


def log_odds(logits: torch.Tensor, up: Sequence[int], down: Sequence[int]) -> torch.Tensor:
    """Per-row log-odds of the ``up`` token class against the ``down`` class."""
    lp = torch.log_softmax(logits.double(), dim=-1)
    return torch.logsumexp(lp[:, list(up)], -1) - torch.logsumexp(lp[:, list(down)], -1)


def next_token_log_odds(texts: Sequence[str], up: Sequence[int], down: Sequence[int]
                        ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Token ids of ``texts`` and a metric on their logits: the mean next-token log-odds of ``up``
    against ``down`` after each text's last token (for the steering helpers of transport.evaluate)."""
    ids, last = encode_batch(texts)
    rows, cols = torch.arange(len(texts)), torch.from_numpy(last)
    return torch.from_numpy(ids), lambda logits: log_odds(logits[rows, cols], up, down).mean()
