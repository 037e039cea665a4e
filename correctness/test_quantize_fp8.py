"""float8 e4m3 quantization: weights (tensor / channel / block) and dynamic per-token-group activations.

The device implementations must give the reference's exact bits; the reference's error vs the unquantized
values must stay within e4m3's rounding (2**-4 relative for normals, half a subnormal step below).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import kernels.reference as ref
from correctness.impl import T as tk
from kernels.testing.assertions import assert_bitwise_equal
from kernels.testing.moe_inputs import signed_activations, signed_weights
from kernels.reference.fp8 import E4M3_MAX, E4M3_MIN_NORMAL, E4M3_SUBNORMAL_STEP
from kernels.reference.quant import AMAX_FLOOR, expand_scales, fp8_quantize_values

GRANULES = [("tensor", None), ("channel", None), ("block", (128, 128)), ("block", (64, 32))]


def weights(e=3, n=200, k=320, seed=0):
    w = signed_weights(e, n, k, np.random.default_rng(seed))
    w[1, :40, :64] = 0.0  # an all-zero 32x64 granule (and more) in expert 1
    return torch.from_numpy(w).float()


@pytest.mark.parametrize("granularity,block_size", GRANULES)
def test_weight_quant_bit_identical_to_reference(granularity, block_size, device):
    w = weights()
    expected = ref.quantize_fp8(w, granularity, block_size)
    got = tk.quantize_fp8(w.to(device), granularity, block_size)
    assert got.granularity == granularity and got.block_size == expected.block_size
    assert_bitwise_equal(got.data, expected.data, name="data")
    assert_bitwise_equal(got.scales, expected.scales, name="scales")


@pytest.mark.host_only("the float64 reference quantizer: no kernel")
@pytest.mark.parametrize("granularity,block_size", GRANULES)
def test_weight_quant_error_bounded(granularity, block_size):
    w = weights()
    q = ref.quantize_fp8(w, granularity, block_size)
    w64 = w.double().numpy()
    s = expand_scales(q.scales.double().numpy(), w64.shape, granularity, q.block_size)
    err = np.abs(ref.dequantize_fp8(q) - w64)
    normal = np.abs(w64) / s >= E4M3_MIN_NORMAL
    # e4m3 keeps 3 mantissa bits: a normal rounds within 2**-4 of itself (plus float32 rounding of w / s);
    # below the normal range the step is 2**-9 * s, so the error is at most half of it.
    assert (err[normal] <= (2.0 ** -4 + 2.0 ** -23) * np.abs(w64[normal])).all()
    assert (err[~normal] <= 0.5 * E4M3_SUBNORMAL_STEP * s[~normal] * (1 + 2.0 ** -20)).all()
    rel = err[normal] / np.abs(w64[normal])
    print(f"fp8 {granularity}{block_size or ''}: max rel err {rel.max():.4f}, mean {rel.mean():.5f}")
    # every granule's amax lands exactly on +-448: the scale uses the whole e4m3 range
    data = q.data.double().numpy()
    assert np.abs(data).max() == E4M3_MAX
    assert np.isfinite(q.scales.numpy()).all() and (q.scales.numpy() > 0).all()


@pytest.mark.host_only("the float64 reference quantizer: no kernel")
def test_all_zero_granule_gets_finite_scale():
    w = weights()
    q = ref.quantize_fp8(w, "block", (32, 64))
    assert q.scales[1, 0, 0].item() == np.float32(AMAX_FLOOR / E4M3_MAX)  # expert 1's zero corner
    assert (q.data[1, :32, :64].double() == 0).all()
    assert np.isfinite(ref.dequantize_fp8(q)).all()


@pytest.mark.host_only("the float64 reference quantizer: no kernel")
def test_values_beyond_448_saturate():
    x = np.array([500.0, -1000.0, 448.0, 464.0, 479.99, -448.5, 1e30])
    np.testing.assert_array_equal(fp8_quantize_values(x, np.ones_like(x)),
                                  [448.0, -448.0, 448.0, 448.0, 448.0, -448.0, 448.0])


@pytest.mark.host_only("the float64 reference quantizer: no kernel")
def test_two_dim_weight_is_one_expert():
    w = weights()[0]
    q = ref.quantize_fp8(w, "channel")
    assert tuple(q.data.shape) == (1, 200, 320) and tuple(q.scales.shape) == (1, 200)


def tie_row(k: int) -> np.ndarray:
    """amax 448 makes the scale exactly 1, so these land on e4m3 midpoints: ties must go to even."""
    row = np.zeros(k)
    vals = [448.0, 1.0625, 1.1875, -1.0625, 17.0, 19.0, 1.5 * 2.0 ** -9, 2.5 * 2.0 ** -9, -0.4 * 2.0 ** -9, 232.0,
            -0.0]
    row[:len(vals)] = vals
    return row


@pytest.mark.parametrize("k,group_size,dtype", [(320, 128, "bfloat16"), (200, 200, "float16"), (192, 64, "float32"),
                                                (130, 4096, "float32")])
def test_act_quant_kernel_bit_exact(k, group_size, dtype, device):
    rng = np.random.default_rng(k)
    a = signed_activations(37, k, rng)
    a[3] = 0.0  # an all-zero token
    a[4] *= 1e-30  # a tiny token (amax below the floor)
    a[5] = tie_row(k)
    a[6, :] = 1e4  # beyond e4m3's range before scaling
    x = torch.from_numpy(a).to(getattr(torch, dtype)).to(device)
    q, s = tk.quantize_fp8_act(x, group_size)
    q_ref, s_ref = ref.quantize_fp8_act(x, group_size)
    assert tuple(s.shape) == (37, -(-k // group_size))
    assert_bitwise_equal(s, s_ref.to(device), name="a_scales")
    assert_bitwise_equal(q, q_ref.to(device), name="a_fp8")
    if dtype == "float32" and group_size >= k:
        # scale 1 on the tie row: 1.0625 -> 1.0, 1.1875 -> 1.25, 17 -> 16, 19 -> 20, 1.5 * 2**-9 -> 2**-8
        assert q[5, :6].double().tolist() == [448.0, 1.0, 1.25, -1.0, 16.0, 20.0]
        assert q[5, 6].item() == 2.0 ** -8 and q[5, 7].item() == 2.0 ** -8
        assert str(q[5, 8].item()) == "-0.0"


def test_act_quant_strided_and_empty(device):
    a = torch.from_numpy(signed_activations(9, 300, np.random.default_rng(1))).half().to(device)
    view = a[:, 20:276]
    q, s = tk.quantize_fp8_act(view, 128)
    q_ref, s_ref = ref.quantize_fp8_act(view, 128)
    assert_bitwise_equal(q, q_ref.to(device), name="a_fp8")
    assert_bitwise_equal(s, s_ref.to(device), name="a_scales")
    q0, s0 = tk.quantize_fp8_act(a[:0], 128)
    assert tuple(q0.shape) == (0, 300) and tuple(s0.shape) == (0, 3)


@pytest.mark.bad_input
def test_bad_inputs_raise(device):
    a = torch.randn(4, 64, device=device)
    for fn in (tk.quantize_fp8_act, ref.quantize_fp8_act):
        with pytest.raises(ValueError, match="a"):
            fn(a[0])
        with pytest.raises(ValueError, match="a"):
            fn(a.double())
        with pytest.raises(ValueError, match="group_size"):
            fn(a, 0)
        with pytest.raises(ValueError, match="group_size"):
            fn(a, 48)  # below K and not a power of two: the GEMM could not tell it from 64
        assert fn(a, 96)[1].shape == (4, 1)  # >= K: one scale per token
    w = weights()
    for fn in (tk.quantize_fp8, ref.quantize_fp8):
        with pytest.raises(ValueError, match="granularity"):
            fn(w, "row")
        with pytest.raises(ValueError, match="block_size"):
            fn(w, "block", (128,))
        with pytest.raises(ValueError, match="w"):
            fn(w[0, 0])
        bad = w.clone()
        bad[0, 0, 0] = float("nan")
        with pytest.raises(ValueError, match="w"):
            fn(bad)
