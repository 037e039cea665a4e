"""W8A8 fp8 grouped GEMM (Triton) vs the float64 reference on the SAME quantized operands, and the end-to-end
quantization error of the reference vs the unquantized GEMM."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernels.reference as ref
from correctness.impl import Q
from correctness.impl import T as tk
from kernels.testing.assertions import assert_close
from kernels.testing.moe_inputs import make_grouped_gemm_inputs
from kernels.testing.tolerances_gemm import grouped_gemm_tol
from kernels.reference.quant import act_group_size, expand_scales

# (T, E, N, K, granularity, block_size, act group, act dtype, out dtype): skewed routing, K and N off-tile.
CASES = [
    (200, 8, 72, 192, "block", (128, 128), 128, "bfloat16", torch.bfloat16),  # K = 1.5 blocks
    (1, 4, 200, 320, "channel", None, 320, "float16", torch.float32),  # per-token activation scale
    (37, 64, 24, 200, "tensor", None, 64, "float32", torch.float32),  # E = 64
    (300, 3, 200, 320, "block", (64, 32), 32, "float16", torch.float16),  # prefill tiles, small blocks
    (9, 1, 72, 192, "block", (128, 128), 192, "bfloat16", torch.bfloat16),  # E = 1, per token
    (40, 3, 40, 192, "block", (32, 48), 32, "bfloat16", torch.float32),  # group 32, block K 48: spans of gcd 16
]


def dequantized_act(a_fp8, a_scales):
    k = a_fp8.shape[1]
    g = act_group_size(k, a_scales.shape[1])
    return a_fp8.double().cpu().numpy() * np.repeat(a_scales.double().cpu().numpy(), g, axis=1)[:, :k]


def check_parity(a_fp8, a_scales, weight, offsets, out_dtype=torch.bfloat16, **plan):
    y = tk.grouped_gemm_fp8(a_fp8, a_scales, weight, offsets, out_dtype=out_dtype, **plan)
    expected = ref.grouped_gemm_fp8(a_fp8, a_scales, weight, offsets)
    assert y.dtype == out_dtype and tuple(y.shape) == expected.shape
    # exact fp8 products, float32 accumulation over K; per K step two scale multiplies and an add, plus one
    # multiply by a channel/tensor scale after the loop: 4 extra roundings; then the output cast.
    tol = grouped_gemm_tol(dequantized_act(a_fp8, a_scales), ref.dequantize_fp8(weight), offsets.cpu().numpy(),
                           out_dtype, extra_roundings=4)
    assert_close(y, expected, **tol, name="y")


@pytest.mark.parametrize("t,e,n,k,granularity,block_size,act_group,dtype,out_dtype", CASES)
def test_parity_skewed(t, e, n, k, granularity, block_size, act_group, dtype, out_dtype, device):
    inp = make_grouped_gemm_inputs(t, e, n, k, dtype, seed=t + e + k, device=device)
    weight = Q.quantize_fp8(inp.w, granularity, block_size)
    a_fp8, a_scales = Q.quantize_fp8_act(inp.a, act_group)
    check_parity(a_fp8, a_scales, weight, inp.group_offsets, out_dtype)


def test_strided_operands(device):
    """Activations and weights as slices of NaN-filled buffers: a read past K or N would show up as NaN."""
    inp = make_grouped_gemm_inputs(30, 4, 40, 128, "bfloat16", seed=4, device=device)
    a_fp8, a_scales = Q.quantize_fp8_act(inp.a, 64)
    w = Q.quantize_fp8(inp.w, "block", (32, 64))
    nan8 = torch.tensor(float("nan")).to(torch.float8_e4m3fn)
    a_buf = torch.full((30, 160), nan8.item(), device=device).to(torch.float8_e4m3fn)
    a_buf[:, 16:144] = a_fp8
    w_buf = torch.full((4, 56, 144), nan8.item(), device=device).to(torch.float8_e4m3fn)
    w_buf[:, 8:48, 8:136] = w.data
    a_view, w_view = a_buf[:, 16:144], w_buf[:, 8:48, 8:136]
    assert torch.isnan(a_buf.float()).any() and not a_view.is_contiguous()
    weight = ref.Fp8Weight(w_view, w.scales, "block", (32, 64))
    check_parity(a_view, a_scales, weight, inp.group_offsets.long(), torch.float32)


def test_empty_batch(device):
    inp = make_grouped_gemm_inputs(0, 3, 72, 128, "bfloat16", device=device)
    a_fp8, a_scales = Q.quantize_fp8_act(inp.a, 128)
    y = tk.grouped_gemm_fp8(a_fp8, a_scales, Q.quantize_fp8(inp.w), inp.group_offsets)
    assert tuple(y.shape) == (0, 72) and y.dtype == torch.bfloat16


@pytest.mark.host_only("the float64 reference's quantization error: no kernel")
@pytest.mark.parametrize("granularity,block_size", [("block", (128, 128)), ("channel", None), ("tensor", None)])
def test_quantization_error_bounded(granularity, block_size):
    """Reference vs the unquantized GEMM. Each fp8 value x_q stands for x within D = 2**-4 |x| (3 mantissa bits,
    plus 2**-22 for the float32 quotient) + 2**-10 s (half a subnormal step of its granule's scale s), so
    |y_q - y| <= sum_k (Da_k |w_k| + |a_k| Dw_k + Da_k Dw_k)."""
    inp = make_grouped_gemm_inputs(120, 6, 72, 256, "float32", seed=2)
    weight = ref.quantize_fp8(inp.w, granularity, block_size)
    a_fp8, a_scales = ref.quantize_fp8_act(inp.a, 128)
    y_q = ref.grouped_gemm_fp8(a_fp8, a_scales, weight, inp.group_offsets)
    y = ref.grouped_gemm(inp.a, inp.w, inp.group_offsets)
    a_abs, w_abs = np.abs(inp.a.double().numpy()), np.abs(inp.w.double().numpy())
    rel = 2.0 ** -4 + 2.0 ** -22
    da = rel * a_abs + 2.0 ** -10 * np.repeat(a_scales.double().numpy(), 128, axis=1)
    dw = rel * w_abs + 2.0 ** -10 * expand_scales(weight.scales.double().numpy(), w_abs.shape, granularity,
                                                   weight.block_size)
    offs = inp.group_offsets.numpy()
    for e in range(6):
        lo, hi = offs[e], offs[e + 1]
        bound = da[lo:hi] @ w_abs[e].T + a_abs[lo:hi] @ dw[e].T + da[lo:hi] @ dw[e].T
        assert (np.abs(y_q[lo:hi] - y[lo:hi]) <= bound).all(), f"expert {e}"
    ratio = np.abs(y_q - y).max() / np.abs(y).max()
    print(f"fp8 {granularity}: max |y_q - y| / max |y| = {ratio:.4f}")
    assert ratio > 0


@pytest.mark.bad_input
def test_bad_inputs_raise(device):
    inp = make_grouped_gemm_inputs(20, 4, 24, 128, "float16", seed=1, device=device)
    offs = inp.group_offsets
    a8, sc = Q.quantize_fp8_act(inp.a, 64)
    w = Q.quantize_fp8(inp.w, "block", (32, 64))
    Fp8 = ref.Fp8Weight
    bad = [
        ((inp.a, sc, w, offs), "a_fp8"),  # not fp8
        ((a8[:, :64], sc, w, offs), "weight"),  # K mismatch
        ((a8, sc.double(), w, offs), "a_scales"),
        ((a8, sc[:5], w, offs), "a_scales"),  # rows
        ((a8, torch.ones(20, 3), w, offs), "a_scales"),  # 3 columns for K = 128: no power-of-two group
        ((a8, sc, Fp8(w.data, w.scales[..., :1], "block", (32, 64)), offs), "scales"),
        ((a8, sc, Fp8(w.data, w.scales, "channel", None), offs), "scales"),
        ((a8, sc, Fp8(w.data.half(), w.scales, "block", (32, 64)), offs), "data"),
        ((a8, sc, Fp8(w.data, w.scales, "row", None), offs), "granularity"),
        ((a8, sc, inp.w, offs), "weight"),
        ((a8, sc, w, offs[:-1]), "group_offsets"),
        ((a8, sc, w, torch.tensor([0, 9, 5, 12, 20], dtype=torch.int32)), "group_offsets"),
        ((a8, sc.to("meta"), w, offs), "a_scales"),
    ]
    for args, name in bad:
        with pytest.raises(ValueError, match=name):
            tk.grouped_gemm_fp8(*args)
        with pytest.raises(ValueError, match=name):
            ref.grouped_gemm_fp8(*args)
    with pytest.raises(ValueError, match="out_dtype"):
        tk.grouped_gemm_fp8(a8, sc, w, offs, out_dtype=torch.float8_e4m3fn)


@pytest.mark.bad_input
@pytest.mark.servekernels  # this kernel's K step, not the contract
def test_a_weight_block_no_k_step_divides_is_refused(device):
    """A K step may not span two weight scale blocks: bk = 24 has no power-of-two divisor >= 16."""
    inp = make_grouped_gemm_inputs(20, 4, 24, 128, "float16", seed=1, device=device)
    a8, sc = Q.quantize_fp8_act(inp.a, 64)
    with pytest.raises(ValueError, match="block_size"):
        tk.grouped_gemm_fp8(a8, sc, Q.quantize_fp8(inp.w, "block", (32, 24)), inp.group_offsets)


@pytest.mark.gpu
def test_parity_bf16_gpu():
    inp = make_grouped_gemm_inputs(1000, 16, 4096 + 72, 1024 + 64, "bfloat16", seed=7, device="cuda")
    weight = Q.quantize_fp8(inp.w, "block", (128, 128))
    a_fp8, a_scales = Q.quantize_fp8_act(inp.a, 128)
    y = tk.grouped_gemm_fp8(a_fp8, a_scales, weight, inp.group_offsets)
    expected = ref.grouped_gemm_fp8(a_fp8, a_scales, weight, inp.group_offsets)
    # Hopper fp8 MMAs keep ~14 bits while accumulating one 128-wide K step; float32 across steps.
    tol = grouped_gemm_tol(dequantized_act(a_fp8, a_scales), ref.dequantize_fp8(weight),
                           inp.group_offsets.cpu().numpy(), torch.bfloat16, extra_roundings=4,
                           step_terms=128, step_unit=2.0 ** -14)
    assert_close(y, expected, **tol, name="y")


@pytest.mark.gpu
def test_weight_stack_past_2_31_elements_gpu():
    """E * N * K > 2**31 fp8 weights: the last expert's last rows need 64-bit offsets."""
    e, n, k = 3, 24576, 32768
    data = torch.empty((e, n, k), dtype=torch.float8_e4m3fn, device="cuda")
    for i in range(e):
        data[i] = (torch.randn((n, k), device="cuda") * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    scales = torch.rand((e, n // 128, k // 128), device="cuda") * 1e-4 + 1e-5
    weight = ref.Fp8Weight(data, scales, "block", (128, 128))
    a_fp8, a_scales = Q.quantize_fp8_act(torch.randn(8, k, dtype=torch.bfloat16, device="cuda"), 128)
    y = tk.grouped_gemm_fp8(a_fp8, a_scales, weight, torch.tensor([0, 0, 0, 8], dtype=torch.int32, device="cuda"))
    tail = ref.Fp8Weight(data[e - 1:, -128:].contiguous(), scales[e - 1:, -1:].contiguous(), "block", (128, 128))
    one = torch.tensor([0, 8], dtype=torch.int32, device="cuda")
    expected = ref.grouped_gemm_fp8(a_fp8, a_scales, tail, one)
    tol = grouped_gemm_tol(dequantized_act(a_fp8, a_scales), ref.dequantize_fp8(tail), one.cpu().numpy(),
                           torch.bfloat16, extra_roundings=4, step_terms=128, step_unit=2.0 ** -14)
    assert_close(y[:, -128:], expected, **tol, name="y[:, -128:]")


@given(sizes=st.lists(st.integers(0, 30), min_size=1, max_size=7), n=st.integers(1, 40), k=st.integers(16, 160),
       granule=st.sampled_from([("tensor", None), ("channel", None), ("block", (16, 32)), ("block", (48, 64))]),
       act_group=st.sampled_from([16, 32, 64, 4096]), seed=st.integers(0, 2 ** 16))
@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_any_routing(sizes, n, k, granule, act_group, seed, device):
    """Any group sizes, N, K (tails inside a scale group or block), granularity and activation group."""
    inp = make_grouped_gemm_inputs(sum(sizes), len(sizes), n, k, "float32", seed=seed, sizes=sizes, device=device)
    weight = Q.quantize_fp8(inp.w, *granule)
    a_fp8, a_scales = Q.quantize_fp8_act(inp.a, act_group)
    if sum(sizes) == 0:
        assert tuple(tk.grouped_gemm_fp8(a_fp8, a_scales, weight, inp.group_offsets).shape) == (0, n)
        return
    check_parity(a_fp8, a_scales, weight, inp.group_offsets, torch.float32)



# --- split-K (kernels.triton.gemm_configs.split_k) --------------------------------------------------------
# Forced slice counts at small shapes: K units (scale spans, or K steps under one scale) not a multiple of the
# split, a K tail in the last slice, empty experts, every granularity, the prefill tiles; under poisoned
# allocations (the float32 workspace starts as NaN). Tolerance as unsplit: another summation tree of the same
# terms (and the same scale multiplies per K step), no larger error bound.
SPLIT_CASES = [
    (13, 5, 72, 320, "block", (64, 32), 32, "bfloat16", torch.float32, 3),  # 10 spans of 32 -> 3, 3, 4
    (7, 4, 24, 200, "tensor", None, 200, "float16", torch.bfloat16, 3),  # one scale: 4 K steps of 64 -> 1, 1, 2
    (6, 8, 40, 320, "channel", None, 64, "float32", torch.float32, 4),  # 5 groups; 8 experts for 6 rows
    (200, 8, 72, 384, "block", (128, 128), 128, "bfloat16", torch.bfloat16, 2),  # prefill tiles, 3 blocks -> 1, 2
]


@pytest.mark.servekernels  # about this project's kernels, not the contract
@pytest.mark.parametrize("t,e,n,k,granularity,block_size,act_group,dtype,out_dtype,split", SPLIT_CASES)
@pytest.mark.parametrize("validate", [True, False])
def test_split_k_parity(t, e, n, k, granularity, block_size, act_group, dtype, out_dtype, split, validate, device):
    from correctness.test_unwritten_outputs import poisoned_allocations

    inp = make_grouped_gemm_inputs(t, e, n, k, dtype, seed=t + k + split, device=device)
    weight = Q.quantize_fp8(inp.w, granularity, block_size)
    a_fp8, a_scales = Q.quantize_fp8_act(inp.a, act_group)
    with poisoned_allocations():
        check_parity(a_fp8, a_scales, weight, inp.group_offsets, out_dtype, split_k=split, validate=validate)


@pytest.mark.bad_input
@pytest.mark.servekernels  # about this project's kernels, not the contract
@pytest.mark.parametrize("kwargs", [dict(split_k=0), dict(split_k=5), dict(split_k=3),  # 2 blocks of K
                                    dict(split_k=2, batch_invariant=True), dict(num_sms=-1)])
def test_split_arguments_rejected(kwargs, device):
    inp = make_grouped_gemm_inputs(4, 2, 16, 256, "bfloat16", seed=1, device=device)
    a_fp8, a_scales = Q.quantize_fp8_act(inp.a, 128)
    with pytest.raises(ValueError, match="num_sms" if "num_sms" in kwargs else "split_k"):
        tk.grouped_gemm_fp8(a_fp8, a_scales, Q.quantize_fp8(inp.w, "block", (128, 128)), inp.group_offsets,
                            **kwargs)
