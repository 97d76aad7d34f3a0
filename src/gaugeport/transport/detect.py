"""Which kind of artifact is this path, and which transport handles it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from gaugeport.core.errors import ArtifactError, CheckpointError
from gaugeport.transport.rules import ArtifactKind

if TYPE_CHECKING:
    from gaugeport.core.gauge import SignedPermutation

SAE_FORMATS = ("saelens", "sparsify", "dictionary-learning", "gemma-scope")  # --kind one of these: force it
KINDS = (*(k.value for k in ArtifactKind), *SAE_FORMATS)
_TABLES = (ArtifactKind.COORDINATES, ArtifactKind.ATTRIBUTIONS)


def detect_kind(path: str | Path) -> ArtifactKind:
    """The artifact kind of ``path``, from its layout and, for tables, its content."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"artifact not found: {path}")
    if path.is_dir():
        return _dir_kind(path)
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth", ".npz"):  # by content: a dictionary_learning ae.pt, a Gemma Scope params.npz
        from gaugeport.transport.sae_formats import detect_sae_format

        if detect_sae_format(path) is not None:
            return ArtifactKind.SAE
    if suffix in (".pt", ".pth", ".npy", ".safetensors", ".gguf"):
        return ArtifactKind.VECTOR
    if suffix in (".json", ".csv"):
        return _table_kind(path)
    raise ArtifactError(f"cannot tell what kind of artifact {path.name} is",
                        hint="vectors: .pt .safetensors .npy .gguf; coordinate sets / attributions: .json .csv; "
                        "SAEs and Trainer checkpoints: directories")


def _dir_kind(path: Path) -> ArtifactKind:
    from gaugeport.transport.sae_formats import detect_sae_format

    names = {p.name for p in path.iterdir()}
    if detect_sae_format(path) is not None:  # SAELens, sparsify (one hookpoint or a run), dictionary_learning, ...
        return ArtifactKind.SAE
    if "config.json" in names and "optimizer.pt" in names:
        return ArtifactKind.TRAINER_CHECKPOINT
    if "config.json" in names:
        raise ArtifactError(f"{path} is a model checkpoint without optimizer state",
                            hint="rewrite model weights with `gaugeport apply`; `transport` is for artifacts")
    raise ArtifactError(f"{path} is neither an SAE directory (SAELens cfg.json + sae_weights.safetensors, "
                        "sparsify cfg.json + sae.safetensors, dictionary_learning ae.pt, Gemma Scope params.npz) "
                        "nor a Trainer checkpoint (config.json + optimizer.pt)")


def _table_kind(path: Path) -> ArtifactKind:
    """Attributions when entries carry a score, coordinate sets otherwise."""
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path} is not a text file ({exc})") from exc
    if path.suffix.lower() == ".csv":
        header = text.splitlines()[0].split(",") if text.strip() else []
        return ArtifactKind.ATTRIBUTIONS if "score" in [h.strip() for h in header] else ArtifactKind.COORDINATES
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})", hint="the file is truncated or corrupt") from exc
    if isinstance(data, dict):
        return ArtifactKind.ATTRIBUTIONS if "scores" in data or "attributions" in data else ArtifactKind.COORDINATES
    first = data[0] if isinstance(data, list) and data else None
    if isinstance(first, list) or (isinstance(first, dict) and "score" in first):
        return ArtifactKind.ATTRIBUTIONS
    return ArtifactKind.COORDINATES


def transport_artifact(path: str | Path, gauge: SignedPermutation, out: str | Path,
                       kind: ArtifactKind | str | None = None, perm_only: bool = False, force: bool = False,
                       unsigned_scores: bool = False) -> Path:
    """Detect (or take) the kind of ``path`` and transport it to ``out``."""
    if kind is not None and kind not in KINDS:
        raise ArtifactError(f"unknown artifact kind {kind!r}", hint=f"kinds: {', '.join(KINDS)}")
    detected = detect_kind(path)
    if kind in SAE_FORMATS and detected in (ArtifactKind.SAE, ArtifactKind.VECTOR):
        from gaugeport.transport.sae_formats import transport_sae_path

        return transport_sae_path(path, gauge, out, fmt=str(kind), perm_only=perm_only, force=force)
    chosen = ArtifactKind(kind) if kind is not None else detected
    if chosen != detected and not (chosen in _TABLES and detected in _TABLES):
        raise ArtifactError(f"--kind {chosen} does not fit {Path(path).name}, which looks like a {detected}",
                            hint=f"kinds: {', '.join(KINDS)}; leave --kind out to detect it")
    if chosen == ArtifactKind.VECTOR:
        from gaugeport.transport.vectors import transport_vector_file

        return transport_vector_file(path, gauge, out, perm_only=perm_only, force=force)
    if chosen == ArtifactKind.SAE:
        from gaugeport.transport.sae_formats import transport_sae_path

        return transport_sae_path(path, gauge, out, perm_only=perm_only, force=force)
    if chosen == ArtifactKind.TRAINER_CHECKPOINT:
        from gaugeport.transport.adamw import transport_trainer_checkpoint

        return transport_trainer_checkpoint(path, gauge, out, perm_only=perm_only, force=force)
    from gaugeport.transport.coordinates import transport_coordinates_file

    return transport_coordinates_file(path, gauge, out, kind=chosen.value, perm_only=perm_only,  # type: ignore[arg-type]
                                      force=force, unsigned_scores=unsigned_scores)
