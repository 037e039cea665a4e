"""int4 groupwise quantization: nibble packing, device implementation bit-identical to the reference, and the
quantization error bounded by half a step."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import kernels.reference as ref
from correctness.impl import T as tk
from kernels.testing.assertions import assert_bitwise_equal
from kernels.testing.moe_inputs import signed_weights
from kernels.reference.quant import AMAX_FLOOR, pack_nibbles, unpack_nibbles
from kernels.triton.quant import pack_nibbles as pack_nibbles_t
from kernels.triton.quant import unpack_nibbles as unpack_nibbles_t


def weights(e=3, n=72, k=384, seed=0, special=True):
    w = signed_weights(e, n, k, np.random.default_rng(seed))
    if special:
        w[2, 5, :128] = 0.0  # all-zero groups (for every group size)
        w[2, 6, :128] = 1e-30  # tiny groups: amax below the floor
    return torch.from_numpy(w).float()


@pytest.mark.host_only("nibble packing on the host: no kernel")
@pytest.mark.servekernels  # about this project's kernels, not the contract
def test_nibble_order_and_round_trip():
    """Element k lives in byte k // 2, even k in the low nibble; pack/unpack are exact inverses."""
    assert pack_nibbles(np.array([1, 2, 3, 4, 15, 0])).tolist() == [0x21, 0x43, 0x0F]
    nib = np.random.default_rng(0).integers(0, 16, size=(3, 5, 64)).astype(np.uint8)
    packed = pack_nibbles(nib)
    assert packed.shape == (3, 5, 32)
    np.testing.assert_array_equal(unpack_nibbles(packed), nib)
    nib_t = torch.from_numpy(nib)
    assert torch.equal(pack_nibbles_t(nib_t), torch.from_numpy(packed))
    assert torch.equal(unpack_nibbles_t(torch.from_numpy(packed)), nib_t)
    every_byte = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(pack_nibbles(unpack_nibbles(every_byte)), every_byte)


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("zero_point", [False, True])
def test_device_quant_bit_identical(group_size, zero_point, device):
    w = weights()
    expected = ref.quantize_int4(w, group_size, zero_point)
    got = tk.quantize_int4(w.to(device), group_size, zero_point)
    assert got.group_size == group_size
    assert tuple(got.qweight.shape) == (3, 72, 192) and tuple(got.scales.shape) == (3, 72, 384 // group_size)
    assert_bitwise_equal(got.qweight, expected.qweight.to(device), name="qweight")
    assert_bitwise_equal(got.scales, expected.scales.to(device), name="scales")
    if zero_point:
        assert_bitwise_equal(got.zeros, expected.zeros.to(device), name="zeros")
        assert int(got.zeros.max()) <= 15
    else:
        assert got.zeros is None
    # the device dequantization is the reference's float64 value rounded once to float32
    assert_bitwise_equal(tk.dequantize_int4(got), torch.from_numpy(ref.dequantize_int4(expected)).float().to(device),
                         name="dequantized")


@pytest.mark.host_only("the float64 reference quantizer: no kernel")
@pytest.mark.parametrize("group_size", [32, 128])
@pytest.mark.parametrize("zero_point", [False, True])
def test_error_at_most_half_a_step(group_size, zero_point):
    w = weights(special=False)
    q = ref.quantize_int4(w, group_size, zero_point)
    w64 = w.double().numpy()
    s = np.repeat(q.scales.double().numpy(), group_size, axis=-1)
    err = np.abs(ref.dequantize_int4(q) - w64)
    groups = w64.reshape(3, 72, -1, group_size)
    # the zero-point bound needs 0 inside [min, max] of the group (signed Gaussians: every group here)
    assert (groups.min(-1) <= 0).all() and (groups.max(-1) >= 0).all()
    # round to nearest: within s/2, up to the float32 rounding of s (the largest |w| may sit at 7 s (1 + 2**-24))
    assert (err <= 0.5 * s + 2.0 ** -23 * np.abs(w64) + 1e-300).all()
    print(f"int4 g{group_size} zp={zero_point}: max err / s = {(err / s).max():.4f}, "
          f"rms err / rms w = {np.sqrt((err ** 2).mean() / (w64 ** 2).mean()):.4f}")
    # the scale comes from the group's range: the extreme element is exactly representable
    nib = unpack_nibbles(q.qweight.numpy())
    assert nib.max() == 15 and (nib.min() == 1 if not zero_point else nib.min() == 0)


@pytest.mark.host_only("the float64 reference quantizer: no kernel")
@pytest.mark.parametrize("zero_point", [False, True])
def test_zero_group_gets_finite_scale(zero_point):
    q = ref.quantize_int4(weights(), 32, zero_point)
    scales = q.scales.numpy()
    assert np.isfinite(scales).all() and (scales > 0).all()
    assert scales[2, 5, 0] == np.float32(AMAX_FLOOR / (15.0 if zero_point else 7.0))
    deq = ref.dequantize_int4(q)
    assert np.isfinite(deq).all() and (deq[2, 5, :128] == 0).all()
    assert (np.abs(deq[2, 6, :128]) <= 1e-29).all()


@pytest.mark.host_only("the float64 reference quantizer: no kernel")
def test_two_dim_weight_is_one_expert():
    q = ref.quantize_int4(weights()[0], 64)
    assert tuple(q.qweight.shape) == (1, 72, 192) and tuple(q.scales.shape) == (1, 72, 6)


@pytest.mark.bad_input
@pytest.mark.host_only("bad input is refused before any launch (host tensors)")
def test_bad_inputs_raise():
    w = weights()
    for fn in (tk.quantize_int4, ref.quantize_int4):
        with pytest.raises(ValueError, match="group_size"):
            fn(w, 48)
        with pytest.raises(ValueError, match="group_size"):
            fn(w[..., :96], 64)  # K = 96 not a multiple of 64
        with pytest.raises(ValueError, match="w"):
            fn(w[0, 0], 32)
        bad = w.clone()
        bad[1, 1, 1] = float("inf")
        with pytest.raises(ValueError, match="w"):
            fn(bad, 32)
    q = ref.quantize_int4(w, 64)
    broken = ref.Int4Weight(q.qweight, q.scales[..., :2].contiguous(), None, 64)
    for fn in (tk.dequantize_int4, ref.dequantize_int4):
        with pytest.raises(ValueError, match="scales"):
            fn(broken)
