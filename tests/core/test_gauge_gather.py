"""The CPU gather in ``SignedPermutation.apply`` (numpy ``take`` on the tensor's bits) is bit-identical
to torch's ``index_select`` path, for every dtype and axis, and leaves the input untouched."""

from __future__ import annotations

import pytest
import torch

from gaugeport.core.gauge import SignedPermutation


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64, torch.int64])
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_fast_gather_matches_index_select(dtype: torch.dtype, axis: int) -> None:
    g = SignedPermutation.random(8, seed=2)
    x = (torch.randn(8, 8, 8, generator=torch.Generator().manual_seed(0)) * 10).to(dtype)
    x[0, 0, 0] = 0  # a zero: its sign flips to -0.0 either way
    before = x.clone()
    slow = g.apply(x.clone().requires_grad_(dtype.is_floating_point), axis=axis)  # grad: the index_select path
    fast = g.apply(x, axis=axis)
    assert torch.equal(x, before)
    assert fast.dtype == dtype and torch.equal(fast, slow.detach())
    if dtype.is_floating_point:
        assert torch.equal(torch.signbit(fast), torch.signbit(slow.detach()))
    assert torch.equal(g.inverse().apply(fast, axis=axis), x)


def test_non_contiguous_input() -> None:
    g = SignedPermutation.random(6, seed=3)
    x = torch.randn(6, 10)[:, ::2]  # (6, 5) view, not contiguous
    assert torch.equal(g.apply(x.T, axis=1), g.apply(x.T.contiguous(), axis=1))


@pytest.mark.parametrize(("shape", "axis"),
                         [((1536, 700), 0), ((700, 1536), 1), ((3, 512, 700), 1), ((1536, 2, 300), 0)])
def test_blocked_gather_and_sign_flip_spanning_many_blocks(shape: tuple[int, ...], axis: int) -> None:
    """Tensors of several MB go through the gather-and-flip in many cache-sized blocks."""
    g = SignedPermutation.random(shape[axis], seed=4)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    inv = torch.from_numpy(g.inverse().perm.copy())
    signs = torch.from_numpy(g.signs[g.inverse().perm].copy()).to(torch.bfloat16)
    bshape = [1] * len(shape)
    bshape[axis] = shape[axis]
    expected = x.index_select(axis, inv) * signs.reshape(bshape)
    assert torch.equal(g.apply(x, axis=axis), expected)
    assert torch.equal(g.apply(x, axis=axis, mode="abs"), x.index_select(axis, inv))
