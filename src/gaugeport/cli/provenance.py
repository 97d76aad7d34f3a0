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
    a: Annotated[Path | None, typer.Argument(help="checkpoint A (the claimed origin)")] = None,
    b: Annotated[Path | None, typer.Argument(help="checkpoint B (the suspect)")] = None,
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
    pairs: Annotated[Path | None, typer.Option("--pairs", help="batch mode: a CSV with columns a, b and optional "
                                               "label; one JSON line per pair to --out")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="batch mode: the JSON-lines output (resumed "
                                                   "when it exists; summary and ROC plot written next to it)")] = None,
    ray: Annotated[str | None, typer.Option("--ray", help="batch mode: spread the pairs over Ray (local, auto or "
                                            "a cluster address; pip install 'gaugeport[ray]')")] = None,
    workers: Annotated[int, typer.Option("--workers", help="batch mode: CPUs of a --ray local instance")] = 2,
) -> None:
    """Is B a gauged copy of A (identical), derived from A, or independent? p-value, per-layer localisation
    and the recovered gauge as evidence. Pairs whose shapes differ (blocks removed, widths pruned, tokens
    added, experts upcycled) get a block map and graded evidence (lineage)."""
    import json

    from gaugeport.core.errors import GaugeportError
    from gaugeport.core.fileio import atomic_write_json, refuse_existing
    from gaugeport.core.fullgauge import save_full_gauge
    from gaugeport.provenance.lineage import LineageResult
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
    if pairs is not None:
        if a is not None or b is not None or out is None:
            raise GaugeportError("--pairs runs a batch: give --out and no checkpoints",
                                 hint="gaugeport same --pairs pairs.csv --out results.jsonl")
        _same_batch(pairs, out, alpha, force, as_json, ray, workers)
        return
    if ray is not None:
        raise GaugeportError("--ray spreads a batch of pairs over a cluster: it needs --pairs CSV --out JSONL",
                             hint="gaugeport same --pairs pairs.csv --out results.jsonl --ray auto")
    if a is None or b is None:
        raise GaugeportError("same needs two checkpoints A and B (or --pairs CSV --out JSONL)",
                             hint="gaugeport same A B")
    plot = report.with_suffix(".png") if report is not None else None
    for p in (report, save_gauge_to, plot):
        if p is not None:
            refuse_existing(p, force, inputs=(a, b))
    res = run_same(a, b, data=data, alpha=alpha, tol=tol, tokens=tokens, full_gauge=save_gauge_to is not None)
    if isinstance(res, LineageResult):
        _print_lineage(res, report, plot, save_gauge_to, as_json)
        return
    doc = res.to_dict()
    if save_gauge_to is not None:
        if res.gauge is None:
            raise GaugeportError("the recovered residual map is a rotation (folded gains), not a signed permutation: "
                                 "it has no gauge file", hint="the rotation is summarised in --report")
        save_full_gauge(res.gauge, save_gauge_to, {"same": res.verdict, "a": str(a), "b": str(b),
                                                   "p_value": res.p_value}, force=force)
        doc["gauge_file"] = str(save_gauge_to)
    if report is not None:
        atomic_write_json(report, doc, force=force)
    if as_json:
        typer.echo(json.dumps(doc, indent=2, default=str))
        return
    typer.echo(f"verdict     {res.verdict}")
    typer.echo(f"p-value     {res.p_value:.3g} (log10 {res.log10_p:.1f}; null: independent training; "
               f"alpha {alpha:g})")
    ic = res.identical_check
    if ic["max_rel_weight_diff"] is None:
        typer.echo(f"weights     not compared ({ic.get('not_run', 'no gauge recovered')})")
    else:
        typer.echo(f"weights     B vs recovered gauge applied to A: max relative diff "
                   f"{'at least ' if ic.get('max_rel_weight_diff_is_lower_bound') else ''}"
                   f"{ic['max_rel_weight_diff']:.3g} ({ic['worst_tensor']})")
    if "logits_max_rel_diff" in ic:
        typer.echo(f"function    logits max relative diff {ic['logits_max_rel_diff']:.3g}")
    typer.echo(f"residual    {res.residual.get('kind')} ({res.residual.get('method')})")
    typer.echo("layer  status      p-value    z      MLP conf  heads conf  weight diff")
    for lay in res.layers:
        wd = lay["max_rel_weight_diff"]
        p, z = lay["p_value"], lay["z"]
        typer.echo(f"{lay['layer']:>5}  {lay['status']:<10}  {'-' if p is None else format(p, '.3g'):<9}  "
                   f"{'-' if z is None else format(z, '.1f'):>5}  "
                   f"{_num(lay['mlp_mean_confidence']):>8}  {_num(lay['heads_mean_confidence']):>10}  "
                   f"{wd if wd is None else format(wd, '.3g')}")
    for n in res.notes:
        typer.echo(f"note: {n}")


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _print_lineage(res: object, report: Path | None, plot: Path | None, save_gauge_to: Path | None,
                   as_json: bool) -> None:
    import json

    from gaugeport.core.errors import GaugeportError
    from gaugeport.core.fileio import atomic_write_json
    from gaugeport.provenance.lineage import LineageResult, plot_blocks

    assert isinstance(res, LineageResult)
    if save_gauge_to is not None:
        raise GaugeportError("A and B differ in shape: no gauge relates them, so there is no gauge file",
                             hint="the block, unit and coordinate maps are in --report")
    out = res.to_dict()
    if report is not None:
        drawn = plot_blocks(res, plot) if plot is not None else None
        out["plot"] = str(drawn) if drawn is not None else None
        atomic_write_json(report, out, force=True)
    if as_json:
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    ev = res.evidence
    sa, sb = res.shapes["a"], res.shapes["b"]
    why = "a wrapper's language model" if "wrapper" in sa or "wrapper" in sb else \
        "mixture of experts" if max(sa["experts"], sb["experts"]) > 1 else "shapes differ"
    typer.echo(f"verdict     {res.verdict} (lineage: {why})")
    typer.echo(f"p-value     {res.p_value:.3g} (log10 {res.log10_p:.1f}; null: independent training; "
               f"alpha {res.alpha:g})")
    typer.echo(f"effect      {res.effect:.3f} (0: independent, 1: every unit, head and token traced)")
    typer.echo(f"shapes      A {sa['model_type']} d={sa['d']} blocks={sa['n_layers']} mlp={sa['mlp']} "
               f"heads={sa['n_heads']} experts={sa['experts']} vocab={sa['vocab']}")
    typer.echo(f"            B {sb['model_type']} d={sb['d']} blocks={sb['n_layers']} mlp={sb['mlp']} "
               f"heads={sb['n_heads']} experts={sb['experts']} vocab={sb['vocab']}")
    hf = ev["heads_fraction"]
    typer.echo(f"fractions   units {ev['units_fraction']:.3f}  heads {'n/a' if hf is None else format(hf, '.3f')}  "
               f"tokens {ev['tokens_fraction']:.3f}  coordinates {ev['coordinates_fraction']:.3f}  "
               f"blocks {ev['blocks_fraction']:.3f}")
    typer.echo(f"output cos  matched {ev['output_cos']:.3f} vs null {ev['null_output_cos']:.3f}")
    v = res.vocabulary
    typer.echo(f"vocabulary  {v['shared']} shared tokens (by {v['paired_by']}), {v['only_a']} only in A, "
               f"{v['only_b']} only in B")
    typer.echo("A block -> B block   z      p-value    units  heads  status")
    for blk in res.blocks:
        h = blk["heads_fraction"]
        typer.echo(f"{blk['a_block']:>7} -> {blk['b_block']:<7}  {blk['z']:>6.1f}  {blk['p_value']:<9.3g}  "
                   f"{blk['units_fraction']:>5.2f}  {'  n/a' if h is None else format(h, '5.2f')}  {blk['status']}")
    if report is not None:
        typer.echo(f"report      {report} (plot {out['plot'] or 'not drawn: pip install gaugeport[study] for it'})")
    for n in res.notes:
        typer.echo(f"note: {n}")


def _same_batch(pairs: Path, out: Path, alpha: float, force: bool, as_json: bool, ray: str | None = None,
                workers: int = 2) -> None:
    import json

    from gaugeport.core.errors import GaugeportError
    from gaugeport.core.fileio import atomic_write_json, refuse_existing
    from gaugeport.provenance.batch import _done_lines, plot_roc, ray_executor, read_pairs, run_pairs, serial_executor

    if workers < 1:
        raise GaugeportError(f"--workers {workers} is not a positive number of CPUs", hint="e.g. --workers 4")
    read_pairs(pairs)  # a bad CSV fails before any cluster is started
    executor = serial_executor if ray is None else ray_executor(ray, workers)

    summary_path, roc_path = out.with_suffix(".summary.json"), out.with_suffix(".roc.png")
    if force and out.exists():
        out.unlink()
    summary = run_pairs(pairs, out, alpha=alpha, echo=None if as_json else typer.echo, executor=executor)
    for p in (summary_path, roc_path):
        refuse_existing(p, True, inputs=(pairs,))
    summary["roc_plot"] = str(r) if (r := plot_roc(_done_lines(out), roc_path)) is not None else None
    summary["lines"] = str(out)
    atomic_write_json(summary_path, summary, force=True)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(f"{summary['pairs']} pairs ({summary['errors']} errors): "
               + ", ".join(f"{k} {v}" for k, v in sorted(summary["verdicts"].items())))
    if "auc" in summary:
        typer.echo(f"AUC {summary['auc']:.3f}, TPR at 1% FPR {summary['tpr_at_1pct_fpr']:.3f} "
                   f"({summary['labelled']} labelled pairs, ranked by effect)")
    typer.echo(f"wrote {out}, {summary_path}" + (f", {roc_path}" if summary["roc_plot"] else ""))


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

    from gaugeport.core.checkpoint import Checkpoint
    from gaugeport.provenance.canonical import FINGERPRINT_VERSION
    from gaugeport.provenance.canonical import canonicalize as run

    can = run(ckpt, out, force=force, progress=not quiet)
    info = {"fingerprint": can.fingerprint, "model_type": Checkpoint.open(out).model_type,
            "version": FINGERPRINT_VERSION, "ties": can.ties, "notes": can.notes}
    if as_json:  # the fingerprint of the canonical tensors, hashed while they were written (no second pass)
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
