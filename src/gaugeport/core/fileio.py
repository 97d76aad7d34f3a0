"""Safe file I/O: atomic writes (temp file, then rename), safe reads with clear errors.

Nothing here ever writes to a path that already exists unless ``force`` is set, and an
interrupted write leaves no partial output behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gaugeport.core.errors import CheckpointError


def refuse_existing(path: Path, force: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse to write ``path`` when it exists (unless ``force``) or when it is one of the inputs."""
    path = Path(path)
    for src in inputs:
        src_r, out_r = Path(src).resolve(), path.resolve()
        if out_r == src_r or src_r in out_r.parents or out_r in src_r.parents:
            raise CheckpointError(
                f"output {path} overlaps the input {src}",
                hint="choose an output path outside the input; inputs are never overwritten",
            )
    if path.exists() and not force:
        raise CheckpointError(f"output {path} already exists", hint="pass --force to replace it, or pick a new path")


@contextlib.contextmanager
def atomic_path(path: Path, force: bool = False, inputs: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success rename it to ``path``, on failure delete it.

    Works for files and directories alike (the caller creates whatever it wants at the temp path).
    """
    path = Path(path)
    refuse_existing(path, force, inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise CheckpointError(f"internal error: nothing was written for {path}")
        if path.exists():  # force: move the old one aside, then replace it
            trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, trash / path.name)
            os.replace(target, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str] | None = None, *, force: bool = False
) -> Path:
    with atomic_path(path, force) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=dict(metadata or {}))
    return Path(path)


def atomic_write_text(path: Path, text: str, *, force: bool = True) -> Path:
    with atomic_path(path, force) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: Path, obj: object, *, force: bool = True) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", force=force)


def read_safetensors(path: Path, what: str = "safetensors file") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read every tensor and the metadata; truncated or corrupt files raise :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as exc:  # safetensors raises its own SafetensorError / OSError variants
        raise CheckpointError(
            f"cannot read {what} {path}: {exc}", hint="the file is truncated or not a safetensors file"
        ) from exc
    return tensors, metadata
