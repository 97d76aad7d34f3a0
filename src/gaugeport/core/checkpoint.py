"""Hugging Face checkpoints on disk, read tensor by tensor and written tensor by tensor.

A checkpoint is a directory with ``config.json`` and either ``model.safetensors`` or shards
listed in ``model.safetensors.index.json``. Reading never loads the whole model; writing
streams each tensor straight to its file, so peak memory stays near the largest tensor.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from gaugeport.core.archspec import ArchSpec, spec_for_config
from gaugeport.core.errors import CheckpointError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Files that carry weights in other formats: never copied beside transformed safetensors,
# since they would hold the *untransformed* weights.
WEIGHT_SUFFIXES = {".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".gguf", ".safetensors"}

_DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


@dataclass
class Checkpoint:
    path: Path
    config: dict[str, Any]
    shard_of: dict[str, str]  # tensor name -> shard file name
    index: dict[str, Any] | None  # parsed model.safetensors.index.json, None for a single file

    @classmethod
    def open(cls, path: str | Path) -> Checkpoint:
        from gaugeport.models.hub import resolve_checkpoint  # a hub ID (org/name[@revision]) -> its cached snapshot

        path = resolve_checkpoint(path)
        if not path.is_dir():
            raise CheckpointError(f"checkpoint directory not found: {path}")
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise CheckpointError(f"{path} has no config.json", hint="point at a Hugging Face checkpoint directory")
        config = _read_json(cfg_path)
        if (path / INDEX_FILE).is_file():
            index = _read_json(path / INDEX_FILE)
            shard_of = dict(index.get("weight_map", {}))
            if not shard_of:
                raise CheckpointError(f"{path / INDEX_FILE} has an empty weight_map")
            for shard in sorted(set(shard_of.values())):
                if not (path / shard).is_file():
                    raise CheckpointError(f"shard {shard} listed in {INDEX_FILE} is missing from {path}")
        elif (path / SINGLE_FILE).is_file():
            index = None
            shard_of = dict.fromkeys(_keys(path / SINGLE_FILE), SINGLE_FILE)
        else:
            others = sorted(p.name for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
            raise CheckpointError(
                f"{path} has no {SINGLE_FILE} or {INDEX_FILE}" + (f" (found {', '.join(others)})" if others else ""),
                hint="gaugeport reads safetensors; re-save with model.save_pretrained(dir) (safetensors by default)",
            )
        return cls(path, config, shard_of, index)

    # ------------------------------------------------------------------ facts
    @property
    def spec(self) -> ArchSpec:
        return spec_for_config(self.config)

    @property
    def hub(self) -> dict[str, str]:
        """The hub repo and commit when this checkpoint is a hub cache snapshot (else empty)."""
        from gaugeport.models.hub import hub_provenance

        return hub_provenance(self.path)

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type"))

    @property
    def d_model(self) -> int:
        cfg = self.config.get("text_config", self.config)
        for key in ("hidden_size", "n_embd", "d_model"):
            if key in cfg:
                return int(cfg[key])
        raise CheckpointError(f"{self.path}/config.json names no hidden size (hidden_size / n_embd)")

    @property
    def n_layers(self) -> int:
        cfg = self.config.get("text_config", self.config)
        return int(cfg.get("num_hidden_layers", cfg.get("n_layer", 0)))

    @property
    def names(self) -> list[str]:
        return list(self.shard_of)

    @property
    def shards(self) -> list[str]:
        return sorted(set(self.shard_of.values()))

    # ------------------------------------------------------------------ reading
    def tensor(self, name: str) -> torch.Tensor:
        if name not in self.shard_of:
            raise CheckpointError(f"tensor {name!r} not in checkpoint {self.path}")
        with _open(self.path / self.shard_of[name]) as f:
            return _get(f, name, self.path / self.shard_of[name])

    def iter_shard(self, shard: str) -> Iterator[tuple[str, torch.Tensor]]:
        file = self.path / shard
        for name in sorted(_keys(file)):
            # reopen per tensor: an open file keeps every page read so far mapped (counted in RSS),
            # which would make the peak grow with the shard rather than with the tensor
            with _open(file) as f:
                tensor = _get(f, name, file)
            yield name, tensor

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for shard in self.shards:
            yield from self.iter_shard(shard)

    def shard_metadata(self, shard: str) -> dict[str, str]:
        with _open(self.path / shard) as f:
            return dict(f.metadata() or {})

    def side_files(self) -> list[Path]:
        """Config, tokenizer, generation config and other non-weight files to copy along."""
        return sorted(p for p in self.path.iterdir()
                      if p.is_file() and p.suffix not in WEIGHT_SUFFIXES and p.name != INDEX_FILE)


# ---------------------------------------------------------------------- streaming writer
class SafetensorsStreamWriter:
    """Write a safetensors file one tensor at a time (header first, then each tensor's bytes).

    The caller declares every tensor's name, dtype and shape up front (known from the source's
    header), so nothing needs to be held in memory beyond the tensor being written.
    """

    def __init__(self, path: Path, layout: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
                 metadata: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        self.layout = dict(layout)
        self.order = sorted(self.layout)
        header: dict[str, Any] = {}
        offset = 0
        for name in self.order:
            dtype, shape = self.layout[name]
            if dtype not in _DTYPE_NAMES:
                raise CheckpointError(f"tensor {name!r} has dtype {dtype}, which gaugeport cannot stream")
            nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        if metadata:
            header["__metadata__"] = dict(metadata)
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._file = open(self.path, "wb")  # noqa: SIM115 (closed in close())
        self._file.write(struct.pack("<Q", len(raw)) + raw)
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        expected = self.order[self._next] if self._next < len(self.order) else None
        if name != expected:
            raise CheckpointError(f"internal error: wrote {name!r} but the layout expects {expected!r} next")
        dtype, shape = self.layout[name]
        if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
            raise CheckpointError(f"internal error: {name!r} changed dtype/shape while transforming")
        t = tensor.detach().contiguous().cpu()
        if t.numel():  # write the tensor's own buffer: a bytes copy would double the peak memory
            self._file.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        self._next += 1

    def close(self) -> None:
        self._file.close()
        if self._next != len(self.order):
            raise CheckpointError(f"internal error: {self.path} closed after {self._next}/{len(self.order)} tensors")

    def __enter__(self) -> SafetensorsStreamWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()


def shard_layout(ckpt: Checkpoint, shard: str) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Names, dtypes and shapes of a shard, read from its header (no tensor data)."""
    out = {}
    with _open(ckpt.path / shard) as f:
        for name in f.keys():  # noqa: SIM118
            sl = f.get_slice(name)
            out[name] = (_dtype_from_name(sl.get_dtype()), tuple(sl.get_shape()))
    return out


# ---------------------------------------------------------------------- helpers
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})", hint="the file is truncated or corrupt") from exc


def _open(file: Path) -> Any:
    try:
        return safe_open(str(file), framework="pt")
    except Exception as exc:
        raise CheckpointError(f"cannot read {file}: {exc}", hint="the file is truncated or corrupt") from exc


def _get(f: Any, name: str, file: Path) -> torch.Tensor:
    try:
        return f.get_tensor(name)
    except Exception as exc:
        raise CheckpointError(f"cannot read tensor {name!r} from {file}: {exc}",
                              hint="the file is truncated or corrupt") from exc


def _keys(file: Path) -> list[str]:
    with _open(file) as f:
        return list(f.keys())


_NAME_TO_DTYPE = {v: k for k, v in _DTYPE_NAMES.items()}
_NAME_TO_DTYPE.update({"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16})


def _dtype_from_name(name: str) -> torch.dtype:
    key = name.upper() if name.upper() in _NAME_TO_DTYPE else name
    if key not in _NAME_TO_DTYPE:
        raise CheckpointError(f"unsupported tensor dtype {name!r} in checkpoint")
    return _NAME_TO_DTYPE[key]
