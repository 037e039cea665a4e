"""int4 zero-point quantization at the ends of the zero-point range, device bit-identical to the reference.

``z = round(-min / s)`` with ``s = (max - min) / 15`` reaches 15 only for a group whose max is near 0 (every
value at or below about ``-max / 29``) and 0 only for one whose min is at or above 0; Gaussian test weights
almost never make either, so a clamp of z to ``[0, 14]`` (or ``[1, 15]``) would pass the parity tests. Here
rows are built to put z at 15, at 0 and past both ends (groups entirely negative or entirely positive, where
the clamp itself acts), and the device quantizer must match the reference bit for bit.
"""
from __future__ import annotations

import numpy as np
import torch

import kernels.reference as ref
from correctness.impl import T as tk
from kernels.testing.assertions import assert_bitwise_equal

GROUP = 32


def edge_weights() -> torch.Tensor:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((2, 8, 4 * GROUP))
    w[0, 0] = -np.abs(w[0, 0])  # entirely negative: -min / s > 15, clamped to 15
    w[0, 1] = np.abs(w[0, 1])  # entirely non-negative: z = 0
    w[0, 2] = -np.abs(w[0, 2]) - 0.5  # negative, bounded away from 0 ...
    w[0, 2, ::GROUP] = 0.01  # ... but for one small positive value per group: -min / s just under 15, rounds to 15
    w[0, 3] = np.abs(w[0, 3]) + 0.5  # entirely positive: -min / s < 0, clamped to 0
    w[0, 4, ::GROUP] = 0.0  # max or min may be exactly 0
    return torch.from_numpy(w).float()


def test_zero_points_at_both_ends_are_bit_identical(device):
    w = edge_weights()
    expected = ref.quantize_int4(w, GROUP, True)
    got = tk.quantize_int4(w.to(device), GROUP, True)
    zeros = expected.zeros.to(torch.int64)
    assert int((zeros == 15).sum()) >= 8 and int((zeros == 0).sum()) >= 8  # both ends are exercised
    assert_bitwise_equal(got.zeros, expected.zeros.to(device), name="zeros")
    assert_bitwise_equal(got.scales, expected.scales.to(device), name="scales")
    assert_bitwise_equal(got.qweight, expected.qweight.to(device), name="qweight")
    assert_bitwise_equal(tk.dequantize_int4(got), torch.from_numpy(ref.dequantize_int4(expected)).float().to(device),
                         name="dequantized")
