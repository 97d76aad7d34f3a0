"""Transport verbs: transport (steering vectors, SAEs, coordinate sets, attributions, Trainer state), merge."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from gaugeport.cli._app import app
from gaugeport.cli._options import ForceOpt, QuietOpt
from gaugeport.core.errors import ArtifactError
from gaugeport.transport.detect import SAE_FORMATS
from gaugeport.transport.rules import ArtifactKind

SaeFormat = StrEnum("SaeFormat", {f.replace("-", "_"): f for f in SAE_FORMATS})  # type: ignore[misc]


class MergeMethod(StrEnum):
    linear = "linear"
    slerp = "slerp"


PERM_ONLY_HELP = ("S_d baseline: drop the gauge's signs (what a permutation-only tool would do); for a Trainer "
                  "checkpoint only the optimizer state loses them, the weights always take the full gauge")


@app.command()
def transport(
    artifact: Annotated[Path, typer.Argument(help="vector file (.pt .safetensors .npy .gguf), SAE (SAELens or "
                                                  "sparsify dir, dictionary_learning ae.pt, Gemma Scope params.npz), "
                                                  "coordinate/attribution .json/.csv, or Trainer checkpoint-N/")],
    gauge: Annotated[Path, typer.Option("--gauge", help="gauge mapping the artifact's model (A) to the target (B)")],
    out: Annotated[Path, typer.Option("--out", help="output path (same format as the input)")],
    kind: Annotated[ArtifactKind | None, typer.Option("--kind", help="artifact kind (default: detected)")] = None,
    sae_format: Annotated[SaeFormat | None, typer.Option("--sae-format", help="force this SAE format (default: "
                                                                       "detected from the content)")] = None,
    perm_only: Annotated[bool, typer.Option("--perm-only", help=PERM_ONLY_HELP)] = False,
    unsigned_scores: Annotated[bool, typer.Option("--unsigned-scores",
                                                  help="coordinate scores are magnitudes: map indices, keep scores")
                               ] = False,
    force: ForceOpt = False,
) -> None:
    """Carry an artifact of checkpoint A into checkpoint B's coordinates (B = G applied to A)."""
    from gaugeport.core.gauge import load_gauge
    from gaugeport.transport.detect import detect_kind, transport_artifact

    g = load_gauge(gauge)  # read once, here at the edge
    chosen = kind or (ArtifactKind.SAE if sae_format else detect_kind(artifact))
    if sae_format and chosen != ArtifactKind.SAE:
        raise ArtifactError(f"--sae-format goes with SAEs, not with --kind {chosen}")
    transport_artifact(artifact, g, out, kind=sae_format.value if sae_format else chosen, perm_only=perm_only,
                       force=force, unsigned_scores=unsigned_scores)
    mode = "permutation only (S_d baseline)" if perm_only else "signed"
    typer.echo(f"wrote {out} ({chosen}, gauge {g.fingerprint()}, d={g.d}, {mode})")


@app.command()
def merge(
    a: Annotated[Path, typer.Argument(help="checkpoint A (the merge is written in A's coordinates)")],
    b: Annotated[Path, typer.Argument(help="checkpoint B")],
    out: Annotated[Path, typer.Option("--out", help="output checkpoint directory")],
    gauge: Annotated[Path | None, typer.Option("--gauge", help="gauge mapping A's coordinates to B's (as "
                                               "`gaugeport align A B` writes it); optional with --full")] = None,
    alpha: Annotated[float, typer.Option("--alpha", help="B's weight: 0 gives A, 1 gives B")] = 0.5,
    method: Annotated[MergeMethod, typer.Option("--method", help="linear or slerp (per tensor)")] = MergeMethod.linear,
    perm_only: Annotated[bool, typer.Option("--perm-only", help="align B by the permutation alone (S_d baseline)")
                         ] = False,
    emit_mergekit: Annotated[bool, typer.Option("--emit-mergekit", help="write B aligned to A plus a mergekit "
                                                                         "config instead of merging")] = False,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    full: Annotated[bool, typer.Option("--full", help="align MLP units and attention heads too (independently "
                                       "trained runs); without --gauge the whole gauge is estimated from the "
                                       "weights, with a version-1 --gauge its residual part is kept")] = False,
) -> None:
    """Bring B into A's gauge, then average: a coordinate-preserving merge (a normal HF checkpoint)."""
    from gaugeport.core.errors import GaugeportError
    from gaugeport.core.gauge import load_gauge
    from gaugeport.transport.merge import MERGEKIT_CONFIG, merge_checkpoints

    if full:
        if perm_only or emit_mergekit:
            raise GaugeportError("--full cannot be combined with --perm-only or --emit-mergekit")
        from gaugeport.provenance.fullmerge import merge_checkpoints_full

        g = merge_checkpoints_full(a, b, gauge, out, alpha=alpha, method=method.value, force=force,
                                   progress=not quiet)
        typer.echo(f"wrote {out} ({method.value} merge, alpha={alpha}, full-network alignment: gauge "
                   f"{g.fingerprint()}, {len(g.layers)} layers of MLP units and heads)")
        return
    if gauge is None:
        raise GaugeportError("merge needs --gauge G.safetensors (or --full, which estimates the gauge)",
                             hint="estimate one with `gaugeport align A B --out G.safetensors`")

    merge_checkpoints(a, b, load_gauge(gauge), out, alpha=alpha, method=method.value, perm_only=perm_only,
                      force=force,
                      emit_mergekit=emit_mergekit, progress=not quiet)
    if emit_mergekit:
        typer.echo(f"wrote {out}/b_aligned and {out}/{MERGEKIT_CONFIG}; run: mergekit-yaml {out}/{MERGEKIT_CONFIG} "
                   "MERGED_DIR")
    else:
        typer.echo(f"wrote {out} ({method.value} merge, alpha={alpha}"
                   + (", permutation-only alignment" if perm_only else "") + ")")
