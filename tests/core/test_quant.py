"""Quantized releases: refused by scheme name, or dequantized (FP8 block scales, GPTQ) into bf16 in the new gauge.

The synthetic quantized checkpoints are tiny Llamas whose linear weights are replaced by their quantized
form. The reference weights are computed here from the *unpacked* integers / fp8 values with plain
indexing, independently of the packing code; the output must equal the gauge applied to the reference
rounded to bf16, exactly (a signed permutation of bf16 values is exact).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gaugeport.core.apply import transform_tensor
from gaugeport.core.archspec import get_spec
from gaugeport.core.errors import CheckpointError
from gaugeport.core.gauge import SignedPermutation, save_gauge
from gaugeport.core.quant import dequantize_gptq, detect_quantization
from gaugeport.core.verify import verify_checkpoints
from gaugeport.models.tiny import save_tiny

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BLOCK = 16
FP8_BLOCK = (16, 8)  # rows x columns: non-square, so swapped block axes cannot pass


def _is_linear(name: str) -> bool:
    return name.endswith(".weight") and any(f".{p}." in name for p in LINEAR)


def _write(dest: Path, src: Path, tensors: dict[str, torch.Tensor], quant: dict | None) -> Path:
    dest.mkdir()
    save_file({k: v.contiguous() for k, v in tensors.items()}, dest / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    if quant is not None:
        cfg["quantization_config"] = quant
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def fp8_checkpoint(tmp: Path) -> tuple[Path, Path]:
    """(quantized, reference): FP8 e4m3 weights with one float32 scale per 16 x 8 block (rows x columns)."""
    src = save_tiny("llama", tmp / "src", seed=3)
    sd = load_file(src / "model.safetensors")
    quant, ref = {}, {}
    for name, w in sd.items():
        if not _is_linear(name):
            quant[name], ref[name] = w, w.to(torch.bfloat16).float()
            continue
        rows, cols = w.shape
        bi, bj = FP8_BLOCK
        scale = torch.empty(rows // bi, cols // bj)
        q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
        deq = torch.empty(rows, cols)
        for i in range(rows // bi):
            for j in range(cols // bj):
                blk = w[i * bi:(i + 1) * bi, j * bj:(j + 1) * bj]
                scale[i, j] = blk.abs().max() / 448.0
                q8 = (blk / scale[i, j]).to(torch.float8_e4m3fn)
                q[i * bi:(i + 1) * bi, j * bj:(j + 1) * bj] = q8
                deq[i * bi:(i + 1) * bi, j * bj:(j + 1) * bj] = q8.float() * scale[i, j]
        quant[name], quant[name + "_scale_inv"] = q, scale
        ref[name] = deq.to(torch.bfloat16).float()
    cfg = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": list(FP8_BLOCK)}
    return _write(tmp / "fp8", src, quant, cfg), _write(tmp / "ref", src, ref, None)


def _pack_rows(vals: torch.Tensor, bits: int) -> torch.Tensor:
    """int values [n, m] -> int32 [n * bits / 32, m], low bits first (two's complement wrap)."""
    per = 32 // bits
    v = vals.to(torch.int64).reshape(vals.shape[0] // per, per, vals.shape[1])
    packed = sum(v[:, j] << (bits * j) for j in range(per))
    return ((packed + 2**31) % 2**32 - 2**31).to(torch.int32)


def gptq_tensors(w: torch.Tensor, group: int, g_idx: torch.Tensor, bits: int = 4):
    """Quantize ``w`` [out, in] GPTQ-style; returns (qweight, qzeros, scales, reference weight)."""
    n_out, n_in = w.shape
    n_groups = n_in // group
    top = 2**bits - 1
    scales, zeros = torch.empty(n_groups, n_out), torch.empty(n_groups, n_out, dtype=torch.int64)
    for gi in range(n_groups):
        cols = w[:, g_idx == gi]
        lo, hi = cols.min(1).values.clamp(max=0), cols.max(1).values.clamp(min=0)
        scales[gi] = ((hi - lo) / top).clamp(min=1e-6)
        zeros[gi] = torch.round(-lo / scales[gi]).clamp(1, top)
    scales = scales.half().float()
    q = torch.round(w.T / scales[g_idx] + zeros[g_idx]).clamp(0, top).to(torch.int64)  # [in, out]
    ref = torch.empty(n_out, n_in)
    for i in range(n_in):  # the reference, from the integers, by plain indexing
        ref[:, i] = scales[g_idx[i]] * (q[i] - zeros[g_idx[i]]).float()
    qzeros = _pack_rows((zeros - 1).T.contiguous(), bits).T.contiguous()  # v1 stores zero - 1
    return _pack_rows(q, bits), qzeros, scales.half(), ref


@pytest.mark.parametrize("desc_act", [False, True])
def test_gptq_dequantization_matches_the_integers(desc_act):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(24, 64, generator=g)
    g_idx = torch.arange(64) // 16
    if desc_act:  # act-order: input rows visit the groups in a permuted order
        g_idx = g_idx[torch.randperm(64, generator=g)]
    qweight, qzeros, scales, ref = gptq_tensors(w, 16, g_idx)
    out = dequantize_gptq(qweight, qzeros, scales, g_idx.to(torch.int32), 4, 16)
    assert torch.equal(out, ref)
    assert (out - w).abs().max() < scales.float().max()  # and it is a quantization of w


def gptq_checkpoint(tmp: Path) -> tuple[Path, Path]:
    src = save_tiny("llama", tmp / "src", seed=4)
    sd = load_file(src / "model.safetensors")
    quant, ref = {}, {}
    for name, w in sd.items():
        if not _is_linear(name):
            quant[name], ref[name] = w, w.to(torch.bfloat16).float()
            continue
        base = name[: -len(".weight")]
        g_idx = torch.arange(w.shape[1]) // BLOCK
        quant[f"{base}.qweight"], quant[f"{base}.qzeros"], quant[f"{base}.scales"], r = gptq_tensors(w, BLOCK, g_idx)
        quant[f"{base}.g_idx"] = g_idx.to(torch.int32)
        ref[name] = r.to(torch.bfloat16).float()
    cfg = {"quant_method": "gptq", "bits": 4, "group_size": BLOCK, "desc_act": False, "sym": False,
           "checkpoint_format": "gptq"}
    return _write(tmp / "gptq", src, quant, cfg), _write(tmp / "ref", src, ref, None)


@pytest.mark.parametrize(("build", "scheme"), [(fp8_checkpoint, "fp8"), (gptq_checkpoint, "gptq")])
def test_dequantize_bf16_in_the_new_gauge(build, scheme, tmp_path, cli):
    quantized, ref = build(tmp_path)
    gauge = SignedPermutation.random(32, seed=7)
    save_gauge(gauge, tmp_path / "g.safetensors")

    code, _, err = cli("apply", quantized, "--gauge", tmp_path / "g.safetensors", "--out", tmp_path / "refused")
    assert code == 2 and scheme in err and "--dequantize bf16" in err and not (tmp_path / "refused").exists()

    code, _, err = cli("apply", quantized, "--gauge", tmp_path / "g.safetensors", "--dequantize", "bf16",
                       "--quiet", "--out", tmp_path / "out")
    assert code == 0, err
    out = load_file(tmp_path / "out" / "model.safetensors")
    spec = get_spec("llama")
    expected = {n: transform_tensor(n, t.to(torch.bfloat16), spec.classify(n), gauge)
                for n, t in load_file(ref / "model.safetensors").items()}
    assert set(out) == set(expected)
    for n, t in out.items():
        assert t.dtype == torch.bfloat16 and torch.equal(t, expected[n]), n
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["dtype"] == "bfloat16"
    res = verify_checkpoints(ref, tmp_path / "out", gauge)  # the function of the dequantized release, gauged
    assert res.ok and res.output == "logits", res


@pytest.mark.parametrize(("config", "names", "scheme"), [
    ({"quantization_config": {"quant_method": "mxfp4"}}, ["model.layers.0.mlp.experts.gate_up_proj_blocks"], "mxfp4"),
    ({}, ["model.layers.0.mlp.experts.down_proj_blocks", "model.layers.0.mlp.experts.down_proj_scales"], "mxfp4"),
    ({"quantization_config": {"quant_method": "awq", "bits": 4}}, ["model.layers.0.mlp.up_proj.qweight"], "awq"),
    ({}, ["model.layers.0.self_attn.q_proj.weight_scale_inv"], "fp8"),
    ({"quantization_config": {"quant_method": "bitsandbytes"}}, ["x.weight"], "bitsandbytes"),
])
def test_quantization_is_detected_from_config_or_tensor_names(config, names, scheme):
    q = detect_quantization(config, names)
    assert q is not None and q.scheme == scheme


def test_schemes_without_a_dequantizer_are_refused_by_name(tiny_dir, tmp_path, cli):
    src = tiny_dir("llama")
    sd = load_file(src / "model.safetensors")
    sd["model.layers.0.mlp.experts.gate_up_proj_blocks"] = torch.zeros(2, 4, dtype=torch.uint8)
    quantized = _write(tmp_path / "mx", src, sd, {"quant_method": "mxfp4"})
    for extra in ([], ["--dequantize", "bf16"]):
        code, _, err = cli("apply", quantized, "--random-seed", "1", *extra, "--out", tmp_path / "out")
        assert code == 2 and "mxfp4" in err and "cannot dequantize" in err
    with pytest.raises(CheckpointError, match="mxfp4"):
        verify_checkpoints(quantized, quantized)


def test_fp8_block_scales_index_rows_by_the_first_block_size_and_columns_by_the_second():
    from gaugeport.core.quant import dequantize_fp8_block

    w = torch.ones(5, 7).to(torch.float8_e4m3fn)  # ragged: the last blocks are partial
    scale = torch.arange(1.0, 7.0).reshape(3, 2)  # ceil(5 / 2) x ceil(7 / 4)
    out = dequantize_fp8_block(w, scale, (2, 4))
    expected = torch.tensor([[float(scale[i // 2, j // 4]) for j in range(7)] for i in range(5)])
    assert torch.equal(out, expected)
