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


@app.command()
def same(
    a: Annotated[Path, typer.Argument(help="checkpoint A (the claimed origin)")],
    b: Annotated[Path, typer.Argument(help="checkpoint B (the suspect)")],
    data: Annotated[str | None, typer.Option("--data", help="token data (.npy ids, .txt, .jsonl, dataset dir, "
                                             "builtin): estimate the residual and MLP units from activations")] = None,
    tokens: Annotated[int, typer.Option("--tokens", help="tokens of --data to use")] = 4096,
    alpha: Annotated[float, typer.Option("--alpha", help="'derived' when the p-value is below this")] = 1e-3,
    tol: Annotated[float, typer.Option("--tol", help="relative weight / logit tolerance for 'identical'")] = 1e-5,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    report: Annotated[Path | None, typer.Option("--report", help="write the full report (JSON) here")] = None,
    save_gauge_to: Annotated[Path | None, typer.Option("--save-gauge", help="write the recovered full gauge "
                                                       "(A -> B) here")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace existing outputs")] = False,
) -> None:
    """Is B a gauged copy of A (identical), derived from A, or independent? p-value, per-layer localisation
    and the recovered gauge as evidence."""
    import json

    from gaugeport.core.errors import GaugeportError
    from gaugeport.core.fileio import atomic_write_json, refuse_existing
    from gaugeport.core.fullgauge import save_full_gauge
    from gaugeport.provenance.same import same as run_same

    if not 0 < alpha < 1:  # NaN fails too
        raise GaugeportError(f"--alpha {alpha:g} is not a significance level in (0, 1)",
                             hint="--alpha is the p-value below which B counts as derived from A (default 0.001)")
    if not 0 <= tol < float("inf"):
        raise GaugeportError(f"--tol {tol:g} is not a finite number >= 0",
                             hint="--tol is the relative weight / logit difference still called identical "
                             "(default 1e-05)")
    if tokens <= 0:
        raise GaugeportError(f"--tokens {tokens} is not a positive number of tokens",
                             hint="--tokens is how many tokens of --data to read (default 4096)")
    for p in (report, save_gauge_to):
        if p is not None:
            refuse_existing(p, force, inputs=(a, b))
    res = run_same(a, b, data=data, alpha=alpha, tol=tol, tokens=tokens)
    out = res.to_dict()
    if save_gauge_to is not None:
        if res.gauge is None:
            raise GaugeportError("the recovered residual map is a rotation (folded gains), not a signed permutation: "
                                 "it has no gauge file", hint="the rotation is summarised in --report")
        save_full_gauge(res.gauge, save_gauge_to, {"same": res.verdict, "a": str(a), "b": str(b),
                                                   "p_value": res.p_value}, force=force)
        out["gauge_file"] = str(save_gauge_to)
    if report is not None:
        atomic_write_json(report, out, force=force)
    if as_json:
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    typer.echo(f"verdict     {res.verdict}")
    typer.echo(f"p-value     {res.p_value:.3g} (log10 {res.log10_p:.1f}; null: independent training; "
               f"alpha {alpha:g})")
    ic = res.identical_check
    typer.echo(f"weights     B vs recovered gauge applied to A: max relative diff {ic['max_rel_weight_diff']:.3g} "
               f"({ic['worst_tensor']})")
    if "logits_max_rel_diff" in ic:
        typer.echo(f"function    logits max relative diff {ic['logits_max_rel_diff']:.3g}")
    typer.echo(f"residual    {res.residual.get('kind')} ({res.residual.get('method')})")
    typer.echo("layer  status      p-value    z      MLP conf  heads conf  weight diff")
    for lay in res.layers:
        wd = lay["max_rel_weight_diff"]
        typer.echo(f"{lay['layer']:>5}  {lay['status']:<10}  {lay['p_value']:<9.3g}  {lay['z']:>5.1f}  "
                   f"{lay['mlp_mean_confidence']:>8.3f}  {lay['heads_mean_confidence']:>10.3f}  "
                   f"{wd if wd is None else format(wd, '.3g')}")
    for n in res.notes:
        typer.echo(f"note: {n}")


@app.command()
def canonicalize(
    ckpt: Annotated[Path, typer.Argument(help="checkpoint directory (never modified)")],
    out: Annotated[Path, typer.Option("--out", help="output checkpoint directory")],
    force: Annotated[bool, typer.Option("--force", help="replace an existing output")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Write the checkpoint's canonical gauge-orbit representative: every gauged copy gives bitwise the same
    weights (residual signs and order, MLP units, heads); ties are broken deterministically and reported."""
    import json

    from gaugeport.provenance.canonical import canonicalize as run

    can = run(ckpt, out, force=force, progress=not quiet)
    from gaugeport.provenance.canonical import fingerprint as fp

    info = fp(out)
    if as_json:
        typer.echo(json.dumps({"out": str(out), **info, "canonical_gauge": can.gauge.fingerprint()}, indent=2))
        return
    typer.echo(f"wrote {out} (canonical representative; fingerprint {info['fingerprint']})")
    typer.echo("ties: " + ", ".join(f"{k}={v}" for k, v in can.ties.items()))
    for n in can.notes:
        typer.echo(f"note: {n}")


@app.command()
def fingerprint(
    ckpt: Annotated[Path, typer.Argument(help="checkpoint directory")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """A hash of the canonical representative: the same for every gauged copy of a checkpoint."""
    import json

    from gaugeport.provenance.canonical import fingerprint as run

    info = run(ckpt)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo(info["fingerprint"])
