"""Core verbs: inspect, apply, verify."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from gaugeport.cli._app import app
from gaugeport.cli._options import DeviceOpt, ForceOpt, QuietOpt
from gaugeport.core.defaults import VERIFY_TOL
from gaugeport.core.errors import GaugeportError

# The library (torch, transformers) is imported inside each verb: `gaugeport VERB --help` starts at once.


@app.command()
def inspect(
    ckpt: Annotated[Path, typer.Argument(help="Hugging Face checkpoint directory")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of text")] = False,
) -> None:
    """Model type, width, norm kind, gain genericity and the gauge group of a checkpoint."""
    from gaugeport.core.inspection import inspect_checkpoint

    info = inspect_checkpoint(ckpt)
    if as_json:
        typer.echo(json.dumps(info.to_dict(), indent=2))
        return
    typer.echo(f"model type        {info.model_type}")
    typer.echo(f"d_model           {info.d_model}   layers {info.n_layers}")
    typer.echo(f"norm              {'RMSNorm' if info.norm == 'rms' else 'LayerNorm'}"
               + (f" (gain stored as {info.gain_offset:g} + w)" if info.gain_offset else ""))
    typer.echo(f"gauge group       {info.group}")
    typer.echo(f"gain min gap      {info.gain_min_gap:.3g}   tied coordinate blocks {info.tied_coordinate_blocks}")
    typer.echo(f"residual tensors  {info.n_residual_tensors} of {info.n_tensors}"
               + ("   (tied embeddings)" if info.tied_embeddings else ""))
    for w in info.warnings:
        typer.echo(f"warning: {w}", err=True)


@app.command()
def apply(
    ckpt: Annotated[Path, typer.Argument(help="source checkpoint directory (never modified)")],
    out: Annotated[Path, typer.Option("--out", help="output checkpoint directory")],
    gauge: Annotated[Path | None, typer.Option("--gauge", help="gauge .safetensors to apply")] = None,
    random_seed: Annotated[int | None, typer.Option("--random-seed", help="apply a random gauge")] = None,
    perm_only: Annotated[bool, typer.Option("--perm-only", help="random gauge without sign flips")] = False,
    positive_fraction: Annotated[float, typer.Option(help="fraction of +1 signs in a random gauge")] = 0.5,
    save_gauge_to: Annotated[Path | None, typer.Option("--save-gauge", help="write the random gauge here")] = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    dequantize: Annotated[str | None, typer.Option(
        "--dequantize", help="quantized input (fp8 block scales, GPTQ): write a plain bf16 (or fp32) checkpoint "
        "in the new gauge; lossy only by the quantization already there")] = None,
    full: Annotated[bool, typer.Option("--full", help="random full-network gauge: residual, MLP units and "
                                       "heads (a version-2 --gauge file is always applied in full)")] = False,
) -> None:
    """Rewrite a checkpoint in new residual coordinates (streamed, tensor by tensor)."""
    from gaugeport.core.apply import apply_gauge_to_checkpoint
    from gaugeport.core.checkpoint import Checkpoint
    from gaugeport.core.fullgauge import is_full_gauge_file
    from gaugeport.core.gauge import SignedPermutation, load_gauge, save_gauge

    if (gauge is None) == (random_seed is None):
        raise GaugeportError("give exactly one of --gauge G.safetensors or --random-seed N",
                             hint="--random-seed N draws a random gauge (save it with --save-gauge)")
    if full and gauge is not None and not is_full_gauge_file(gauge):
        load_gauge(gauge)  # a damaged file says so first
        raise GaugeportError(f"--full asks for a full-network gauge, but {gauge} is a version-1 gauge file "
                             "(residual coordinates only)",
                             hint="drop --full to apply this residual gauge, or give a version-2 file (written by "
                             "`gaugeport apply --full --save-gauge` or `gaugeport align --full`)")
    if full or (gauge is not None and is_full_gauge_file(gauge)):
        _apply_full(ckpt, out, gauge, random_seed, perm_only, save_gauge_to, force, quiet)
        return
    if gauge is not None:
        g = load_gauge(gauge)
        provenance = {"gaugeport_source_gauge": str(gauge)}
    else:
        d = Checkpoint.open(ckpt, allow_quantized=dequantize is not None).d_model
        g = SignedPermutation.random(d, seed=random_seed, positive_fraction=positive_fraction)
        g = g.perm_only() if perm_only else g
        provenance = {"gaugeport_random_seed": str(random_seed)}
    if save_gauge_to is None:
        apply_gauge_to_checkpoint(ckpt, g, out, force=force, progress=not quiet, provenance=provenance,
                                  dequantize=dequantize)
    else:  # the gauge is written first (to a temp path) and lands with the checkpoint, never after it fails
        from gaugeport.core.fileio import atomic_path

        with atomic_path(save_gauge_to, force, kind="file") as gauge_tmp:
            save_gauge(g, gauge_tmp, provenance={"source": str(ckpt), "target": str(out), **provenance})
            apply_gauge_to_checkpoint(ckpt, g, out, force=force, progress=not quiet, provenance=provenance,
                                      dequantize=dequantize)
    typer.echo(f"wrote {out} (gauge {g.fingerprint()}, d={g.d}, {g.positive_fraction:.0%} positive signs)")


@app.command()
def verify(
    a: Annotated[Path, typer.Argument(help="checkpoint A")],
    b: Annotated[Path, typer.Argument(help="checkpoint B")],
    gauge: Annotated[Path | None, typer.Option("--gauge", help="gauge mapping A's coordinates to B's")] = None,
    tol: Annotated[float, typer.Option("--tol", help="max relative difference (logits, hidden states "
                                                     "and each weight tensor, relative to its largest |value|)")
                   ] = VERIFY_TOL,
    data: Annotated[Path | None, typer.Option("--data", help="token ids .npy [n_seq, seq_len]")] = None,
    seed: Annotated[int, typer.Option(help="seed of the probe token ids")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    device: DeviceOpt = "cpu",
) -> None:
    """Check that B computes A's function (through --gauge); exit 0 within --tol, 1 otherwise."""
    from gaugeport.core.fullgauge import is_full_gauge_file, load_full_gauge, verify_full
    from gaugeport.core.gauge import load_gauge
    from gaugeport.core.verify import verify_checkpoints

    if gauge is not None and is_full_gauge_file(gauge):
        res = verify_full(a, b, load_full_gauge(gauge), tol=tol, data=data, seed=seed, device=device)
    else:
        g = load_gauge(gauge) if gauge is not None else None
        res = verify_checkpoints(a, b, g, tol=tol, data=data, seed=seed, device=device)
    if as_json:
        typer.echo(json.dumps(res.to_dict(), indent=2))
    else:
        typer.echo(f"{res.output}: max abs diff {res.max_abs_diff:.3e}, relative {res.max_rel_diff:.3e} "
                   f"over {res.n_tokens} probe tokens")
        if res.hidden_max_abs_diff is not None:
            typer.echo(f"hidden states (B vs G applied to A): max abs {res.hidden_max_abs_diff:.3e}, "
                       f"relative {res.hidden_max_rel_diff:.3e}")
        if res.weight_max_abs_diff is not None:
            typer.echo(f"weights (B vs G applied to A): max abs {res.weight_max_abs_diff:.3e}, relative "
                       f"{res.weight_max_rel_diff:.3e} (worst: {res.weight_worst_tensor})")
        typer.echo(f"{'PASS' if res.ok else 'FAIL'} (tolerance {tol:g})")
    if not res.ok:
        raise typer.Exit(1)


def _apply_full(ckpt: Path, out: Path, gauge: Path | None, random_seed: int | None, perm_only: bool,
                save_gauge_to: Path | None, force: bool, quiet: bool) -> None:
    """``apply --full``: the full-network gauge (residual, MLP units, attention heads)."""
    from gaugeport.core.fullgauge import (
        apply_full_gauge_to_checkpoint,
        load_full_gauge,
        random_full_gauge_for,
        save_full_gauge,
    )

    if gauge is not None:
        g = load_full_gauge(gauge)
        provenance = {"gaugeport_source_gauge": str(gauge)}
    else:
        assert random_seed is not None
        g = random_full_gauge_for(ckpt, random_seed, perm_only=perm_only)
        provenance = {"gaugeport_random_seed": str(random_seed), "gaugeport_full": "true"}
    if save_gauge_to is None:
        apply_full_gauge_to_checkpoint(ckpt, g, out, force=force, progress=not quiet, provenance=provenance)
    else:  # as for a residual gauge: the gauge file lands with the checkpoint, never after it fails
        from gaugeport.core.fileio import atomic_path

        with atomic_path(save_gauge_to, force, kind="file") as gauge_tmp:
            save_full_gauge(g, gauge_tmp, provenance={"source": str(ckpt), "target": str(out), **provenance})
            apply_full_gauge_to_checkpoint(ckpt, g, out, force=force, progress=not quiet, provenance=provenance)
    typer.echo(f"wrote {out} (full gauge {g.fingerprint()}: d={g.d}, {len(g.layers)} layers of MLP units and heads, "
               f"{g.residual.positive_fraction:.0%} positive residual signs)")
