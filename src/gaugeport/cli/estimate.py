"""Estimation verbs: ``collect`` (activation moments to a file) and ``align`` (estimate a gauge).

Both parse, call :mod:`gaugeport.estimate.pipeline` and print; the work lives in the library."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gaugeport.cli._app import app
from gaugeport.cli._options import (
    BatchOpt,
    DataOpt,
    DeviceOpt,
    ForceOpt,
    QuietOpt,
    RayOpt,
    SeedOpt,
    SeqOpt,
    SiteOpt,
    TokenizerOpt,
    TokensOpt,
    WorkersOpt,
)
from gaugeport.core.errors import GaugeportError
from gaugeport.core.fileio import refuse_existing


@app.command()
def collect(
    a: Annotated[Path, typer.Argument(help="checkpoint A (source coordinates)")],
    b: Annotated[Path, typer.Argument(help="checkpoint B (target coordinates)")],
    out: Annotated[Path, typer.Option("--out", help="moments file to write (.safetensors)")],
    data: DataOpt = "builtin",
    tokens: TokensOpt = 65536,
    batch_size: BatchOpt = 8,
    seq_len: SeqOpt = 256,
    seed: SeedOpt = 0,
    site: SiteOpt = None,
    tokenizer: TokenizerOpt = None,
    shard_id: Annotated[str | None, typer.Option("--shard-id", help="name of this data shard "
                                                                    "(default: a hash of its tokens)")] = None,
    ray: RayOpt = None,
    workers: WorkersOpt = 2,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    device: DeviceOpt = "cpu",
) -> None:
    """Stream paired activations of A and B into mergeable cross-moments (collect here, align elsewhere)."""
    from gaugeport.estimate.pipeline import DataOptions, collect_checkpoints

    refuse_existing(out, force, inputs=(a, b))
    options = DataOptions(data or "builtin", tokens, batch_size, seq_len, seed, tokenizer)
    ms = collect_checkpoints(a, b, options, sites=site, shard_id=shard_id, backend="ray" if ray else "local",
                             address=ray or "local", workers=workers, progress=not quiet, device=device)
    ms.save(out, force=force)
    typer.echo(f"wrote {out}: {len(ms.sites)} sites, d={ms.d}, {ms.n_tokens:,} tokens, shard {ms.shard_ids}")


@app.command(context_settings={"allow_extra_args": True})
def align(
    ctx: typer.Context,
    a: Annotated[Path, typer.Argument(help="checkpoint A (source coordinates)")],
    b: Annotated[Path, typer.Argument(help="checkpoint B (target coordinates)")],
    out: Annotated[Path, typer.Option("--out", help="gauge file to write (.safetensors)")],
    data: DataOpt = None,
    moments: Annotated[list[Path] | None, typer.Option(
        "--moments", help="moments files from `gaugeport collect` (merged); --moments M1 M2 ...")] = None,
    method: Annotated[str, typer.Option("--method", help="signed | raw | perm-only | weights")] = "signed",
    site: SiteOpt = None,
    truth: Annotated[Path | None, typer.Option("--truth", help="known gauge: print the accuracy")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="write a JSON summary here")] = None,
    via: Annotated[list[Path] | None, typer.Option(
        "--via", help="intermediate checkpoints A -> C1 -> ... -> B: align hop by hop and compose")] = None,
    tokens: TokensOpt = 65536,
    batch_size: BatchOpt = 8,
    seq_len: SeqOpt = 256,
    seed: SeedOpt = 0,
    tokenizer: TokenizerOpt = None,
    ray: RayOpt = None,
    workers: WorkersOpt = 2,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    device: DeviceOpt = "cpu",
) -> None:
    """Estimate the gauge mapping A's residual coordinates to B's (sign-marginalized matching by default)."""
    from gaugeport.core.fileio import atomic_write_json
    from gaugeport.core.gauge import load_gauge
    from gaugeport.estimate.pipeline import DataOptions, align_checkpoints, align_checkpoints_via

    moments, via = _spread_extra_args(list(ctx.args), moments, via)
    if data is not None and moments:
        raise GaugeportError("give --data or --moments, not both",
                             hint="--moments already holds the statistics of the data they were collected on")
    if via and (moments or ray):
        raise GaugeportError("--via aligns hop by hop from data in this process; it cannot use --moments or --ray")
    for path in (out, report):
        if path is not None:
            refuse_existing(path, force, inputs=(a, b, *(moments or [])))
    options = DataOptions(data or "builtin", tokens, batch_size, seq_len, seed, tokenizer)
    if via:
        from gaugeport.core.checkpoint import Checkpoint

        for hop in (a, *via, b):  # every checkpoint of the chain found before any hop is aligned
            Checkpoint.open(hop)
        result = align_checkpoints_via(a, via, b, options, method=method, sites=site, progress=not quiet)
        provenance, written = {"sites": site or "default", "n_tokens": tokens}, result.to_dict()
        printed = f"{result.summary()}\nwrote {out}"
    else:
        source = moments or (options if data is not None or method != "weights" else None)
        result = align_checkpoints(a, b, source, method=method, sites=site, backend="ray" if ray else "local",
                                   address=ray or "local", workers=workers, progress=not quiet, device=device)
        provenance, written, printed = {}, result.report, f"wrote {out}: {result.summary()}"
    accuracy = result.gauge.accuracy(load_gauge(truth)) if truth is not None else None
    result.save(out, force=force, provenance=provenance)
    if report is not None:
        atomic_write_json(report, {**written, "accuracy": accuracy}, force=force)
    typer.echo(printed)
    if accuracy is not None:
        typer.echo(f"accuracy vs truth full {accuracy['full']:.2%}   permutation {accuracy['perm']:.2%}   "
                   f"sign (given permutation) {accuracy['sign_given_perm']:.2%}")


def _spread_extra_args(extra: list[str], moments: list[Path] | None,
                       via: list[Path] | None) -> tuple[list[Path] | None, list[Path] | None]:
    """``--moments M1 M2`` leaves M2 as an extra argument: it belongs to the one list option given."""
    if not extra:
        return moments, via
    if any(x.startswith("-") for x in extra):
        raise GaugeportError(f"unexpected option(s): {' '.join(x for x in extra if x.startswith('-'))}")
    if moments and not via:
        return [*moments, *map(Path, extra)], via
    if via and not moments:
        return moments, [*via, *map(Path, extra)]
    raise GaugeportError(f"unexpected argument(s): {' '.join(extra)}",
                         hint="align takes two checkpoints; with both --moments and --via, repeat the flag "
                         "for each file (--moments M1 --moments M2)")
