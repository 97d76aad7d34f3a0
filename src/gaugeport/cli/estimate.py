"""Estimation verbs: ``collect`` (activation moments to a file) and ``align`` (estimate a gauge)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from gaugeport.cli._app import app
from gaugeport.core.errors import DataError, GaugeportError
from gaugeport.core.fileio import refuse_existing

DataOpt = Annotated[str | None, typer.Option(
    "--data", help="token ids .npy [n_seq, len], a .txt/.jsonl file, a datasets.save_to_disk dir, or 'builtin'")]
TokensOpt = Annotated[int, typer.Option("--tokens", help="token positions to feed both models")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="sequences per forward pass")]
SeqOpt = Annotated[int, typer.Option("--seq-len", help="tokens per sequence")]
SeedOpt = Annotated[int, typer.Option("--seed", help="seed of the sequence order / built-in corpus")]
SiteOpt = Annotated[list[str] | None, typer.Option(
    "--site", help="residual site (embed, resid_mid.L, resid_post.L, resid_pre.L, final, all); repeatable")]
TokenizerOpt = Annotated[Path | None, typer.Option("--tokenizer", help="tokenizer dir for text data "
                                                                        "(default: A's own)")]
ForceOpt = Annotated[bool, typer.Option("--force", help="replace existing outputs")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="no progress bar")]


def _batches(a: Path, b: Path, data: str, tokens: int, batch_size: int, seq_len: int, seed: int,
             tokenizer: Path | None) -> list[Any]:
    """Token batches for the pair, read from the configs only (no model is loaded for this)."""
    from gaugeport.core.checkpoint import Checkpoint
    from gaugeport.estimate.data import load_token_batches, tokenizer_for

    facts = [Checkpoint.open(p).facts for p in (a, b)]
    vocabs = [f.vocab_size for f in facts if f.vocab_size]
    specials = set().union(*(f.special_ids for f in facts))
    tok = tokenizer if tokenizer is not None else tokenizer_for(a)
    pad = facts[0].pad_id
    return load_token_batches(data, tokenizer=tok, n_tokens=tokens, batch_size=batch_size, seq_len=seq_len,
                              seed=seed, vocab_size=min(vocabs) if vocabs else None, special_ids=specials,
                              pad_id=pad if pad is not None else 0)


def _collect(a: Path, b: Path, batches: list[Any], sites: list[str] | None, shard_id: str | None,
             ray: str | None, workers: int, progress: bool, info: dict[str, Any]) -> Any:
    """Moments of the pair, here or on Ray. ``shard_id`` None: named after a hash of the tokens, so the
    same tokens collected twice are refused when merged (they would be counted twice)."""
    if ray is not None:
        try:
            from gaugeport.estimate.distributed import collect_moments_distributed
        except ImportError as exc:
            raise GaugeportError(f"distributed collection is unavailable: {exc}",
                                 hint="install ray (pip install 'gaugeport[ray]'), or drop --ray to collect "
                                 "in this process") from exc
        ms = collect_moments_distributed(a, b, batches, sites, ray, workers, progress, shard_id=shard_id)
        ms.info.update(info)
        return ms
    from gaugeport.core.verify import load_model
    from gaugeport.estimate.activations import collect_moments
    from gaugeport.estimate.data import batches_digest

    return collect_moments(load_model(a), load_model(b), batches, sites=sites, progress=progress,
                           shard_id=shard_id or f"tokens-{batches_digest(batches)}", info=info)


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
    ray: Annotated[str | None, typer.Option("--ray", help="collect with Ray: local, auto or a cluster address")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Ray workers")] = 2,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Stream paired activations of A and B into mergeable cross-moments (collect here, align elsewhere)."""
    data = data or "builtin"
    refuse_existing(out, force, inputs=(a, b))
    batches = _batches(a, b, data, tokens, batch_size, seq_len, seed, tokenizer)
    info = {"data": str(data), "seq_len": seq_len, "seed": seed}
    ms = _collect(a, b, batches, site, shard_id, ray, workers, not quiet, info)
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
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Estimate the gauge mapping A's residual coordinates to B's (sign-marginalized matching by default)."""
    moments, via = _spread_extra_args(list(ctx.args), moments, via)
    _check_align_args(method, data, moments, via)
    for path in (out, report):
        if path is not None:
            refuse_existing(path, force, inputs=(a, b, *(moments or [])))
    if via:
        _align_via(a, b, via, out, data, method, site, tokens, batch_size, seq_len, seed, tokenizer, truth,
                   report, force, quiet)
        return
    result, source = _estimate(a, b, data, moments, method, site, tokens, batch_size, seq_len, seed, tokenizer,
                               quiet)
    accuracy = _truth_accuracy(truth, result.gauge) if truth is not None else None
    result.save(out, force=force, provenance={"a": str(a), "b": str(b), "data": source})
    if report is not None:
        from gaugeport.core.fileio import atomic_write_json

        atomic_write_json(report, {**result.report, "a": str(a), "b": str(b), "data": source,
                                   "accuracy": accuracy}, force=force)
    _print_summary(result, out, accuracy)


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


def _check_align_args(method: str, data: str | None, moments: list[Path] | None, via: list[Path] | None) -> None:
    from gaugeport.estimate.align import ALL_METHODS

    if method not in ALL_METHODS:
        raise GaugeportError(f"unknown method {method!r}", hint="choose one of: " + ", ".join(ALL_METHODS))
    if data is not None and moments:
        raise GaugeportError("give --data or --moments, not both",
                             hint="--moments already holds the statistics of the data they were collected on")
    if method == "weights" and (data is not None or moments):
        raise GaugeportError("--method weights uses no data: drop --data / --moments")
    if via and moments:
        raise GaugeportError("--via aligns hop by hop from data; it cannot use --moments")


def _estimate(a: Path, b: Path, data: str | None, moments: list[Path] | None, method: str,
              site: list[str] | None, tokens: int, batch_size: int, seq_len: int, seed: int,
              tokenizer: Path | None, quiet: bool) -> tuple[Any, str]:
    from gaugeport.estimate.align import align_by_weights, align_from_moments

    if method == "weights":
        return align_by_weights(a, b), "weights"
    if moments:
        from gaugeport.estimate.activations import checkpoint_fingerprint
        from gaugeport.estimate.moments import MomentSet

        merged = MomentSet.merge_all(MomentSet.load(m) for m in moments)
        _check_moments_match(merged, checkpoint_fingerprint(a), checkpoint_fingerprint(b), moments)
        return align_from_moments(merged, method, site), "moments: " + ", ".join(map(str, moments))
    data = data or "builtin"
    batches = _batches(a, b, data, tokens, batch_size, seq_len, seed, tokenizer)
    ms = _collect(a, b, batches, site, None, None, 0, not quiet, {"data": data, "seq_len": seq_len, "seed": seed})
    return align_from_moments(ms, method), data


def _check_moments_match(ms: Any, fp_a: str, fp_b: str, files: list[Path]) -> None:
    if (ms.model_a, ms.model_b) == (fp_a, fp_b):
        return
    if (ms.model_a, ms.model_b) == (fp_b, fp_a):
        raise DataError("these moments were collected with A and B swapped",
                        hint="swap the two checkpoints on the command line (moments are directional)")
    raise DataError(f"the moments in {files[0]} ... were not collected from these checkpoints",
                    hint="collect moments for this pair with `gaugeport collect A B --out M.safetensors`")


def _truth_accuracy(truth: Path, gauge: Any) -> dict[str, float]:
    from gaugeport.core.gauge import load_gauge

    return gauge.accuracy(load_gauge(truth))


def _print_summary(result: Any, out: Path, accuracy: dict[str, float] | None) -> None:
    r = result.report
    evidence = (f"from {', '.join(r['sites'])}" if r["method"] == "weights"
                else f"{len(r['sites'])} site(s), {r['n_tokens']:,} tokens")
    typer.echo(f"wrote {out}: method {r['method']}, d={r['d']}, {evidence}")
    typer.echo(f"confidence        mean {r['mean_confidence']:.3f}   min {r['min_confidence']:.3f}   "
               f"mean margin {r['mean_margin']:.3f}")
    typer.echo(f"low confidence    {r['n_low_confidence']} coordinate(s) with margin < {r['low_margin_threshold']}")
    if r.get("site_agreement"):
        worst = min(r["site_agreement"], key=r["site_agreement"].get)
        typer.echo(f"site agreement    min {r['site_agreement'][worst]:.3f} ({worst})")
    if accuracy is not None:
        typer.echo(f"accuracy vs truth full {accuracy['full']:.2%}   permutation {accuracy['perm']:.2%}   "
                   f"sign (given permutation) {accuracy['sign_given_perm']:.2%}")


def _align_via(a: Path, b: Path, via: list[Path], out: Path, data: str | None, method: str,
               site: list[str] | None, tokens: int, batch_size: int, seq_len: int, seed: int,
               tokenizer: Path | None, truth: Path | None, report: Path | None, force: bool, quiet: bool) -> None:
    try:
        from gaugeport.estimate.trajectory import align_chain
    except ImportError as exc:
        raise GaugeportError(f"chain alignment (--via) is unavailable: {exc}") from exc
    from gaugeport.core.gauge import save_gauge

    data = data or "builtin"
    batches = _batches(a, b, data, tokens, batch_size, seq_len, seed, tokenizer)
    chain = align_chain([a, *via, b], batches, method=method, sites=site, progress=not quiet)
    accuracy = _truth_accuracy(truth, chain.gauge) if truth is not None else None
    summary = chain.to_dict()
    save_gauge(chain.gauge, out, {"method": f"{method} (chain)", "sites": site or "default", "n_tokens": tokens,
                                  "mean_confidence": float(chain.confidence.mean()),
                                  "min_confidence": float(chain.confidence.min()), "chain": summary},
               {"confidence": chain.confidence.astype("float32")}, force=force)
    if report is not None:
        from gaugeport.core.fileio import atomic_write_json

        atomic_write_json(report, {**summary, "accuracy": accuracy}, force=force)
    typer.echo(chain.summary())
    typer.echo(f"wrote {out}")
    if accuracy is not None:
        typer.echo(f"accuracy vs truth full {accuracy['full']:.2%}   permutation {accuracy['perm']:.2%}   "
                   f"sign (given permutation) {accuracy['sign_given_perm']:.2%}")
