"""repeng control vectors as llama.cpp ``.gguf`` files (``ControlVector.export_gguf`` layout).

The file has ``general.architecture = "controlvector"``, ``controlvector.model_hint`` (a model type),
``controlvector.layer_count`` and one 1-D tensor ``direction.{layer}`` per layer. This module only
reads and writes the format; :func:`gaugeport.transport.vectors.transport_vector_file` rewrites every
direction as ``G v``, keeps every other key/value field, and adds ``gaugeport.*`` fields (fingerprint,
source); llama.cpp and repeng read only the fields they know, so both still load it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gaugeport.core.errors import ArtifactError, CheckpointError
from gaugeport.core.fileio import atomic_path

ARCH = "controlvector"
_SKIP_FIELDS = ("GGUF.", "general.architecture")  # written by GGUFWriter itself


@dataclass
class ControlVectorFile:
    model_hint: str
    directions: dict[int, np.ndarray]
    fields: dict[str, tuple[Any, Any, Any]] = field(default_factory=dict)  # key -> (value, type, sub_type)


def read_control_vector_gguf(path: str | Path) -> ControlVectorFile:
    """Read a control-vector ``.gguf``; anything else (a model ``.gguf``, a corrupt file) is refused."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"control-vector file not found: {path}")
    try:
        reader = gguf.GGUFReader(path)
        fields = {k: f for k, f in reader.fields.items()}
        tensors = list(reader.tensors)
    except Exception as exc:  # gguf raises ValueError / struct errors / IndexError on bad bytes
        raise CheckpointError(f"cannot read {path}: {exc}", hint="the file is truncated or not a GGUF file") from exc
    arch = fields["general.architecture"].contents() if "general.architecture" in fields else None
    if arch != ARCH:
        raise ArtifactError(f"{path} is a GGUF file with architecture {arch!r}, not a control vector",
                            hint="gaugeport transports repeng/llama.cpp control vectors (architecture "
                            "'controlvector'); to rewrite a model, convert it to a Hugging Face checkpoint "
                            "and use `gaugeport apply`")
    hint_field = fields.get(f"{ARCH}.model_hint")
    directions = {}
    for t in tensors:
        if not t.name.startswith("direction."):
            raise ArtifactError(f"{path}: unexpected tensor {t.name!r} in a control vector (only direction.N)")
        try:
            layer = int(t.name.split(".", 1)[1])
        except ValueError as exc:
            raise ArtifactError(f"{path}: tensor name {t.name!r} is not direction.<layer>") from exc
        if t.data.dtype.kind != "f":
            raise ArtifactError(f"{path}: {t.name} is stored as {t.tensor_type.name}; only F32/F16 directions "
                                "can be transported (quantised ones would need re-quantisation)")
        directions[layer] = np.array(t.data).reshape(-1)
    if not directions:
        raise ArtifactError(f"{path}: the control vector holds no direction.N tensors")
    kept = {k: (f.contents(), f.types[0], f.types[-1] if len(f.types) > 1 else None)
            for k, f in fields.items() if not k.startswith(_SKIP_FIELDS)}
    return ControlVectorFile(hint_field.contents() if hint_field else "", directions, kept)


def write_control_vector_gguf(cv: ControlVectorFile, path: str | Path, *, force: bool = False,
                              inputs: tuple[Path, ...] = ()) -> Path:
    """Write ``cv`` as repeng's ``export_gguf`` does (atomically), with its extra fields."""
    import gguf

    path = Path(path)
    with atomic_path(path, force, inputs=inputs, kind="file") as tmp:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_string(f"{ARCH}.model_hint", cv.model_hint)
        writer.add_uint32(f"{ARCH}.layer_count", len(cv.directions))
        for key, (value, vtype, sub_type) in cv.fields.items():
            if key not in (f"{ARCH}.model_hint", f"{ARCH}.layer_count"):
                writer.add_key_value(key, value, vtype, sub_type)
        for layer, v in cv.directions.items():
            writer.add_tensor(f"direction.{layer}", np.ascontiguousarray(v))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path
