"""Which kind of artifact is this path, and which transport handles it."""

from __future__ import annotations

import json
from pathlib import Path

from gaugeport.core.errors import ArtifactError, CheckpointError
from gaugeport.transport._common import GaugeLike

KINDS = ("vector", "sae", "coordinates", "attributions", "trainer-checkpoint",
         "saelens", "sparsify", "dictionary-learning", "gemma-scope")  # the last four force an SAE format
_SAE_FORMATS = ("saelens", "sparsify", "dictionary-learning", "gemma-scope")
_TABLES = ("coordinates", "attributions")


def detect_kind(path: str | Path) -> str:
    """The artifact kind of ``path`` (see ``KINDS``), from its layout and, for tables, its content."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"artifact not found: {path}")
    if path.is_dir():
        return _dir_kind(path)
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth", ".npz"):  # by content: a dictionary_learning ae.pt, a Gemma Scope params.npz
        from gaugeport.transport.sae_formats import detect_sae_format

        if detect_sae_format(path) is not None:
            return "sae"
    if suffix in (".pt", ".pth", ".npy", ".safetensors", ".gguf"):
        return "vector"
    if suffix in (".json", ".csv"):
        return _table_kind(path)
    raise ArtifactError(f"cannot tell what kind of artifact {path.name} is",
                        hint="vectors: .pt .safetensors .npy .gguf; coordinate sets / attributions: .json .csv; "
                        "SAEs and Trainer checkpoints: directories")


def _dir_kind(path: Path) -> str:
    from gaugeport.transport.sae_formats import detect_sae_format

    names = {p.name for p in path.iterdir()}
    if detect_sae_format(path) is not None:
        return "sae"
    if "config.json" in names and "optimizer.pt" in names:
        return "trainer-checkpoint"
    if "config.json" in names:
        raise ArtifactError(f"{path} is a model checkpoint without optimizer state",
                            hint="rewrite model weights with `gaugeport apply`; `transport` is for artifacts")
    raise ArtifactError(f"{path} is neither an SAE directory (SAELens cfg.json + sae_weights.safetensors, "
                        "sparsify cfg.json + sae.safetensors, dictionary_learning ae.pt, Gemma Scope params.npz) "
                        "nor a Trainer checkpoint (config.json + optimizer.pt)")


def _table_kind(path: Path) -> str:
    """Attributions when entries carry a score, coordinate sets otherwise."""
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path} is not a text file ({exc})") from exc
    if path.suffix.lower() == ".csv":
        header = text.splitlines()[0].split(",") if text.strip() else []
        return "attributions" if "score" in [h.strip() for h in header] else "coordinates"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})", hint="the file is truncated or corrupt") from exc
    if isinstance(data, dict):
        return "attributions" if "scores" in data or "attributions" in data else "coordinates"
    first = data[0] if isinstance(data, list) and data else None
    if isinstance(first, list) or (isinstance(first, dict) and "score" in first):
        return "attributions"
    return "coordinates"


def transport_artifact(path: str | Path, gauge: GaugeLike, out: str | Path, kind: str | None = None,
                       perm_only: bool = False, force: bool = False, unsigned_scores: bool = False) -> Path:
    """Detect (or take) the kind of ``path`` and transport it to ``out``."""
    detected = detect_kind(path)
    if kind in _SAE_FORMATS and detected in ("sae", "vector"):  # --kind names the SAE format: force it
        from gaugeport.transport.sae_formats import transport_sae_path

        return transport_sae_path(path, gauge, out, fmt=kind, perm_only=perm_only, force=force)
    if kind is not None and kind != detected and not (kind in _TABLES and detected in _TABLES):
        raise ArtifactError(f"--kind {kind} does not fit {Path(path).name}, which looks like a {detected}",
                            hint=f"kinds: {', '.join(KINDS)}; leave --kind out to detect it")
    kind = kind or detected
    if kind == "vector":
        from gaugeport.transport.vectors import transport_vector_file

        return transport_vector_file(path, gauge, out, perm_only=perm_only, force=force)
    if kind == "sae":
        from gaugeport.transport.sae_formats import transport_sae_path

        return transport_sae_path(path, gauge, out, perm_only=perm_only, force=force)
    if kind == "trainer-checkpoint":
        from gaugeport.transport.adamw import transport_trainer_checkpoint

        return transport_trainer_checkpoint(path, gauge, out, perm_only=perm_only, force=force)
    if kind in _TABLES:
        from gaugeport.transport.coordinates import transport_coordinates_file

        return transport_coordinates_file(path, gauge, out, kind=kind, perm_only=perm_only,  # type: ignore[arg-type]
                                          force=force, unsigned_scores=unsigned_scores)
    raise ArtifactError(f"unknown artifact kind {kind!r}", hint=f"kinds: {', '.join(KINDS)}")
