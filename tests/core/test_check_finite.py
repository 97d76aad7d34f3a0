"""The streamed finiteness check: every NaN / inf is caught, finite tensors pass, whatever the dtype."""

from __future__ import annotations

import pytest
import torch

from gaugeport.core.checkpoint import _FINITE_CHUNK, check_finite
from gaugeport.core.errors import CheckpointError

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [0, _FINITE_CHUNK - 1, _FINITE_CHUNK + 5])
def test_a_single_bad_entry_anywhere_is_refused_by_name(dtype, bad, where) -> None:
    t = torch.randn(_FINITE_CHUNK + 17, dtype=torch.float32).to(dtype)
    t[where] = bad
    with pytest.raises(CheckpointError, match="'w'.*(NaN|infinite)"):
        check_finite("w", t)


def test_plus_and_minus_infinity_together_are_refused() -> None:
    t = torch.zeros(8)
    t[1], t[5] = float("inf"), float("-inf")
    with pytest.raises(CheckpointError, match="infinite"):
        check_finite("w", t)


def test_finite_float64_entries_whose_sum_overflows_still_pass() -> None:
    t = torch.full((16,), torch.finfo(torch.float64).max, dtype=torch.float64)
    assert check_finite("w", t) is t


@pytest.mark.parametrize("dtype", DTYPES)
def test_finite_tensors_pass_unchanged(dtype) -> None:
    t = (torch.randn(3, 1000) * 1e3).to(dtype)
    assert check_finite("w", t) is t


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_nan_with_its_sign_bit_set_is_refused(dtype) -> None:
    t = torch.zeros(64, dtype=dtype)
    t[9] = float("nan")
    bits = t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    bits[9] |= torch.iinfo(bits.dtype).min  # the sign bit set: the check reads the bits without it
    assert torch.signbit(t[9]) and torch.isnan(t[9])
    with pytest.raises(CheckpointError, match="NaN"):
        check_finite("w", t)


def test_threads_checking_at_once_each_get_their_own_answer() -> None:
    """Each thread masks into its own scratch buffer: a thread checking a finite tensor is not told about
    another thread's NaN, nor the other way round."""
    from concurrent.futures import ThreadPoolExecutor

    def check(i: int) -> bool:
        t = torch.randn(3 * _FINITE_CHUNK + 11, dtype=torch.float32).to(torch.bfloat16)
        if i % 2:
            t[-1] = float("nan")
        try:
            check_finite(f"w{i}", t)
            return True
        except CheckpointError:
            return False

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(check, range(16))) == [i % 2 == 0 for i in range(16)]


def test_a_parameter_that_requires_grad_is_checked_like_any_tensor() -> None:
    p = torch.nn.Parameter(torch.randn(5, 7))
    assert check_finite("w", p) is p
    with torch.no_grad():
        p[2, 3] = float("nan")
    with pytest.raises(CheckpointError, match="NaN"):
        check_finite("w", p)
