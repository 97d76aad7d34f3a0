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
