"""Plain positioned reads of a shard give exactly the tensors safetensors gives; a truncated shard is an error."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from gaugeport.core.checkpoint import Checkpoint, ShardReader, check_finite
from gaugeport.core.errors import CheckpointError


def _checkpoint(tmp_path, tensors):
    (tmp_path / "config.json").write_text('{"model_type": "llama", "hidden_size": 4, '
                                          '"vocab_size": 3}')
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    return Checkpoint.open(tmp_path)


def test_every_dtype_and_shape_reads_back_bit_for_bit(tmp_path):
    tensors = {"a": torch.randn(5, 7).to(torch.bfloat16), "b": torch.randn(3).half(), "c": torch.randn(2, 2, 2),
               "d": torch.randn(4, dtype=torch.float64), "e": torch.tensor(3.5), "f": torch.zeros(0, 4),
               "g": torch.arange(6, dtype=torch.int64).reshape(2, 3), "h": torch.tensor([True, False])}
    ckpt = _checkpoint(tmp_path, tensors)
    with ShardReader(ckpt, ckpt.shards[0]) as r:
        for name, t in load_file(tmp_path / "model.safetensors").items():
            got = r.read(name)
            assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t), name


def test_a_truncated_shard_is_refused(tmp_path):
    ckpt = _checkpoint(tmp_path, {"a": torch.randn(64, 64)})
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        ShardReader(ckpt, ckpt.shards[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_the_largest_finite_values_pass_the_bit_check(dtype):
    info = torch.finfo(dtype)
    t = torch.tensor([info.max, -info.max, info.tiny, -info.smallest_normal / 4, 0.0, -0.0], dtype=dtype)
    assert check_finite("w", t.repeat(100_000)) is not None
