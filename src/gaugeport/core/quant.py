"""Quantized releases: detected, refused by name, or dequantized into a plain checkpoint in the new gauge.

A quantized tensor stores blocks of the weight with one scale per block. Permuting the residual axis
moves coordinates between blocks, so the block structure would be destroyed: a gauge cannot be applied
to the packed form. gaugeport recognises the common schemes (from ``config.json``'s
``quantization_config`` and from tensor names), refuses them with an error naming the scheme, and
``apply --dequantize bf16`` writes a plain bfloat16 checkpoint in the new gauge instead. That output is
lossy only by the quantization that was already there: each weight is exactly what the quantized
release computes with (then rounded to bfloat16), and the gauge itself loses nothing.

Schemes, and what happens to them:

* ``fp8`` with block scales (DeepSeek-V3, Qwen3-FP8): ``weight`` (F8_E4M3) and ``weight_scale_inv``;
  dequantized as ``W = w * s[block]``.
* ``gptq`` (2 / 4 / 8 bit): ``qweight``, ``qzeros``, ``scales``, ``g_idx``; dequantized as
  ``W = s[g] (q - z[g])`` with the v1 zero offset (``checkpoint_format="gptq_v2"``: none).
* ``mxfp4`` (gpt-oss: ``*_blocks``, ``*_scales``), ``awq`` (packing order differs from GPTQ),
  bitsandbytes (``SCB``, ``absmax``), compressed-tensors (``weight_scale``, ``weight_packed``) and any
  other ``quant_method``: refused by name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from gaugeport.core.errors import CheckpointError
from gaugeport.core.fileio import dtype_from_name

DEQUANTIZABLE = ("fp8", "gptq")
# tensor-name suffixes that betray a scheme when the config does not say
_SUFFIX_SCHEME = (
    (".weight_scale_inv", "fp8"),
    ("_blocks", "mxfp4"),
    ("_scales", "mxfp4"),
    (".qweight", "gptq/awq"),
    (".qzeros", "gptq/awq"),
    (".g_idx", "gptq"),
    (".SCB", "bitsandbytes"),
    (".absmax", "bitsandbytes"),
    (".quant_map", "bitsandbytes"),
    (".weight_scale", "compressed-tensors"),
    (".weight_packed", "compressed-tensors"),
)
_GPTQ_PARTS = ("qweight", "qzeros", "scales", "g_idx")


@dataclass(frozen=True)
class Quantization:
    scheme: str  # fp8, gptq, awq, mxfp4, bitsandbytes, compressed-tensors, ...
    evidence: str  # what gave it away
    config: Mapping[str, Any]  # the quantization_config (empty when only tensor names told)

    @property
    def dequantizable(self) -> bool:
        return self.scheme in DEQUANTIZABLE


def detect_quantization(config: Mapping[str, Any], names: list[str] | tuple[str, ...]) -> Quantization | None:
    """The quantization scheme of a checkpoint, from its config or its tensor names; None if plain."""
    qc = config.get("quantization_config")
    if isinstance(qc, Mapping) and qc:
        method = str(qc.get("quant_method", "unknown")).lower()
        return Quantization(method, f"config.json quantization_config.quant_method={method!r}", dict(qc))
    for suffix, scheme in _SUFFIX_SCHEME:
        hit = next((n for n in names if n.endswith(suffix)), None)
        if hit is not None:
            return Quantization(scheme, f"tensor {hit!r}", {})
    return None


SCHEME_NAMES = {"fp8": "FP8 with block scales", "gptq": "GPTQ", "awq": "AWQ", "mxfp4": "MXFP4",
                "bitsandbytes": "bitsandbytes", "compressed-tensors": "compressed-tensors"}


def refuse_quantized(q: Quantization, path: Path) -> CheckpointError:
    """The error for any verb but ``apply --dequantize`` given a quantized checkpoint: it names the scheme."""
    name = SCHEME_NAMES.get(q.scheme, q.scheme)
    if q.dequantizable:
        hint = (f"gaugeport reads plain weights; `gaugeport apply {path} --dequantize bf16 --random-seed 0 "
                "--save-gauge G.safetensors --out DIR` writes a plain bfloat16 copy (in a new gauge, lossy only "
                "by the quantization already there) that every verb reads")
    else:
        hint = (f"gaugeport cannot dequantize {name} yet (it dequantizes: {', '.join(DEQUANTIZABLE)}); "
                "dequantize with the tool that made it (e.g. load in transformers and save_pretrained in bf16), "
                "then use the plain checkpoint")
    return CheckpointError(f"{path} is a quantized checkpoint ({name}; {q.evidence}); its weights are packed "
                           "blocks, not plain tensors", hint=hint)


# ----------------------------------------------------------------------------------- config values, checked
_BAD_QUANT_HINT = "config.json's quantization_config is damaged or hand-edited; restore it from the release"


def _config_int(q: Quantization, key: str, default: int, allowed: str, ok: Any) -> int:
    value = q.config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not ok(value):
        raise CheckpointError(f"quantization_config.{key} = {value!r} is not valid for {q.scheme} ({allowed})",
                              hint=_BAD_QUANT_HINT)
    return value


def fp8_block(q: Quantization) -> tuple[int, int]:
    """``weight_block_size``: two positive integers (default 128 x 128)."""
    value = q.config.get("weight_block_size") or (128, 128)
    if (not isinstance(value, list | tuple) or len(value) != 2
            or any(isinstance(b, bool) or not isinstance(b, int) or not 0 < b <= 1 << 20 for b in value)):
        raise CheckpointError(f"quantization_config.weight_block_size = {value!r} is not two positive integers "
                              "(rows and columns of a scale block, e.g. [128, 128])", hint=_BAD_QUANT_HINT)
    return int(value[0]), int(value[1])


def gptq_params(q: Quantization) -> tuple[int, int, int]:
    """``(bits, group_size, zero_offset)``: bits 2, 4 or 8; group_size -1 (one group) or positive."""
    bits = _config_int(q, "bits", 4, "2, 4 or 8", lambda b: b in (2, 4, 8))
    group = _config_int(q, "group_size", 128, "-1 or a positive integer", lambda g: g == -1 or 0 < g <= 1 << 24)
    fmt = q.config.get("checkpoint_format", "gptq")
    if fmt not in ("gptq", "gptq_v2"):
        raise CheckpointError(f"quantization_config.checkpoint_format = {fmt!r} is not 'gptq' or 'gptq_v2'",
                              hint=_BAD_QUANT_HINT)
    return bits, group, 0 if fmt == "gptq_v2" else 1


# ----------------------------------------------------------------------------------- the schemes
def dequantize_fp8_block(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """``W[i, j] = w[i, j] * scale_inv[i // bi, j // bj]`` in float32 (DeepSeek-V3's ``weight_block_size``)."""
    if weight.ndim != 2 or scale_inv.ndim != 2:
        raise CheckpointError(f"fp8 weight and scale must be 2-D, got {tuple(weight.shape)} "
                              f"and {tuple(scale_inv.shape)}")
    bi, bj = block
    rows, cols = weight.shape
    want = (math.ceil(rows / bi), math.ceil(cols / bj))
    if tuple(scale_inv.shape) != want:
        raise CheckpointError(f"fp8 scale has shape {tuple(scale_inv.shape)}; a {rows}x{cols} weight in "
                              f"{bi}x{bj} blocks needs {want}")
    s = scale_inv.float().repeat_interleave(bi, 0)[:rows].repeat_interleave(bj, 1)[:, :cols]
    return weight.float() * s


def _unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 ``[n, m]`` holding ``32 // bits`` values each along axis 0 -> ``[n * 32 // bits, m]`` (low bits first)."""
    per = 32 // bits
    shifts = torch.arange(per, dtype=torch.int64) * bits
    vals = (packed.to(torch.int64).unsqueeze(1) >> shifts.view(1, per, 1)) & ((1 << bits) - 1)
    return vals.reshape(packed.shape[0] * per, packed.shape[1])


def dequantize_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor | None,
                    bits: int, group_size: int, zero_offset: int = 1) -> torch.Tensor:
    """GPTQ (AutoGPTQ / transformers ``checkpoint_format="gptq"``) to a float32 ``[out, in]`` weight.

    ``qweight`` int32 ``[in * bits / 32, out]`` packs input rows; ``qzeros`` int32 ``[groups, out * bits / 32]``
    packs output columns and stores ``zero - 1`` (``zero_offset=1``; 0 for ``gptq_v2``); ``scales``
    ``[groups, out]``; ``g_idx`` ``[in]`` the group of each input row (default ``i // group_size``).
    """
    if bits not in (2, 4, 8):
        raise CheckpointError(f"GPTQ with {bits} bits is not supported (2, 4 or 8 bits pack evenly into int32)")
    if qweight.dtype != torch.int32 or qzeros.dtype != torch.int32:
        raise CheckpointError("GPTQ qweight and qzeros must be int32")
    q = _unpack_rows(qweight, bits)  # [in, out]
    n_in, n_out = q.shape
    z = _unpack_rows(qzeros.T.contiguous(), bits).T + zero_offset  # [groups, out]
    if z.shape != scales.shape or scales.shape[1] != n_out:
        raise CheckpointError(f"GPTQ shapes disagree: qweight {tuple(qweight.shape)}, qzeros {tuple(qzeros.shape)}, "
                              f"scales {tuple(scales.shape)}")
    g = (torch.arange(n_in) // group_size) if g_idx is None else g_idx.to(torch.int64)
    if g.shape != (n_in,) or int(g.min()) < 0 or int(g.max()) >= scales.shape[0]:
        raise CheckpointError(f"GPTQ g_idx does not index the {scales.shape[0]} groups of {n_in} input rows")
    w = scales.float()[g] * (q - z[g]).float()  # [in, out]
    return w.T.contiguous()


# ----------------------------------------------------------------------------------- the checkpoint
@dataclass(frozen=True)
class _Plan:
    """One output tensor and the stored tensors it is computed from."""

    name: str
    sources: tuple[str, ...]
    kind: str  # "plain", "fp8", "gptq"


def plan_dequantized(q: Quantization, names: list[str]) -> list[_Plan]:
    """Which output tensors a dequantized checkpoint holds, each from which stored tensors."""
    have = set(names)
    plans: list[_Plan] = []
    if q.scheme == "fp8":  # the config's numbers are checked before any work sized by them
        fp8_block(q)
    elif q.scheme == "gptq":
        gptq_params(q)
    used: set[str] = set()
    if q.scheme == "fp8":
        for n in names:
            if n.endswith(".weight_scale_inv"):
                w = n[: -len("_scale_inv")]
                if w not in have:
                    raise CheckpointError(f"{n} has no weight {w} to scale")
                plans.append(_Plan(w, (w, n), "fp8"))
                used |= {w, n}
    elif q.scheme == "gptq":
        for n in names:
            if n.endswith(".qweight"):
                base = n[: -len(".qweight")]
                parts = [f"{base}.{p}" for p in _GPTQ_PARTS if f"{base}.{p}" in have]
                if f"{base}.qzeros" not in have or f"{base}.scales" not in have:
                    raise CheckpointError(f"{base}: GPTQ needs qweight, qzeros and scales")
                plans.append(_Plan(f"{base}.weight", tuple(parts), "gptq"))
                used |= set(parts)
    else:
        raise CheckpointError(f"cannot dequantize {q.scheme}")
    plans += [_Plan(n, (n,), "plain") for n in names if n not in used]
    return sorted(plans, key=lambda p: p.name)


def _tensor_of(ckpt: Any, q: Quantization, p: _Plan, dtype: torch.dtype) -> torch.Tensor:
    if p.kind == "fp8":
        t = dequantize_fp8_block(ckpt.tensor(p.sources[0]), ckpt.tensor(p.sources[1]), fp8_block(q))
    elif p.kind == "gptq":
        bits, group, offset = gptq_params(q)
        parts = {s.rsplit(".", 1)[1]: ckpt.tensor(s) for s in p.sources}
        n_in = parts["qweight"].shape[0] * 32 // bits
        t = dequantize_gptq(parts["qweight"], parts["qzeros"], parts["scales"], parts.get("g_idx"), bits,
                            group if group > 0 else n_in, offset)  # group_size -1: one group
    else:
        t = ckpt.tensor(p.name)
    if not t.is_floating_point():
        return t
    out = t.to(dtype)
    if p.kind != "plain" and not bool(torch.isfinite(out).all()):
        worst = float(t.abs().max())
        raise CheckpointError(
            f"dequantizing {p.name} gives values beyond {str(dtype).removeprefix('torch.')} (largest |w| "
            f"{worst:.3g}): its scales ({', '.join(p.sources[1:])}) are out of range",
            hint="the quantized release is damaged (a scale is far too large, NaN or infinite); nothing was "
            "written. Re-download it")
    return out


def _out_layout(ckpt: Any, q: Quantization, p: _Plan, header: Mapping[str, tuple[str, tuple[int, ...]]],
                dtype: torch.dtype) -> tuple[torch.dtype, tuple[int, ...]]:
    """Dtype and shape of an output tensor, from the source headers (no tensor data read)."""
    if p.kind == "fp8":
        return dtype, header[p.sources[0]][1]
    if p.kind == "gptq":
        bits = gptq_params(q)[0]
        qw, sc = header[p.sources[0]][1], header[f"{p.name[: -len('.weight')]}.scales"][1]
        return dtype, (sc[1], qw[0] * 32 // bits)
    src_dtype = dtype_from_name(header[p.name][0])
    return (dtype if src_dtype.is_floating_point else src_dtype), header[p.name][1]


def _headers(ckpt: Any) -> dict[str, tuple[str, tuple[int, ...]]]:
    from safetensors import safe_open

    out = {}
    for shard in ckpt.shards:
        with safe_open(str(ckpt.path / shard), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118
                sl = f.get_slice(name)
                out[name] = (sl.get_dtype(), tuple(sl.get_shape()))
    return out


def write_dequantized(ckpt: Any, q: Quantization, dest: Path, transform: Any, dtype: torch.dtype,
                      stamp: Mapping[str, str], progress: bool = True) -> list[str]:
    """Stream a dequantized, transformed copy of ``ckpt`` into the new directory ``dest``.

    Each output tensor goes to the shard of its first source; one tensor in memory at a time; the index
    (if any) is rewritten for the new names; ``quantization_config`` leaves ``config.json``.
    Returns the output tensor names.
    """
    import json

    from gaugeport.core.fileio import INDEX_FILE, SafetensorsStreamWriter, atomic_write_json

    plans = plan_dequantized(q, ckpt.names)
    header = _headers(ckpt)
    by_shard: dict[str, list[_Plan]] = {}
    for p in plans:
        by_shard.setdefault(ckpt.shard_of[p.sources[0]], []).append(p)
    dest.mkdir()
    with tqdm(total=len(plans), desc="dequantize+apply", unit="tensor", disable=not progress) as bar:
        for shard, group in sorted(by_shard.items()):
            layout = {p.name: _out_layout(ckpt, q, p, header, dtype) for p in group}
            with SafetensorsStreamWriter(dest / shard, layout, {"format": "pt", **stamp}) as writer:
                for p in sorted(group, key=lambda p: p.name):
                    writer.write(p.name, transform(p.name, _tensor_of(ckpt, q, p, dtype)))
                    bar.update()
    config = {k: v for k, v in ckpt.config.items() if k != "quantization_config"}
    config["torch_dtype"] = config["dtype"] = str(dtype).removeprefix("torch.")
    for side in ckpt.side_files():
        if side.name != "config.json":
            (dest / side.name).write_bytes(side.read_bytes())
    atomic_write_json(dest / "config.json", json.loads(json.dumps(config)))
    if ckpt.index is not None:
        weight_map = {p.name: ckpt.shard_of[p.sources[0]] for p in plans}
        atomic_write_json(dest / INDEX_FILE, {"metadata": dict(ckpt.index.get("metadata", {})),
                                              "weight_map": weight_map})
    return [p.name for p in plans]
