"""Hugging Face checkpoints on disk, read tensor by tensor and written tensor by tensor.

A checkpoint is a directory with ``config.json`` and either ``model.safetensors`` or shards
listed in ``model.safetensors.index.json``. Reading never loads the whole model; writing
streams each tensor straight to its file, so peak memory stays near the largest tensor.
"""

from __future__ import annotations

import json
import re
import struct
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import safe_open

from gaugeport.core.archspec import ArchSpec, spec_for_config
from gaugeport.core.errors import CheckpointError, DataError
from gaugeport.core.facts import ModelFacts
from gaugeport.core.fileio import (  # noqa: F401 (the safetensors file layer, re-exported)
    INDEX_FILE,
    SINGLE_FILE,
    SafetensorsStreamWriter,
    _name_to_dtype,
    dtype_from_name,
    is_plain_file_name,
    note_input,
)

if TYPE_CHECKING:
    from gaugeport.core.quant import Quantization

# Files that carry weights in other formats: never copied beside transformed safetensors,
# since they would hold the *untransformed* weights.
WEIGHT_SUFFIXES = {".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".gguf", ".safetensors"}


@dataclass
class Checkpoint:
    path: Path
    config: dict[str, Any]
    shard_of: dict[str, str]  # tensor name -> shard file name
    index: dict[str, Any] | None  # parsed model.safetensors.index.json, None for a single file

    @classmethod
    def open(cls, path: str | Path, *, allow_quantized: bool = False) -> Checkpoint:
        """Open a checkpoint directory, validating everything read from its files before any use.

        ``config.json`` must be a JSON object with a positive integer width; the shard names in an
        index must be plain ``*.safetensors`` file names inside the directory (a name such as
        ``../x.safetensors`` is refused: it would read, and on output write, outside the directories
        given); every tensor the index lists must be in the shard it names, and no shard may hold a
        tensor the index does not list. A hub ID (``org/name[@revision]``) that is not a local path
        opens its snapshot in the local hub cache (:func:`gaugeport.core.hub.resolve_checkpoint`).
        A quantized checkpoint is refused, naming its scheme, unless ``allow_quantized`` (the
        ``--dequantize`` path).
        """
        from gaugeport.core.hub import resolve_checkpoint

        path = resolve_checkpoint(path)
        if not path.is_dir():
            if path.exists():
                raise CheckpointError(f"{path} is a file, not a checkpoint directory",
                                      hint="give the directory that holds config.json and the *.safetensors "
                                      f"files (here: {path.parent})")
            raise CheckpointError(f"checkpoint directory not found: {path}",
                                  hint="check the path; a checkpoint is a directory with config.json and "
                                  "model.safetensors (or shards with model.safetensors.index.json)")
        note_input(path)
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise CheckpointError(f"{path} has no config.json", hint="point at a Hugging Face checkpoint directory")
        config = _read_json(cfg_path)
        if not isinstance(config, dict):
            raise CheckpointError(f"{cfg_path} holds a JSON {type(config).__name__}, not an object",
                                  hint="config.json must be the object written by save_pretrained")
        if "text_config" in config and not isinstance(config["text_config"], dict):
            raise CheckpointError(f"{cfg_path}: text_config is not an object", hint="the config is corrupt")
        if (path / INDEX_FILE).is_file():
            index = _read_json(path / INDEX_FILE)
            shard_of = _validated_weight_map(index, path / INDEX_FILE)
            for shard in sorted(set(shard_of.values())):
                if not (path / shard).is_file():
                    raise CheckpointError(f"shard {shard} listed in {INDEX_FILE} is missing from {path}",
                                          hint="copy the complete checkpoint (every shard the index names)")
            _check_index_matches_shards(path, shard_of)
        elif (path / SINGLE_FILE).is_file():
            index = None
            shard_of = dict.fromkeys(_keys(path / SINGLE_FILE), SINGLE_FILE)
        else:
            others = sorted(p.name for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
            raise CheckpointError(
                f"{path} has no {SINGLE_FILE} or {INDEX_FILE}" + (f" (found {', '.join(others)})" if others else ""),
                hint="gaugeport reads safetensors; re-save with model.save_pretrained(dir) (safetensors by default)",
            )
        ckpt = cls(path, config, shard_of, index)
        ckpt._check_config_numbers()
        ckpt._check_layer_count()
        if not allow_quantized and (q := ckpt.quantization) is not None:
            from gaugeport.core.quant import refuse_quantized

            raise refuse_quantized(q, path)
        return ckpt

    def _check_config_numbers(self) -> None:
        cfg = self.config.get("text_config", self.config)
        for key in ("hidden_size", "n_embd", "d_model", "num_hidden_layers", "n_layer", "vocab_size",
                    "max_position_embeddings", "n_positions", "num_attention_heads", "intermediate_size"):
            if key in cfg and cfg[key] is not None:
                val = cfg[key]
                if isinstance(val, bool) or not isinstance(val, int) or val <= 0:
                    raise CheckpointError(f"{self.path}/config.json: {key} = {val!r} is not a positive integer",
                                          hint="the config is corrupt or hand-edited; restore it from the source")

    def _check_layer_count(self) -> None:
        """config.json's number of layers is no more than the weights hold (names only): every verb sizes
        models, gauges and loops by it, so a config that claims millions of layers is refused up front."""
        cfg = self.config.get("text_config", self.config)
        n_layers = next((cfg[k] for k in ("num_hidden_layers", "n_layer") if isinstance(cfg.get(k), int)), None)
        if n_layers is None:
            return
        held = {m.group(1) for m in map(_FIRST_INDEX.search, self.names) if m is not None}
        if n_layers > len(held):
            raise CheckpointError(f"{self.path}/config.json says there are {n_layers} layers, but the weights hold "
                                  f"{len(held)}",
                                  hint="config.json and the weights disagree: the checkpoint is corrupt or mixed "
                                  "from two models")

    def check_widths(self, spec: ArchSpec | None = None) -> None:
        """Every tensor's residual axes (per the architecture table) have the config's width (headers only)."""
        spec = spec or self.spec
        d = self.d_model
        rules = spec.classify_all(self.names)
        for shard in self.shards:
            for name, (_, shape) in shard_layout(self, shard).items():
                rule = rules[name]
                for i, axis in enumerate(rule.axes):
                    k = rule.blocks_on(i) if hasattr(rule, "blocks_on") else 1
                    if axis >= len(shape) or shape[axis] != k * d:
                        raise CheckpointError(
                            f"{self.path}: config.json says the hidden size is {d}, but tensor {name!r} has "
                            f"shape {tuple(shape)} (residual axis {axis}"
                            + (f", {k} blocks of the hidden size)" if k > 1 else ")"),
                            hint="config.json and the weights disagree: the checkpoint is corrupt or mixed from "
                            "two models",
                        )

    # ------------------------------------------------------------------ facts
    @property
    def spec(self) -> ArchSpec:
        return spec_for_config(self.config)

    @property
    def hub(self) -> dict[str, str]:
        """The hub repo and commit when this checkpoint is a hub cache snapshot (else empty)."""
        from gaugeport.core.hub import hub_provenance

        return hub_provenance(self.path)

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type"))

    @property
    def quantization(self) -> Quantization | None:
        """The quantization scheme (from quantization_config or tensor names); None for plain weights."""
        from gaugeport.core.quant import detect_quantization

        return detect_quantization(self.config, self.names)

    @property
    def facts(self) -> ModelFacts:
        """Hidden size, layers, vocabulary, special ids: read where the architecture table says."""
        return ModelFacts.from_config(self.config)

    @property
    def d_model(self) -> int:
        return self.facts.d_model

    @property
    def n_layers(self) -> int:
        return self.facts.n_layers

    @property
    def position_limit(self) -> int | None:
        """Longest sequence the model can read (learned absolute positions), None without such a table."""
        shapes = ((n, s) for shard in self.shards for n, (_, s) in shard_layout(self, shard).items())
        return learned_position_limit(shapes)

    @property
    def names(self) -> list[str]:
        return list(self.shard_of)

    @property
    def shards(self) -> list[str]:
        return sorted(set(self.shard_of.values()))

    # ------------------------------------------------------------------ reading
    def _file_of(self, name: str) -> Path:
        """The shard file holding tensor ``name``; a :class:`CheckpointError` when no shard does."""
        if name not in self.shard_of:
            raise CheckpointError(f"tensor {name!r} not in checkpoint {self.path}")
        return self.path / self.shard_of[name]

    def tensor(self, name: str) -> torch.Tensor:
        file = self._file_of(name)
        with _open(file) as f:
            return check_finite(name, _get(f, name, file), self.path)

    def shape(self, name: str) -> tuple[int, ...]:
        """The stored shape of tensor ``name``, from its shard's header (no data read)."""
        with _open(self._file_of(name)) as f:
            return tuple(int(n) for n in f.get_slice(name).get_shape())

    def tensor_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of tensor ``name`` (its first axis), read alone, checked finite: a large
        tensor compared slice by slice never sits whole in memory."""
        file = self._file_of(name)
        with _open(file) as f:
            try:
                rows = f.get_slice(name)[start:stop]
            except Exception as exc:
                raise CheckpointError(f"cannot read rows {start}:{stop} of {name!r} from {file}: {exc}",
                                      hint="the file is truncated or corrupt") from exc
        return check_finite(name, rows, self.path)

    def iter_shard(self, shard: str) -> Iterator[tuple[str, torch.Tensor]]:
        file = self.path / shard
        for name in sorted(_keys(file)):
            # reopen per tensor: an open file keeps every page read so far mapped (counted in RSS),
            # which would make the peak grow with the shard rather than with the tensor
            with _open(file) as f:
                tensor = _get(f, name, file)
            yield name, check_finite(name, tensor, self.path)

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


_FIRST_INDEX = re.compile(r"\.(\d+)(?:\.|$)")  # the layer of "model.layers.3.mlp..." (the first index of a name)


class ShardReader:
    """Tensors of one shard read with plain positioned reads (``os.preadv`` straight into the tensor's
    memory: one copy from the page cache, no page faults of a memory map), each checked finite.
    Safe to use from one thread at a time; ``close()`` (or a ``with`` block) releases the file."""

    def __init__(self, ckpt: Checkpoint, shard: str) -> None:
        import os

        self.ckpt, self.file = ckpt, ckpt.path / shard
        note_input(self.file)
        try:
            self.fd = os.open(self.file, os.O_RDONLY)
            (n,) = struct.unpack("<Q", os.pread(self.fd, 8, 0))
            header = json.loads(os.pread(self.fd, n, 8))
            size = os.fstat(self.fd).st_size
        except (OSError, struct.error, ValueError) as exc:
            raise CheckpointError(f"cannot read {self.file}: {exc}", hint="the file is truncated or corrupt") from exc
        self.base = 8 + n
        self.entries: dict[str, tuple[str, list[int], int, int]] = {}
        for name, e in header.items():
            if name == "__metadata__":
                continue
            begin, end = e["data_offsets"]
            if not 0 <= begin <= end or self.base + end > size:
                raise CheckpointError(f"tensor {name!r} lies outside {self.file}", hint="the file is truncated")
            self.entries[name] = (e["dtype"], e["shape"], begin, end)

    def nbytes(self, name: str) -> int:
        _, _, begin, end = self.entries[name]
        return end - begin

    def read(self, name: str, out: np.ndarray | None = None) -> torch.Tensor:
        """Tensor ``name``, checked finite. ``out``: a ``uint8`` array of exactly its bytes to read into (a
        buffer reused from tensor to tensor: no page is faulted in twice); the tensor is then a view of it."""
        import os

        dtype_name, shape, begin, end = self.entries[name]
        if dtype_name.upper() not in _name_to_dtype():  # a dtype torch has no plain view for (float8 ...)
            with _open(self.file) as f:
                return check_finite(name, _get(f, name, self.file), self.ckpt.path)
        dtype = dtype_from_name(dtype_name)
        if out is not None and out.nbytes != end - begin:
            raise ValueError(f"internal error: {name!r} has {end - begin} bytes, the buffer {out.nbytes}")
        buf = torch.empty(end - begin, dtype=torch.uint8) if out is None else torch.from_numpy(out)
        view = memoryview(buf.numpy())
        done = 0
        while done < len(view):
            got = os.preadv(self.fd, [view[done:]], self.base + begin + done)
            if got <= 0:
                raise CheckpointError(f"cannot read tensor {name!r} from {self.file}: unexpected end of file",
                                      hint="the file is truncated or corrupt")
            done += got
        t = buf.view(dtype).reshape(shape) if end > begin else torch.empty(shape, dtype=dtype)
        return check_finite(name, t, self.ckpt.path)

    def map(self, name: str, *, checked: bool = True, populate: bool | None = None) -> torch.Tensor:
        """Tensor ``name`` as a read-only private mapping of the file's pages (populated at once: one
        sequential read when they are not cached, no copy when they are), checked finite. Read-only: the
        tensor must never be written to (a write would fault); transforms make new tensors. No memory is
        allocated for it, so no page is touched for the first time; the mapping goes when the tensor does.
        Dtypes torch cannot view fall back to :meth:`read`.

        ``checked=False``: neither populated nor checked finite, so nothing waits for the disk here; each page
        comes in when it is first touched. The caller must check every value it uses (:func:`check_finite`)
        as it goes (``fingerprint`` and ``canonicalize`` check each gathered part). ``populate`` (default:
        ``checked``): populate the mapping at once (one call for all its pages, not a fault per page)."""
        import mmap

        dtype_name, shape, begin, end = self.entries[name]
        if dtype_name.upper() not in _name_to_dtype() or end == begin or not hasattr(mmap, "MAP_POPULATE"):
            return self.read(name)
        import os

        start = self.base + begin
        if os.fstat(self.fd).st_size < start + end - begin:  # a page past the end would kill the process (SIGBUS)
            raise CheckpointError(f"cannot read tensor {name!r} from {self.file}: unexpected end of file",
                                  hint="the file is truncated or corrupt (it shrank after it was opened)")
        aligned = start - start % mmap.ALLOCATIONGRANULARITY
        # read-only: populating a writable private mapping breaks copy-on-write page by page (a fresh
        # page and a copy each: 2.4 GB/s measured, against 14 GB/s for the page cache's own pages)
        flags = mmap.MAP_PRIVATE | (mmap.MAP_POPULATE if (checked if populate is None else populate) else 0)
        area = mmap.mmap(self.fd, start - aligned + end - begin, flags=flags, prot=mmap.PROT_READ, offset=aligned)
        data = np.frombuffer(area, dtype=np.uint8, count=end - begin, offset=start - aligned)
        with warnings.catch_warnings():  # torch warns that it cannot protect a read-only buffer
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(data).view(dtype_from_name(dtype_name)).reshape(shape)
        return check_finite(name, t, self.ckpt.path) if checked else t

    def close(self) -> None:
        import os

        os.close(self.fd)

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def shard_layout(ckpt: Checkpoint, shard: str) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Names, dtypes and shapes of a shard, read from its header (no tensor data)."""
    out = {}
    with _open(ckpt.path / shard) as f:
        for name in f.keys():  # noqa: SIM118
            sl = f.get_slice(name)
            out[name] = (dtype_from_name(sl.get_dtype()), tuple(sl.get_shape()))
    return out


# ---------------------------------------------------------------------- validation
_LEARNED_POSITIONS = re.compile(r"(^|\.)(wpe|position_embeddings|embed_positions)\.weight$")


def learned_position_limit(named_shapes: Iterable[tuple[str, Sequence[int]]]) -> int | None:
    """Rows of a learned absolute position-embedding table (GPT-2 ``wpe``, BERT ``position_embeddings``):
    the longest sequence the model can read. None for rotary / relative positions (no hard limit)."""
    for name, shape in named_shapes:
        if _LEARNED_POSITIONS.search(name) and len(shape) == 2:
            return int(shape[0])
    return None


def check_sequence_length(seq_len: int, limit: int | None, where: str = "the model") -> None:
    """Refuse sequences longer than a learned position table (they would index past its end)."""
    if limit is not None and seq_len > limit:
        raise DataError(f"sequences of {seq_len} tokens are longer than {where} can read ({limit} learned positions)",
                        hint=f"use --seq-len {limit} or less (or shorter rows in the data)")


_FINITE_CHUNK = 1 << 20  # elements per chunk of the finite checks: their extra memory stays a few MB


# IEEE formats: a value is NaN or infinite exactly when its exponent bits are all ones, that is when
# its bits without the sign are >= the exponent mask (viewed as a same-size signed integer)
_EXPONENT_BITS = {torch.bfloat16: (torch.int16, 0x7FFF, 0x7F80), torch.float16: (torch.int16, 0x7FFF, 0x7C00),
                  torch.float32: (torch.int32, 0x7FFFFFFF, 0x7F800000),
                  torch.float64: (torch.int64, 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000)}


_FINITE_SCRATCH = threading.local()  # per thread: the reused buffer of _finite_by_exponent's masked chunks


def _finite_by_exponent(tensor: torch.Tensor) -> bool:
    """Every entry finite? On the bits, chunk by chunk: a value is NaN or infinite exactly when its bits
    without the sign reach the exponent mask, so the tensor is finite exactly when each chunk's largest
    masked value stays below it. Two numpy calls a chunk into one reused per-thread buffer: nothing
    allocated, the GIL released in each, and no thread pool (``torch.aminmax``, the check before
    2026-12-03, ran on torch's OpenMP pool, whose threads then spin beside the threads gathering and
    hashing: 0.4 s of CPU on a 2.1 GB ``fingerprint``, ``docs/scale.md``)."""
    int_dtype, magnitude, exponent = _EXPONENT_BITS[tensor.dtype]
    bits = tensor.detach().reshape(-1).view(int_dtype).numpy()
    scratch = getattr(_FINITE_SCRATCH, "buf", None)
    if scratch is None or scratch.dtype != bits.dtype:
        scratch = _FINITE_SCRATCH.buf = np.empty(_FINITE_CHUNK, dtype=bits.dtype)
    for start in range(0, bits.size, _FINITE_CHUNK):
        chunk = bits[start:start + _FINITE_CHUNK]
        masked = scratch[:chunk.size]
        np.bitwise_and(chunk, magnitude, out=masked)
        if masked.max() >= exponent:
            return False
    return True


def check_finite(name: str, tensor: torch.Tensor, where: Path | str = "") -> torch.Tensor:
    """``tensor`` itself when every entry is finite; else a :class:`CheckpointError` naming it.

    IEEE floats on the CPU: a pass over the bits that keeps nothing (:func:`_finite_by_exponent`). Others (float8,
    complex, a tensor on a GPU): in chunks, so the extra memory is a small fixed buffer rather than a
    tensor-sized mask.
    """
    if not (tensor.is_floating_point() or tensor.is_complex()) or tensor.numel() == 0:
        return tensor
    if tensor.dtype in _EXPONENT_BITS and tensor.device.type == "cpu" and _finite_by_exponent(tensor):
        return tensor
    flat = tensor.reshape(-1)
    for start in range(0, flat.numel(), _FINITE_CHUNK):
        chunk = flat[start:start + _FINITE_CHUNK]
        if chunk.element_size() == 1:  # float8 (quantized releases): torch has no isfinite for it
            chunk = chunk.float()
        # Fast path: a finite sum proves every entry finite (NaN and +-inf always make the sum
        # non-finite), at a fraction of the cost of an isfinite mask. A non-finite sum (bad entries,
        # or a sum that overflowed its dtype) falls through to the exact check.
        if not chunk.is_complex() and bool(torch.isfinite(chunk.sum())):
            continue
        if not bool(torch.isfinite(chunk).all()):
            bad = chunk[~torch.isfinite(chunk)]
            kind = "NaN" if bool(torch.isnan(bad).any()) else "infinite"
            raise CheckpointError(
                f"tensor {name!r}{f' in {where}' if where else ''} contains {kind} values",
                hint="the weights are corrupt (a diverged run or a bad conversion); gaugeport refuses them "
                "rather than carry them into a new checkpoint")
    return tensor


def _validated_weight_map(index: Any, where: Path) -> dict[str, str]:
    if not isinstance(index, dict):
        raise CheckpointError(f"{where} holds a JSON {type(index).__name__}, not an object",
                              hint="the index must be {\"metadata\": ..., \"weight_map\": {tensor: shard}}")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{where}: weight_map is {type(weight_map).__name__}, not an object",
                              hint="the index must map each tensor name to its shard file name")
    if not weight_map:
        raise CheckpointError(f"{where} has an empty weight_map", hint="the index is truncated or corrupt")
    for tensor, shard in weight_map.items():
        if not is_plain_file_name(shard) or not str(shard).endswith(".safetensors"):
            raise CheckpointError(
                f"{where}: tensor {tensor!r} names the shard {shard!r}, which is not a plain *.safetensors file name "
                "in the checkpoint directory",
                hint="shard names may not contain directories or '..'; the index is corrupt or crafted, so "
                "nothing was read or written")
    return {str(k): str(v) for k, v in weight_map.items()}


def _check_index_matches_shards(path: Path, shard_of: dict[str, str]) -> None:
    present = {shard: set(_keys(path / shard)) for shard in sorted(set(shard_of.values()))}
    missing = sorted(name for name, shard in shard_of.items() if name not in present[shard])
    if missing:
        name = missing[0]
        elsewhere = [s for s, keys in present.items() if name in keys]
        raise CheckpointError(
            f"{INDEX_FILE} maps tensor {name!r} to {shard_of[name]}, which does not contain it"
            + (f" (it is in {elsewhere[0]})" if elsewhere else " (no shard holds it)")
            + (f"; {len(missing) - 1} more tensor(s) likewise" if len(missing) > 1 else ""),
            hint="the index and the shards disagree; regenerate the index or re-save the checkpoint")
    for shard, keys in present.items():
        extra = sorted(k for k in keys if shard_of.get(k) != shard)
        if extra:
            raise CheckpointError(
                f"{shard} holds tensor {extra[0]!r}, which {INDEX_FILE} does not map to it"
                + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""),
                hint="the index and the shards disagree; regenerate the index or re-save the checkpoint")


# ---------------------------------------------------------------------- helpers
def _read_json(path: Path) -> Any:
    note_input(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})", hint="the file is truncated or corrupt") from exc


def _open(file: Path) -> Any:
    note_input(file)
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
