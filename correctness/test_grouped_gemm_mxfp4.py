"""MXFP4 W4A16 grouped GEMM (Triton) vs the float64 reference on the SAME quantized weights: skewed routing
(a hot expert, empty experts whose scales are 255, the NaN scale, and whose bias is NaN), the scales in a padded
buffer whose bytes past each row's end are 255 (a scale read past K gives NaN), tile-breaking N and K, split-K,
bias, bad input; and the reference's quantization error vs the unquantized GEMM."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import kernels.reference as ref
from correctness.impl import Q
from correctness.impl import T as tk
from kernels.reference.quant import e8m0_value
from kernels.testing.assertions import assert_close
from kernels.testing.gemm import mx_bias, padded_mx_scales
from kernels.testing.moe_inputs import make_grouped_gemm_inputs
from kernels.testing.tolerances_gemm import extra_roundings, grouped_gemm_tol


def mx_inputs(t, e, n, k, dtype, *, seed, device, bias=True, sizes=None):
    """(a, weight with padded poisoned scales, offsets, bias or None); empty experts poisoned (scales 255, bias NaN)."""
    inp = make_grouped_gemm_inputs(t, e, n, k, dtype, seed=seed, device=device, sizes=sizes)
    w = padded_mx_scales(Q.quantize_mxfp4(inp.w))
    empty = torch.from_numpy(np.flatnonzero(np.asarray(inp.sizes) == 0)).to(device)
    w.scales[empty] = 255
    b = None
    if bias:
        b = mx_bias(e, n, np.random.default_rng(seed), device)
        b[empty] = float("nan")
    return inp.a, w, inp.group_offsets, b


def check_parity(a, weight, offsets, *, bias=None, out_dtype=None, **plan):
    y = tk.grouped_gemm_mxfp4(a, weight, offsets, bias=bias, out_dtype=out_dtype, **plan)
    expected = ref.grouped_gemm_mxfp4(a, weight, offsets, bias=bias)
    out_dtype = out_dtype or a.dtype
    assert y.dtype == out_dtype and tuple(y.shape) == expected.shape
    tol = grouped_gemm_tol(a, weight, offsets.cpu().numpy(), out_dtype, extra_roundings=extra_roundings("mxfp4"),
                           bias=bias)
    assert_close(y, expected, **tol, name="y")


# (T, E, N, K, dtype, bias): N off every tile (258, 320, 72), K of one MX block (32) or not a multiple of 128
CASES = [
    (40, 6, 320, 32, "float16", True),
    (21, 16, 72, 160, "float32", True),  # E = 16: mostly empty and one-row experts; 160 % 128 = 32
    (5, 3, 258, 96, "bfloat16", False),
    (200, 4, 96, 64, "bfloat16", True),  # prefill-sized tiles
]


@pytest.mark.parametrize("t,e,n,k,dtype,bias", CASES)
def test_parity_skewed(t, e, n, k, dtype, bias, device):
    a, w, offs, b = mx_inputs(t, e, n, k, dtype, seed=t + e + k, device=device, bias=bias)
    check_parity(a, w, offs, bias=b)


@pytest.mark.slow
def test_parity_gpt_oss_k2880(device):
    """gpt-oss's K = H = I = 2880 (90 MX blocks; 2880 % 128 = 64) and N = 258, bfloat16."""
    a, w, offs, b = mx_inputs(9, 4, 258, 2880, "bfloat16", seed=5, device=device)
    check_parity(a, w, offs, bias=b, out_dtype=torch.float32)


def test_empty_batch_and_empty_experts(device):
    a, w, offs, b = mx_inputs(0, 4, 72, 64, "bfloat16", seed=0, device=device)
    y = tk.grouped_gemm_mxfp4(a, w, offs, bias=b)
    assert tuple(y.shape) == (0, 72) and y.dtype == torch.bfloat16
    a, w, offs, b = mx_inputs(6, 5, 40, 64, "bfloat16", seed=1, device=device, sizes=[0, 0, 6, 0, 0])
    check_parity(a, w, offs, bias=b)


def test_bias_matters(device):
    """The same call with and without the bias differs by the bias on every row's expert (a kernel ignoring it
    fails parity)."""
    a, w, offs, b = mx_inputs(12, 3, 40, 32, "float32", seed=2, device=device, sizes=[5, 0, 7])
    with_b = tk.grouped_gemm_mxfp4(a, w, offs, bias=b)
    without = tk.grouped_gemm_mxfp4(a, w, offs)
    rows_b = torch.cat([b[0:1].expand(5, -1), b[2:3].expand(7, -1)])
    torch.testing.assert_close(with_b - without, rows_b, atol=1e-5, rtol=1e-5)


def test_nan_scale_and_subnormal_scales(device):
    """E8M0 255 is NaN: a routed row whose block scale is 255 gets NaN in that column, never a number. The
    smallest scales (e = 0 and 1: 2**-127 and 2**-126, float32 subnormals once halved) keep their exact values:
    columns whose every block has them are ~1e-37, compared on their own scale."""
    a, w, offs, _ = mx_inputs(6, 2, 8, 64, "float32", seed=4, device=device, bias=False, sizes=[4, 2])
    w.scales[0, 3, 1] = 255
    w.scales[1, 5] = 0
    w.scales[1, 6] = 1
    y = tk.grouped_gemm_mxfp4(a, w, offs)
    expected = ref.grouped_gemm_mxfp4(a, w, offs)
    assert np.isnan(expected[:4, 3]).all() and torch.isnan(y[:4, 3]).all()
    keep = [n for n in range(8) if n != 3]
    assert not torch.isnan(y[:, keep]).any()
    assert_close(y[:, keep], expected[:, keep], atol=1e-5, rtol=1e-6, name="y")
    tiny = expected[4:, 5:7]
    assert 0 < np.abs(tiny).max() < 1e-35
    assert_close(y[4:, 5:7], tiny, atol=2.0 ** -149 * 64, rtol=1e-5, name="y (subnormal scales)")


def test_scales_past_the_row_end_are_poison(device):
    """The inputs' own guard: every row's scales are followed by 255 bytes in storage, so one block past K
    (what an unmasked scale read of a K tile wider than the rest of the row touches) is NaN."""
    _, w, _, _ = mx_inputs(4, 2, 8, 96, "bfloat16", seed=3, device=device)
    g = w.scales.shape[-1]
    past = w.scales.as_strided((*w.scales.shape[:-1], g + 1), w.scales.stride())[..., g]
    assert (past == 255).all() and np.isnan(e8m0_value(past.cpu().numpy())).all()
    assert w.scales.stride(1) > g  # a view into the padded buffer


# --- split-K: forced slice counts (MX blocks not a multiple of the split), under poisoned allocations (the
# float32 workspace starts as NaN). The tolerance is the unsplit one (another summation tree, same terms).
SPLIT_CASES = [
    (13, 5, 72, 160, "bfloat16", None, 3),  # 5 blocks -> 1, 2, 2
    (6, 4, 40, 96, "float16", torch.float32, 2),
]


@pytest.mark.servekernels  # about this project's kernels, not the contract
@pytest.mark.parametrize("t,e,n,k,dtype,out_dtype,split", SPLIT_CASES)
@pytest.mark.parametrize("validate", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_split_k_parity(t, e, n, k, dtype, out_dtype, split, validate, device):
    from correctness.test_unwritten_outputs import poisoned_allocations

    a, w, offs, b = mx_inputs(t, e, n, k, dtype, seed=t + k + split, device=device)
    with poisoned_allocations():
        check_parity(a, w, offs, bias=b, out_dtype=out_dtype, split_k=split, validate=validate)


@pytest.mark.host_only("the float64 reference's quantization error: no kernel")
def test_quantization_error_bounded():
    """Reference vs the unquantized weights: below saturation each weight is within half an E2M1 step (at most
    2 X for |w| / X in [4, 8): a quarter of the block's scale times 8), so |y_q - y| <= sum_k |a_tk| 2 X_nk."""
    inp = make_grouped_gemm_inputs(60, 4, 40, 256, "float32", seed=2)
    weight = ref.quantize_mxfp4(inp.w)
    y_q = ref.grouped_gemm_mxfp4(inp.a, weight, inp.group_offsets)
    y = ref.grouped_gemm(inp.a, inp.w, inp.group_offsets)
    a = np.abs(inp.a.double().numpy())
    step = 2 * np.repeat(e8m0_value(weight.scales.numpy()), 32, axis=-1)
    offs = inp.group_offsets.numpy()
    for e in range(4):
        lo, hi = offs[e], offs[e + 1]
        assert (np.abs(y_q[lo:hi] - y[lo:hi]) <= a[lo:hi] @ step[e].T).all(), f"expert {e}"
    rel = np.abs(y_q - y).max() / np.abs(y).max()
    print(f"mxfp4: max |y_q - y| / max |y| = {rel:.4f}")
    assert rel > 0


@pytest.mark.bad_input
def test_bad_inputs_raise(device):
    a, w, offs, b = mx_inputs(20, 4, 24, 128, "float16", seed=1, device=device)
    Mx = ref.Mxfp4Weight
    bad = [
        ((a[:, :64], w, offs), {}, "weight"),  # K mismatch
        ((a.double(), w, offs), {}, "a"),
        ((a[:, :48], Mx(w.data[..., :24], w.scales[..., :1]), offs), {}, "weight.data"),  # K = 48: not 32 x
        ((a, Mx(w.data, w.scales[..., :3]), offs), {}, "weight.scales"),
        ((a, Mx(w.data, w.scales.float()), offs), {}, "weight.scales"),
        ((a, Mx(w.data.to(torch.int8), w.scales), offs), {}, "weight.data"),
        ((a, torch.zeros((4, 24, 128), dtype=a.dtype, device=device), offs), {}, "weight"),  # not an Mxfp4Weight
        ((a, w, offs), {"bias": b[:, :10]}, "bias"),
        ((a, w, offs), {"bias": b.double()}, "bias"),
        ((a, w, offs), {"bias": b[0]}, "bias"),
        ((a, w, offs[1:]), {}, "group_offsets"),
        ((a, w, torch.tensor([0, 3, 2, 9, 20], dtype=torch.int32)), {}, "group_offsets"),
    ]
    for args, kwargs, name in bad:
        with pytest.raises(ValueError, match=name):
            tk.grouped_gemm_mxfp4(*args, **kwargs)
        with pytest.raises(ValueError, match=name):
            ref.grouped_gemm_mxfp4(*args, **kwargs)


@pytest.mark.gpu
def test_parity_bf16_gpu():
    a, w, offs, b = mx_inputs(1000, 16, 5760 + 8, 2880, "bfloat16", seed=7, device="cuda")
    y = tk.grouped_gemm_mxfp4(a, w, offs, bias=b)
    expected = ref.grouped_gemm_mxfp4(a, w, offs, bias=b)
    tol = grouped_gemm_tol(a, w, offs.cpu().numpy(), torch.bfloat16, extra_roundings=extra_roundings("mxfp4"),
                           accum_unit=2.0 ** -22, bias=b)
    assert_close(y, expected, **tol, name="y")


@pytest.mark.host_only("the diagnosis of a planted failure: float64 references only")
def test_diagnosis_names_swapped_codes():
    """A result computed with each byte's two codes swapped is diagnosed as exactly that."""
    from kernels.ops import get

    spec = get("grouped_gemm_mxfp4")
    inputs = spec.build(spec.check["gpt-oss-like/grouped-gemm-mxfp4-k32-n258-fp16"])
    a, w, offs = inputs.args
    swapped = ref.Mxfp4Weight(((w.data & 0xF) << 4) | (w.data >> 4), w.scales)
    expected = ref.grouped_gemm_mxfp4(a, w, offs, bias=inputs.kwargs["bias"])
    wrong = ref.grouped_gemm_mxfp4(a, swapped, offs, bias=inputs.kwargs["bias"])
    tol = spec.tolerance(inputs, {"y": expected})["y"]
    assert "two codes of each byte are swapped" in spec.diagnose(inputs, "y", wrong, expected, tol)
