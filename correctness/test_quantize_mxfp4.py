"""MXFP4 (OCP Microscaling): the float64 reference's own properties (the E2M1 grid, ties to the even code,
saturation, the shared exponent, the nibble order, exact round trips on the grid, idempotence), the device
quantizer bit-identical to it, and bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import kernels.reference as ref
from correctness.impl import T as tk
from kernels.reference.quant import (E2M1_VALUES, e2m1_round, e2m1_value, e8m0_value, floor_log2, unpack_nibbles)
from kernels.testing.assertions import assert_bitwise_equal
from kernels.testing.moe_inputs import signed_weights

HOST = pytest.mark.host_only("the MXFP4 format on the host: no kernel")


def grid_weights(e=2, n=5, k=96, seed=0) -> np.ndarray:
    """float64 values already on the MXFP4 grid: per block a random E8M0 exponent, random codes, each block's
    largest code 6 or -6 in a random place (so quantize picks that same exponent back)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 16, size=(e, n, k))
    codes[..., rng.integers(0, 32)::32] = rng.choice([7, 15], size=(e, n, k // 32))
    exps = rng.integers(127 - 20, 127 + 10, size=(e, n, k // 32))
    return e2m1_value(codes) * np.repeat(e8m0_value(exps), 32, axis=-1)


@HOST
def test_e2m1_table_ties_and_saturation():
    """The value table, ties to the even code at every midpoint, saturation at +-6, the sign bit kept."""
    assert e2m1_value(np.arange(16)).tolist() == [0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6]
    mids = (E2M1_VALUES[:-1] + E2M1_VALUES[1:]) / 2  # 0.25 0.75 1.25 1.75 2.5 3.5 5
    codes = e2m1_round(mids)
    assert codes.tolist() == [0, 2, 2, 4, 4, 6, 6]  # each tie goes to the even one of its two codes
    assert e2m1_round(mids + 1e-9).tolist() == [1, 2, 3, 4, 5, 6, 7]  # just above a tie: the upper value
    assert e2m1_round(np.array([6.0, 7.0, 1e30, -6.5, -0.1, -0.0])).tolist() == [7, 7, 7, 15, 8, 8]
    assert e2m1_round(E2M1_VALUES).tolist() == list(range(8))


@HOST
def test_e8m0_and_floor_log2():
    assert e8m0_value(np.array([127, 128, 126, 0, 254])).tolist() == [1.0, 2.0, 0.5, 2.0 ** -127, 2.0 ** 127]
    assert np.isnan(e8m0_value(255))
    x = np.array([1.0, 2.0 - 2.0 ** -52, 2.0, 3.0, 0.75, 2.0 ** -130, 6.0 * 2.0 ** 100])
    assert floor_log2(x).tolist() == [0, 0, 1, 1, -1, -130, 102]  # exact: 2 - 2**-52 is below 2**1


@HOST
def test_shared_exponent_and_layout():
    """The block's exponent is floor(log2(amax)) - 2; codes two a byte, the even element in the low nibble."""
    w = np.zeros((1, 2, 64))
    w[0, 0, :32] = 0.1
    w[0, 0, 5] = 5.9  # amax 5.9: floor(log2) = 2, shared 0, e = 127
    w[0, 0, 32:] = -0.001  # amax 1e-3: floor(log2) = -10, shared -12, e = 115
    w[0, 1, 0], w[0, 1, 1] = 3.0, -1.0  # amax 3: e = 126 (scale 0.5): codes 7 (3 / 0.5 = 6) and 8 + 4 (-2)
    q = ref.quantize_mxfp4(torch.from_numpy(w))
    assert q.scales.tolist() == [[[127, 115], [126, 0]]]  # the all-zero block: e = 0, finite
    assert q.data.shape == (1, 2, 32) and q.data.dtype == torch.uint8
    assert int(q.data[0, 1, 0]) == 7 | (12 << 4)  # element 0 in the low nibble, element 1 in the high one
    codes = unpack_nibbles(q.data.numpy())
    assert codes[0, 0, 5] == 7  # 5.9 saturates at 6
    assert codes[0, 0, 0] == 0  # 0.1 / 1 rounds to 0
    assert (codes[0, 0, 32:] == 8 + 6).all()  # -1e-3 / 2**-12 = -4.096: -4 (the midpoint to -6 is -5)
    assert not np.isnan(ref.dequantize_mxfp4(q)).any()


@HOST
def test_round_trip_exact_on_the_grid_and_idempotent():
    w = grid_weights()
    q = ref.quantize_mxfp4(torch.from_numpy(w))
    np.testing.assert_array_equal(ref.dequantize_mxfp4(q), w)
    x = signed_weights(2, 7, 128, np.random.default_rng(1))
    once = ref.dequantize_mxfp4(ref.quantize_mxfp4(torch.from_numpy(x)))
    q2 = ref.quantize_mxfp4(torch.from_numpy(once))
    np.testing.assert_array_equal(ref.dequantize_mxfp4(q2), once)


@HOST
def test_error_within_half_a_step_below_saturation():
    """Each element is within half its grid step (step 2**(exp - 1) * scale in E2M1's binade of |w| / X), or
    saturated: |w| / X >= 6, where the error is |w| - 6 X < 2 X."""
    x = signed_weights(3, 9, 256, np.random.default_rng(2))
    q = ref.quantize_mxfp4(torch.from_numpy(x))
    xs = np.repeat(e8m0_value(q.scales.numpy()), 32, axis=-1)
    y = np.abs(x) / xs
    step = np.where(y < 2, 0.5, np.where(y < 4, 1.0, 2.0)) * xs
    err = np.abs(ref.dequantize_mxfp4(q) - x)
    assert (err <= np.where(y >= 6, 2 * xs, step / 2)).all()


@HOST
def test_nan_scale_makes_its_block_nan():
    q = ref.quantize_mxfp4(torch.ones(1, 64))
    q.scales[0, 0, 1] = 255
    d = ref.dequantize_mxfp4(q)
    assert np.isnan(d[0, 0, 32:]).all() and not np.isnan(d[0, 0, :32]).any()


@pytest.mark.parametrize("seed", [0, 1])
def test_device_quant_bit_identical(seed, device):
    x = signed_weights(3, 10, 320, np.random.default_rng(seed))
    x[0, 0, :32] = 0.0  # an all-zero block
    x[0, 1, :32] = 1e-42  # below E8M0's smallest scale: clamped exponent
    x[1, 2, 32:64] = grid_weights(1, 1, 32)[0, 0]  # ties on the grid
    x[1, 3, :32] = (np.arange(32) - 16) * 0.25  # every midpoint of the grid, at scale 1
    w = torch.from_numpy(x)
    expected = ref.quantize_mxfp4(w)
    got = tk.quantize_mxfp4(w.to(device))
    assert_bitwise_equal(got.data, expected.data.to(device), name="data")
    assert_bitwise_equal(got.scales, expected.scales.to(device), name="scales")
    assert_bitwise_equal(tk.dequantize_mxfp4(got), torch.from_numpy(ref.dequantize_mxfp4(expected)).float().to(device),
                         name="dequantized")


@HOST
@pytest.mark.parametrize("quantize", ["reference", "device"])
def test_bad_input(quantize):
    fn = ref.quantize_mxfp4 if quantize == "reference" else tk.quantize_mxfp4
    with pytest.raises(ValueError, match="w"):
        fn(torch.ones(4, 48))  # K not a multiple of 32
    with pytest.raises(ValueError, match="w"):
        fn(torch.ones(4))
    with pytest.raises(ValueError, match="w"):
        fn(torch.tensor([[float("nan")] * 32]))
    q = ref.quantize_mxfp4(torch.ones(2, 64))
    with pytest.raises(ValueError, match="weight.scales"):
        ref.dequantize_mxfp4(type(q)(q.data, q.scales[..., :1]))
    with pytest.raises(ValueError, match="weight.scales"):
        ref.dequantize_mxfp4(type(q)(q.data, q.scales.float()))
