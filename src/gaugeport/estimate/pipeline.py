"""From two checkpoint directories to a gauge: the library pipeline under ``gaugeport collect`` and ``align``.

::

    from gaugeport.estimate.pipeline import DataOptions, align_checkpoints, collect_checkpoints

    data = DataOptions("corpus.txt", tokens=65536)
    alignment = align_checkpoints("ckpt_a", "ckpt_b", data)               # signed matching on activations
    alignment.save("g.safetensors")
    moments = collect_checkpoints("ckpt_a", "ckpt_b", data, backend="ray", address="auto", workers=8)
    alignment = align_checkpoints("ckpt_a", "ckpt_b", [moments_file_1, moments_file_2])
    alignment = align_checkpoints("ckpt_a", "ckpt_b", None, method="weights")   # no data at all
    chain = align_checkpoints_via("ckpt_a", ["ckpt_c"], "ckpt_b", data)   # hop by hop, composed
    chain.save("g.safetensors")

The *source* of an estimate is one of: :class:`DataOptions` (token data fed to both models),
moments files written by ``collect`` (or a :class:`MomentSet`), or ``None`` (the built-in corpus for
an activation method; nothing for ``method="weights"``). The ``backend`` decides where activations
are collected: ``"local"`` (this process) or ``"ray"`` (see :mod:`gaugeport.estimate.distributed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gaugeport.core.errors import DataError, GaugeportError
from gaugeport.estimate.align import ALL_METHODS, Alignment, align_by_weights, align_from_moments
from gaugeport.estimate.data import BUILTIN, Batch
from gaugeport.estimate.moments import MomentSet
from gaugeport.estimate.trajectory import Chain, align_chain

Backend = Literal["local", "ray"]
BACKENDS: tuple[str, ...] = ("local", "ray")
PathLike = str | Path


@dataclass(frozen=True)
class DataOptions:
    """Which tokens both models see: ``source`` (a ``.npy`` of ids, ``.txt``/``.jsonl``, a saved dataset
    directory or ``"builtin"``), how many positions, in what batches, in which seeded order, and the
    tokenizer for text (default: A's own)."""

    source: PathLike = BUILTIN
    tokens: int = 65536
    batch_size: int = 8
    seq_len: int = 256
    seed: int = 0
    tokenizer: Path | None = None

    def info(self) -> dict[str, Any]:
        """What a moments file records about its data."""
        return {"data": str(self.source), "seq_len": self.seq_len, "seed": self.seed}

    def batches(self, a: PathLike, b: PathLike) -> list[Batch]:
        """Token batches for the pair, read from the two configs only (no model is loaded for this)."""
        from gaugeport.core.checkpoint import Checkpoint
        from gaugeport.estimate.data import load_token_batches, tokenizer_for

        facts = [Checkpoint.open(p).facts for p in (a, b)]  # vocabulary and special ids, per the tables
        vocabs = [f.vocab_size for f in facts if f.vocab_size]
        specials = set().union(*(f.special_ids for f in facts))
        tok = self.tokenizer if self.tokenizer is not None else tokenizer_for(a)
        pad = facts[0].pad_id
        return load_token_batches(self.source, tokenizer=tok, n_tokens=self.tokens, batch_size=self.batch_size,
                                  seq_len=self.seq_len, seed=self.seed, vocab_size=min(vocabs) if vocabs else None,
                                  special_ids=specials, pad_id=pad if pad is not None else 0)


Source = DataOptions | MomentSet | Sequence[PathLike] | None


def collect_checkpoints(a: PathLike, b: PathLike, data: DataOptions | None = None, *,
                        sites: Sequence[str] | None = None, shard_id: str | None = None,
                        backend: Backend = "local", address: str = "local", workers: int = 2,
                        progress: bool = True, device: str = "cpu") -> MomentSet:
    """Paired activation moments of checkpoints ``a`` and ``b`` on ``data`` (mergeable across shards).

    ``shard_id`` None: named after a hash of the tokens, so the same tokens collected twice are refused
    when merged (they would be counted twice). ``backend="ray"``: ``workers`` Ray tasks at ``address``
    (``local``, ``auto`` or a cluster address). Both models run layer-streamed
    (:mod:`gaugeport.core.stream`) on ``device``: one block of each in memory, whatever the depth."""
    from gaugeport.core.stream import check_device

    if backend == "local":
        check_device(device)
    data = data if data is not None else DataOptions()
    if backend not in BACKENDS:
        raise GaugeportError(f"unknown backend {backend!r}", hint="choose one of: " + ", ".join(BACKENDS))
    batches = data.batches(a, b)
    if backend == "ray":
        try:
            from gaugeport.estimate.distributed import collect_moments_distributed
        except ImportError as exc:
            raise GaugeportError(f"distributed collection is unavailable: {exc}",
                                 hint="install ray (pip install 'gaugeport[ray]'), or collect in this process "
                                 "(no --ray)") from exc
        ms = collect_moments_distributed(a, b, batches, sites, address, workers, progress, shard_id=shard_id)
        ms.info.update(data.info())
        return ms
    from gaugeport.core.stream import load_streamed
    from gaugeport.estimate.activations import collect_moments
    from gaugeport.estimate.data import batches_digest

    return collect_moments(load_streamed(a, device), load_streamed(b, device), batches, sites=sites, progress=progress,
                           shard_id=shard_id or f"tokens-{batches_digest(batches)}", info=data.info())


def align_checkpoints(a: PathLike, b: PathLike, source: Source = None, *, method: str = "signed",
                      sites: Sequence[str] | None = None, backend: Backend = "local", address: str = "local",
                      workers: int = 2, progress: bool = True, device: str = "cpu") -> Alignment:
    """Estimate the gauge mapping checkpoint ``a``'s residual coordinates to ``b``'s.

    ``source``: :class:`DataOptions` (collect, then match), moments files or a :class:`MomentSet` (match
    only; they must come from this pair, in this order), or ``None`` (the built-in corpus; no data at
    all for ``method="weights"``). The report names the pair and the data (``a``, ``b``, ``data``)."""
    _check_method(method)
    if backend != "local" and (method == "weights" or not isinstance(source, DataOptions | None)):
        raise GaugeportError(f"backend {backend!r} collects activations; this estimate collects none",
                             hint="drop --ray: moments files and --method weights need no collection")
    if method == "weights":
        if source is not None:
            raise GaugeportError("--method weights uses no data: drop --data / --moments")
        result, described = align_by_weights(a, b), "weights"
    elif isinstance(source, DataOptions | None):
        data = source if source is not None else DataOptions()
        ms = collect_checkpoints(a, b, data, sites=sites, backend=backend, address=address, workers=workers,
                                 progress=progress, device=device)
        result, described = align_from_moments(ms, method), str(data.source)
    else:
        ms, described = _moments_of(a, b, source)
        result = align_from_moments(ms, method, sites)
    result.report.update({"a": str(a), "b": str(b), "data": described, **_hub_revisions(a, b)})
    return result


def _hub_revisions(a: PathLike, b: PathLike) -> dict[str, str]:
    """``a_revision`` / ``b_revision``: the commit a hub ID (``org/name[@rev]``) resolved to."""
    from gaugeport.core.hub import hub_provenance, resolve_checkpoint

    out = {}
    for key, ref in (("a", a), ("b", b)):
        hub = hub_provenance(resolve_checkpoint(ref)) if isinstance(ref, str | Path) else {}
        if hub:
            out[f"{key}_revision"] = f"{hub['gaugeport_hub_repo']}@{hub['gaugeport_hub_revision']}"
    return out


def align_checkpoints_via(a: PathLike, via: Sequence[PathLike], b: PathLike, data: DataOptions | None = None, *,
                          method: str = "signed", sites: Sequence[str] | None = None,
                          progress: bool = True) -> Chain:
    """Align ``a -> via[0] -> ... -> b`` hop by hop on the same tokens and compose (see
    :func:`gaugeport.estimate.trajectory.align_chain`)."""
    _check_method(method)
    data = data if data is not None else DataOptions()
    return align_chain([a, *via, b], data.batches(a, b), method=method, sites=sites, progress=progress)


def _check_method(method: str) -> None:
    if method not in ALL_METHODS:
        raise GaugeportError(f"unknown method {method!r}", hint="choose one of: " + ", ".join(ALL_METHODS))


def _moments_of(a: PathLike, b: PathLike, source: MomentSet | Sequence[PathLike]) -> tuple[MomentSet, str]:
    """Merged moments (from files or given), checked to come from ``a`` and ``b`` in that order."""
    from gaugeport.estimate.activations import checkpoint_fingerprint

    if isinstance(source, MomentSet):
        ms, described, first = source, "moments", "the moments"
    else:
        files = [Path(p) for p in source]
        if not files:
            raise DataError("no moments files given")
        ms = MomentSet.merge_all(MomentSet.load(m) for m in files)
        described, first = "moments: " + ", ".join(map(str, files)), f"{files[0]} ..."
    fp_a, fp_b = checkpoint_fingerprint(a), checkpoint_fingerprint(b)
    if (ms.model_a, ms.model_b) == (fp_b, fp_a):
        raise DataError("these moments were collected with A and B swapped",
                        hint="swap the two checkpoints on the command line (moments are directional)")
    if (ms.model_a, ms.model_b) != (fp_a, fp_b):
        raise DataError(f"the moments in {first} were not collected from these checkpoints",
                        hint="collect moments for this pair with `gaugeport collect A B --out M.safetensors`")
    return ms, described
