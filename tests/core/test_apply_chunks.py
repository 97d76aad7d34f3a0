"""``apply``'s chunked data path: rows read in output order, columns gathered and sign bits flipped per
chunk, on reused buffers, with helper threads reading and writing.

The reference is the definition (index, then multiply by the signs in the tensor's own dtype), not
the code under test; chunks are made tiny so every tensor spans many of them.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gaugeport.core import apply as apply_mod
from gaugeport.core.apply import apply_gauge_to_checkpoint, gather_rows_cols, plan_rows_cols, transform_tensor
from gaugeport.core.archspec import get_spec
from gaugeport.core.checkpoint import Checkpoint
from gaugeport.core.errors import CheckpointError
from gaugeport.core.fileio import SafetensorsStreamWriter
from gaugeport.core.gauge import SignedPermutation
from gaugeport.models.synthetic import LlamaShape, write_synthetic_llama

FLOATS = [torch.bfloat16, torch.float16, torch.float32, torch.float64]
INTS = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32,
        torch.float64: torch.int64}
SIGN_BITS = {torch.bfloat16: -0x8000, torch.float16: -0x8000, torch.float32: -0x80000000,
             torch.float64: -0x8000000000000000}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(INTS[t.dtype])


def _reference(x: torch.Tensor, rule, g: SignedPermutation) -> torch.Tensor:
    """The gauge by its definition: ``out[j] = signs[inv[j]] * x[inv[j]]`` along each residual axis, the
    product taken in ``x``'s own dtype (exact: a multiplication by +-1)."""
    inv = g.inverse().perm
    out = x
    for i, (axis, mode) in enumerate(zip(rule.axes, rule.modes, strict=True)):
        k = rule.blocks_on(i)
        idx = torch.from_numpy((np.arange(k)[:, None] * g.d + inv[None, :]).reshape(-1))
        out = out.index_select(axis, idx)
        if mode == "signed":
            shape = [1] * out.ndim
            shape[axis] = k * g.d
            out = out * torch.from_numpy(np.tile(g.signs[inv], k).astype(np.float64)).to(x.dtype).reshape(shape)
    return out


def _chunked(x: torch.Tensor, rule, g: SignedPermutation, rows_per_chunk: int) -> torch.Tensor:
    """The plan run chunk by chunk, as the streaming writer runs it (rows fetched in output order)."""
    plan = plan_rows_cols(tuple(x.shape), x.dtype, rule, g)
    assert plan is not None
    src = x.contiguous().view(INTS[x.dtype]).numpy().reshape(plan.shape)
    parts = []
    for r0 in range(0, plan.shape[0], rows_per_chunk):
        r1 = min(r0 + rows_per_chunk, plan.shape[0])
        rows = src[r0:r1] if plan.rows is None else src[plan.rows[r0:r1]]
        rows = rows.copy()
        parts.append(gather_rows_cols(plan, rows, np.empty_like(rows), r0).copy())
    return torch.from_numpy(np.concatenate(parts)).view(x.dtype).reshape(x.shape)


SPECIALS = [0.0, -0.0, 1.0, -1.0, 2.0 ** -20, -(2.0 ** -20), 1e-30, 3.5, -65000.0]  # zeros, tiny, subnormal-ish


def _values(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 4
    flat = x.reshape(-1)
    flat[:len(SPECIALS)] = torch.tensor(SPECIALS[:flat.numel()], dtype=torch.float64)[:flat.numel()]
    return x.to(dtype)


@pytest.mark.parametrize("dtype", FLOATS)
def test_the_sign_bit_xor_is_multiplication_by_minus_one(dtype: torch.dtype) -> None:
    """Flipping the IEEE sign bit gives bit for bit ``x * -1``, -0.0 and subnormals included (NaN payloads
    aside: NaN never reaches a rewrite, the finiteness check refuses it first)."""
    x = _values(dtype, (64,), 0)
    x[-1] = float("inf")
    flipped = (_bits(x) ^ SIGN_BITS[dtype]).view(dtype)
    assert torch.equal(_bits(flipped), _bits(x * -1))
    assert torch.equal(torch.signbit(flipped[:2]), torch.tensor([True, False]))  # 0.0 -> -0.0, -0.0 -> 0.0


LLAMA = get_spec("llama")
RULES = {
    "read (cols)": (LLAMA.classify("model.layers.0.self_attn.q_proj.weight"), (24, 8)),
    "write (rows)": (LLAMA.classify("model.layers.0.self_attn.o_proj.weight"), (8, 24)),
    "gain (1-D, abs)": (LLAMA.classify("model.norm.weight"), (8,)),
    "token embedding": (LLAMA.classify("model.embed_tokens.weight"), (40, 8)),
}
BOTH = dataclasses.replace(RULES["read (cols)"][0], axes=(0, 1))  # residual on both axes: rows and columns
BLOCKS = dataclasses.replace(RULES["read (cols)"][0], blocks=(3,))  # three residual vectors along the columns


@settings(max_examples=60, deadline=None)
@given(case=st.sampled_from([*RULES, "both", "blocks"]), dtype=st.sampled_from(FLOATS),
       seed=st.integers(0, 2**16), per=st.integers(1, 9))
def test_chunked_gather_equals_the_definition(case: str, dtype: torch.dtype, seed: int, per: int) -> None:
    g = SignedPermutation.random(8, seed=seed)
    rule, shape = {"both": (BOTH, (8, 8)), "blocks": (BLOCKS, (5, 24))}.get(case) or RULES[case]
    x = _values(dtype, shape, seed)
    before = x.clone()
    got = _chunked(x, rule, g, per)
    assert torch.equal(_bits(got), _bits(_reference(x, rule, g)))
    assert torch.equal(_bits(got), _bits(transform_tensor("t", x, rule, g)))
    assert torch.equal(_bits(x), _bits(before))


def test_tensors_the_plan_does_not_describe_go_the_whole_tensor_way() -> None:
    g = SignedPermutation.random(8, seed=1)
    rule = RULES["read (cols)"][0]
    assert plan_rows_cols((2, 3, 8), torch.float32, rule, g) is None  # 3-D
    assert plan_rows_cols((3, 8), torch.int32, rule, g) is None  # an integer tensor under a signed mode
    assert plan_rows_cols((3, 9), torch.float32, rule, g) is None  # wrong width: transform_tensor raises


# ---------------------------------------------------------------------- the whole streaming writer
SHAPE = LlamaShape(64, 176, 2, 4, 2, 6000, shard_mb=1)  # embedding and head 0.77 MB each: 2 shards


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("chunks") / "src"
    write_synthetic_llama(path, SHAPE, torch.bfloat16, seed=2)
    return path


@pytest.fixture
def tiny_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 3 rows of 64 bf16 (and sub-blocks of one row): every tensor spans many chunks."""
    monkeypatch.setattr(apply_mod, "CHUNK_BYTES", 3 * 64 * 2)
    monkeypatch.setattr(apply_mod, "_SUB_BYTES", 1)


def test_streamed_apply_writes_the_bytes_of_the_whole_tensor_transform(src, tmp_path, tiny_chunks) -> None:
    g = SignedPermutation.random(SHAPE.d_model, seed=7)
    apply_gauge_to_checkpoint(src, g, tmp_path / "out", progress=False)
    a, b = Checkpoint.open(src), Checkpoint.open(tmp_path / "out")
    assert len(a.shards) > 1 and b.shards == a.shards
    rules = a.spec.classify_all(a.names)
    for name in a.names:
        want = transform_tensor(name, a.tensor(name), rules[name], g)
        assert torch.equal(_bits(b.tensor(name)), _bits(want)), name
    for shard in a.shards:
        assert b.shard_metadata(shard)["gaugeport_gauge"] == g.fingerprint()


@pytest.mark.parametrize("sub_bytes", [1, 1 << 20])  # one row per cache block; all of a chunk's rows in one
@pytest.mark.parametrize(("name", "where"), [("model.layers.1.self_attn.o_proj.weight", (-1, -1)),
                                             ("model.layers.0.mlp.down_proj.weight", (37, 5)),
                                             ("model.embed_tokens.weight", (4001, 3))])
def test_a_non_finite_value_in_a_later_chunk_is_refused_and_nothing_is_written(
        src, tmp_path, tiny_chunks, monkeypatch: pytest.MonkeyPatch, sub_bytes, name, where) -> None:
    """The bit check runs per chunk: an inf anywhere (here in rows gathered or not, not the first row of
    their block) is found and reported by the exact check, with the tensor's name."""
    import shutil

    from gaugeport.core.fileio import read_safetensors

    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    monkeypatch.setattr(apply_mod, "_SUB_BYTES", sub_bytes)
    shard = bad / Checkpoint.open(bad).shard_of[name]
    tensors, meta = read_safetensors(shard)
    tensors[name][where] = float("inf")
    from safetensors.torch import save_file

    save_file(tensors, str(shard), metadata=meta)
    with pytest.raises(CheckpointError, match=f"{name}.*infinite"):
        apply_gauge_to_checkpoint(bad, SignedPermutation.random(SHAPE.d_model, seed=7), tmp_path / "out",
                                  progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / ".gaugeport-tmp").exists()


def test_a_failing_write_on_the_helper_thread_is_a_clear_error_and_leaves_no_output(
        src, tmp_path, tiny_chunks, disk_fills_at) -> None:
    disk_fills_at(SafetensorsStreamWriter, "write_part", 5)
    with pytest.raises(CheckpointError, match="no space left"):
        apply_gauge_to_checkpoint(src, SignedPermutation.random(SHAPE.d_model, seed=7), tmp_path / "out",
                                  progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / ".gaugeport-tmp").exists()


def test_write_part_writes_the_same_file_as_write(tmp_path) -> None:
    t = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    layout = {"a": (torch.float32, (4, 6)), "b": (torch.float32, (0,))}
    with SafetensorsStreamWriter(tmp_path / "whole.safetensors", layout) as w:
        w.write("a", t)
        w.write("b", torch.empty(0))
    raw = t.numpy().tobytes()
    with SafetensorsStreamWriter(tmp_path / "parts.safetensors", layout) as w:
        for i in range(0, len(raw), 40):
            w.write_part("a", raw[i:i + 40])
        w.write_part("b", b"")
    assert (tmp_path / "whole.safetensors").read_bytes() == (tmp_path / "parts.safetensors").read_bytes()


def test_a_written_file_s_data_start_on_a_block_boundary_and_it_loads(tmp_path) -> None:
    """The header is padded with spaces so that the tensors' bytes start at a multiple of 4096 (aligned parts
    are then written with no staging copy); safetensors and gaugeport read the file as usual."""
    import struct

    from safetensors.torch import load_file

    from gaugeport.core.directio import BLOCK

    tensors = {"w": torch.randn(8, 512).to(torch.bfloat16), "n": torch.randn(3)}
    layout = {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()}
    with SafetensorsStreamWriter(tmp_path / "x.safetensors", layout, {"format": "pt"}) as w:
        for name in sorted(tensors):
            w.write(name, tensors[name])
    raw = (tmp_path / "x.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % BLOCK == 0 and raw[8:8 + n].rstrip(b" ").endswith(b"}")
    loaded = load_file(tmp_path / "x.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_write_part_refuses_bytes_beyond_the_tensor_and_a_short_tensor(tmp_path) -> None:
    layout = {"a": (torch.float16, (3,)), "b": (torch.float16, (1,))}
    w = SafetensorsStreamWriter(tmp_path / "x.safetensors", layout)
    with pytest.raises(CheckpointError, match="internal error"):
        w.write_part("a", b"\0" * 8)
    w.write_part("a", b"\0" * 4)
    with pytest.raises(CheckpointError, match="internal error"):
        w.write("b", torch.zeros(1, dtype=torch.float16))  # "a" is not complete yet
    with pytest.raises(CheckpointError, match="closed after 0/2"):
        w.close()

