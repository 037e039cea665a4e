"""The checking tools themselves: a broken checker would let every wrong kernel through."""
import numpy as np
import pytest

from kernels.testing.assertions import assert_bitwise_equal, assert_close, describe_mismatch, max_abs_err, max_rel_err

pytestmark = pytest.mark.host_only("the checking tools on host tensors and arrays: no kernel")


def test_close_values_pass():
    e = np.linspace(-1, 1, 50)
    assert_close(e + 1e-4, e, atol=1e-3)


def test_all_zero_output_fails_against_real_values():
    e = np.linspace(-1, 1, 50)
    with pytest.raises(AssertionError, match="differ"):
        assert_close(np.zeros_like(e), e, atol=1e-3)


def test_all_nan_output_fails():
    e = np.linspace(-1, 1, 50)
    with pytest.raises(AssertionError, match="NaN in actual"):
        assert_close(np.full_like(e, np.nan), e, atol=1e-3)


def test_vacuous_comparison_is_refused():
    """Expected values all inside the tolerance: an all-zero kernel would pass, so the test is wrong."""
    e = np.full(10, 1e-6)
    with pytest.raises(AssertionError, match="vacuous"):
        assert_close(e, e, atol=1e-3)
    assert_close(e, e, atol=1e-3, allow_vacuous=True)


def test_nan_expected_must_be_nan_and_inf_must_match():
    e = np.array([1.0, np.nan, -np.inf])
    assert_close(e.copy(), e, atol=1e-6)
    with pytest.raises(AssertionError, match="number in actual where expected is NaN"):
        assert_close(np.array([1.0, 0.0, -np.inf]), e, atol=1e-6)
    with pytest.raises(AssertionError, match="inf mismatches"):
        assert_close(np.array([1.0, np.nan, np.inf]), e, atol=1e-6)


def test_report_names_the_worst_element():
    e = np.zeros((3, 4)) + 1.0
    a = e.copy()
    a[2, 1] += 0.5
    msg = describe_mismatch(a, e, atol=1e-3, name="out")
    assert "1 of 12" in msg and "(2, 1)" in msg


def test_error_figures():
    e = np.array([2.0, -4.0])
    a = np.array([2.5, -4.0])
    assert max_abs_err(a, e) == 0.5
    assert max_rel_err(a, e) == 0.125
    assert max_abs_err(np.array([np.nan, 1.0]), np.array([0.0, 1.0])) == float("inf")


def test_bitwise_equal_sees_one_ulp():
    import torch

    a = torch.randn(64, dtype=torch.float16)
    b = a.clone()
    assert_bitwise_equal(a, b)
    b.view(torch.int16)[7] += 1  # one ulp
    with pytest.raises(AssertionError, match="bytes differ"):
        assert_bitwise_equal(a, b)
