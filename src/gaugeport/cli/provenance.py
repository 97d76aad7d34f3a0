"""Provenance verbs: inverse, same, canonicalize, fingerprint (the full-network gauge at work)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gaugeport.cli._app import app


@app.command()
def inverse(
    gauge: Annotated[Path, typer.Argument(help="gauge file (version 1 or 2) mapping A to B")],
    out: Annotated[Path, typer.Option("--out", help="output gauge file (B -> A)")],
    force: Annotated[bool, typer.Option("--force", help="replace an existing output")] = False,
) -> None:
    """Invert a gauge (residual, and MLP units and heads for a full gauge): the result maps B back to A."""
    from gaugeport.core.fullgauge import read_full_gauge_file, save_full_gauge

    f = read_full_gauge_file(gauge)
    inv = f.gauge.inverse()
    save_full_gauge(inv, out, {"inverse_of": str(gauge), "inverse_of_fingerprint": f.gauge.fingerprint()},
                    force=force)
    typer.echo(f"wrote {out}: inverse of {gauge} (d={inv.d}, {len(inv.layers)} hidden layers, "
               f"fingerprint {inv.fingerprint()})")
