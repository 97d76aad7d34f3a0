"""Study verbs: compose, audit, reproduce."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from gaugeport.cli._app import app
from gaugeport.cli._options import ForceOpt
from gaugeport.core.errors import GaugeportError


@app.command()
def compose(
    gauges: Annotated[list[Path], typer.Argument(help="gauge files in chain order: G1 (A -> C1) first")],
    out: Annotated[Path, typer.Option("--out", help="output gauge file (A -> B)")],
    force: ForceOpt = False,
) -> None:
    """Compose gauges along a chain: G1 is applied first, so the result maps A's coordinates to B's."""
    from gaugeport.core.fullgauge import compose_full_gauge_files, is_full_gauge_file
    from gaugeport.estimate.trajectory import compose_gauge_files

    if any(is_full_gauge_file(p) for p in gauges):  # version-2 files: MLP units and heads compose too
        fg = compose_full_gauge_files(gauges, out, force=force)
        typer.echo(f"wrote {out}: {len(gauges)} full gauges composed (first applied first), d={fg.d}, "
                   f"{len(fg.layers)} layers, fingerprint {fg.fingerprint()}")
        return
    g = compose_gauge_files(gauges, out, force=force)
    typer.echo(f"wrote {out}: {len(gauges)} gauges composed (first applied first), d={g.d}, "
               f"fingerprint {g.fingerprint()}")


@app.command(context_settings={"allow_extra_args": True})
def audit(
    ctx: typer.Context,
    claims: Annotated[Path, typer.Argument(help="claims JSON: {\"claims\": [{name, site, kind, ...}]}")],
    out: Annotated[Path, typer.Option("--out", help="output directory (audit.json, audit.md)")],
    gauge: Annotated[list[Path] | None, typer.Option(
        "--gauge", help="estimated gauge(s) to include in the sweep: --gauge G1 G2 ...")] = None,
    random: Annotated[int, typer.Option("--random", help="number of random signed permutations")] = 8,
    d: Annotated[int | None, typer.Option("--d", help="width, when no --gauge is given")] = None,
    evidence: Annotated[Path | None, typer.Option("--evidence", help=".npz with <key>.acts and <key>.labels")] = None,
    tol: Annotated[float, typer.Option("--tol", help="a claim survives a gauge at agreement >= 1 - tol")] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="seed of the random gauges")] = 0,
    force: ForceOpt = False,
) -> None:
    """Re-express index-level claims under a sweep of gauges; verdict: gauge-covariant or index-bound."""
    from gaugeport.core.gauge import load_gauge
    from gaugeport.transport.audit import audit_claims, gauge_sweep, load_claims, load_evidence, write_audit

    extra = list(ctx.args)
    if extra and (not gauge or any(x.startswith("-") for x in extra)):
        raise GaugeportError(f"unexpected argument(s): {' '.join(extra)}",
                             hint="audit takes one claims file; list gauge files after --gauge")
    parsed = load_claims(claims)
    estimated = {p.stem: load_gauge(p) for p in [*(gauge or []), *map(Path, extra)]}
    widths = {g.d for g in estimated.values()} | ({d} if d is not None else set())
    if len(widths) != 1:
        raise GaugeportError("cannot tell the width of the sweep" if not widths else
                             f"the gauges and --d disagree on the width: {sorted(widths)}",
                             hint="give --gauge G.safetensors (estimated gauge) or --d WIDTH")
    if not 0 < tol < 1:
        raise GaugeportError(f"--tol must lie in (0, 1), got {tol}")
    sweep = gauge_sweep(widths.pop(), random, seed, estimated)
    report = audit_claims(parsed, sweep, evidence=load_evidence(evidence) if evidence else None, tol=tol)
    write_audit(report, out, force=force)
    summary = report.to_dict()
    for v in report.verdicts:
        typer.echo(f"{v.verdict:>15}  {v.claim.name}: {v.note()}")
    typer.echo(f"wrote {out}/audit.json and audit.md ({summary['n_covariant']} gauge-covariant, "
               f"{summary['n_index_bound']} index-bound)")


@app.command()
def reproduce(
    quick: Annotated[bool, typer.Option("--quick", help="the make-demo size (minutes on 2 cores); "
                                        "default: the full size")] = False,
    micro: Annotated[bool, typer.Option("--micro", help="smoke-test size (~2 CPU-min cold, ~70 CPU-s cached)")] = False,
    out: Annotated[Path, typer.Option("--out", help="report directory")] = Path("reports/latest"),
    no_cache: Annotated[bool, typer.Option("--no-cache", help="train everything afresh, cache nothing")] = False,
    seed: Annotated[int, typer.Option("--seed", help="seed of every model, gauge and corpus draw")] = 0,
    force: Annotated[bool, typer.Option("--force", help="replace an existing --out that is not a report")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bars")] = False,
    preset_name: Annotated[str | None, typer.Option(
        "--preset", help="micro, quick, full, real (SmolLM2-135M-Instruct on real text, ~20 min cold on 2 idle "
        "cores) or real-micro (the real preset's code path on a tiny stand-in)")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda[:N] (real presets)")] = "cpu",
    compare: Annotated[Path | None, typer.Option(
        "--compare", help="real presets: results.json of a quick run for the report's toy column "
        "(default: run the quick preset, cached)")] = None,
) -> None:
    """Reproduce the paper's evidence at small scale: report.md, results.json and plots in --out."""
    from gaugeport.core.errors import require

    require("matplotlib", "study", "gaugeport reproduce (its plots)")  # before a run of minutes, not after it
    from gaugeport.study.config import preset, with_device
    from gaugeport.study.run import run_study

    if sum(map(bool, (quick, micro, preset_name))) > 1:
        raise GaugeportError("choose one of --quick, --micro and --preset")
    names = ("micro", "quick", "full", "real", "real-micro")
    if preset_name is not None and preset_name not in names:
        raise GaugeportError(f"unknown preset {preset_name!r}", hint="choose one of: " + ", ".join(names))
    if device != "cpu" and not (device == "cuda" or device.startswith("cuda:")):
        raise GaugeportError(f"unknown device {device!r}", hint="use cpu, cuda or cuda:N")
    if device != "cpu":
        import torch

        if not torch.cuda.is_available():
            raise GaugeportError(f"--device {device}: no CUDA device is available", hint="use --device cpu")
    name = preset_name or ("micro" if micro else "quick" if quick else "full")
    cfg = with_device(preset(name, seed), device)  # type: ignore[arg-type]
    if compare is not None and cfg.real is None:
        raise GaugeportError("--compare is for the real presets", hint="use --preset real")
    results = run_study(cfg, out, use_cache=not no_cache, progress=not quiet, force=force, quick_results=compare)
    typer.echo((Path(out) / "report.md").read_text() if not quiet else json.dumps(results["timings"]))
    typer.echo(f"wrote {out}/report.md, results.json and plots in {results['timings']['total']:.0f} s")
