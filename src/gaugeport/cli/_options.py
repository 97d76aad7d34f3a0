"""Option types shared by the verbs: one spelling, one help text."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ForceOpt = Annotated[bool, typer.Option("--force", help="replace an existing output")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N: where the model blocks run "
                                                          "(streamed one block at a time)")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="no progress bar")]
GaugeOpt = Annotated[Path, typer.Option("--gauge", help="gauge mapping A's coordinates to B's "
                                                        "(as `gaugeport align A B` writes it)")]

# token data (see gaugeport.estimate.pipeline.DataOptions)
DataOpt = Annotated[str | None, typer.Option(
    "--data", help="token ids .npy [n_seq, len], a .txt/.jsonl file, a datasets.save_to_disk dir, or 'builtin'")]
TokensOpt = Annotated[int, typer.Option("--tokens", help="token positions to feed both models")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="sequences per forward pass")]
SeqOpt = Annotated[int, typer.Option("--seq-len", help="tokens per sequence")]
SeedOpt = Annotated[int, typer.Option("--seed", help="seed of the sequence order / built-in corpus")]
TokenizerOpt = Annotated[Path | None, typer.Option("--tokenizer", help="tokenizer dir for text data "
                                                                        "(default: A's own)")]
SiteOpt = Annotated[list[str] | None, typer.Option(
    "--site", help="residual site (embed, resid_mid.L, resid_post.L, resid_pre.L, final, all); repeatable")]

# where activations are collected
RayOpt = Annotated[str | None, typer.Option("--ray", help="collect with Ray: local, auto or a cluster address")]
WorkersOpt = Annotated[int, typer.Option("--workers", help="Ray workers")]
