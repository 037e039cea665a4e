"""W4A16 grouped GEMM (Triton) vs the float64 reference on the SAME quantized weights, and the reference's
quantization error vs the unquantized GEMM."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernels.reference as ref
from correctness.impl import Q
from correctness.impl import T as tk
from kernels.ops import Inputs
from kernels.testing.assertions import assert_close
from kernels.testing.diagnosis_experts import grouped_gemm as diagnose_gemm
from kernels.testing.moe_inputs import make_grouped_gemm_inputs
from kernels.testing.tolerances_gemm import extra_roundings, grouped_gemm_tol

# (T, E, N, K, group_size, zero_point, dtype): skewed routing (hot, empty and one-row experts), N off-tile.
CASES = [
    (200, 8, 72, 192, 64, False, "bfloat16"),
    (1, 4, 200, 320, 32, True, "float16"),
    (300, 3, 200, 384, 128, False, "float16"),  # prefill-sized tiles
    (37, 64, 24, 128, 128, True, "float32"),  # E = 64, mostly empty / one-row experts
    (9, 1, 72, 320, 64, True, "bfloat16"),  # E = 1
]


def check_parity(a, weight, offsets, *, out_dtype=None, **plan):
    y = tk.grouped_gemm_int4(a, weight, offsets, out_dtype=out_dtype, **plan)
    expected = ref.grouped_gemm_int4(a, weight, offsets)
    out_dtype = out_dtype or a.dtype
    assert y.dtype == out_dtype and tuple(y.shape) == expected.shape
    # float32 accumulation over K plus the int4 path's own roundings (``extra_roundings``); then the output cast
    tol = grouped_gemm_tol(a, ref.dequantize_int4(weight), offsets.cpu().numpy(), out_dtype,
                           extra_roundings=extra_roundings("int4"))
    inputs = Inputs("grouped_gemm_int4", {}, (a, weight, offsets), {})
    assert_close(y, expected, **tol, name="y", diagnose=lambda *fail: diagnose_gemm(inputs, "y", *fail))


@pytest.mark.parametrize("t,e,n,k,group_size,zero_point,dtype", CASES)
def test_parity_skewed(t, e, n, k, group_size, zero_point, dtype, device):
    inp = make_grouped_gemm_inputs(t, e, n, k, dtype, seed=t + e + k, device=device)
    weight = Q.quantize_int4(inp.w, group_size, zero_point)
    check_parity(inp.a, weight, inp.group_offsets)


def test_strided_activations_and_out_dtype(device):
    inp = make_grouped_gemm_inputs(40, 5, 72, 192, "bfloat16", seed=11, device=device)
    buf = torch.full((40, 256), float("nan"), dtype=torch.bfloat16, device=device)
    buf[:, 32:224] = inp.a
    a = buf[:, 32:224]  # reading outside K would pull in NaN
    check_parity(a, Q.quantize_int4(inp.w, 32, True), inp.group_offsets.long(), out_dtype=torch.float32)


def test_empty_batch(device):
    inp = make_grouped_gemm_inputs(0, 4, 72, 128, "float16", device=device)
    y = tk.grouped_gemm_int4(inp.a, Q.quantize_int4(inp.w, 64), inp.group_offsets)
    assert tuple(y.shape) == (0, 72) and y.dtype == torch.float16


@pytest.mark.host_only("the float64 reference's quantization error: no kernel")
@pytest.mark.parametrize("zero_point", [False, True])
def test_quantization_error_bounded(zero_point):
    """Reference vs the unquantized weights: each weight is within s/2, so |y_q - y| <= sum_k |a_tk| s_nk / 2."""
    inp = make_grouped_gemm_inputs(120, 6, 72, 256, "float32", seed=2)
    weight = ref.quantize_int4(inp.w, 64, zero_point)
    y_q = ref.grouped_gemm_int4(inp.a, weight, inp.group_offsets)
    y = ref.grouped_gemm(inp.a, inp.w, inp.group_offsets)
    a = np.abs(inp.a.double().numpy())
    half_step = np.repeat(weight.scales.double().numpy(), 64, axis=-1) / 2
    offs = inp.group_offsets.numpy()
    for e in range(6):
        lo, hi = offs[e], offs[e + 1]
        bound = a[lo:hi] @ half_step[e].T * (1 + 2.0 ** -20)
        assert (np.abs(y_q[lo:hi] - y[lo:hi]) <= bound).all(), f"expert {e}"
    rel = np.abs(y_q - y).max() / np.abs(y).max()
    print(f"int4 g64 zp={zero_point}: max |y_q - y| / max |y| = {rel:.4f}")
    assert rel > 0


@pytest.mark.bad_input
def test_bad_inputs_raise(device):
    inp = make_grouped_gemm_inputs(20, 4, 24, 128, "float16", seed=1, device=device)
    a, offs = inp.a, inp.group_offsets
    w = Q.quantize_int4(inp.w, 64, True)
    Int4 = ref.Int4Weight
    bad = [
        ((a[:, :64], w, offs), "weight"),  # K mismatch
        ((a.double(), w, offs), "a"),
        ((a, Int4(w.qweight[..., :32], w.scales, w.zeros, 64), offs), "scales"),  # packing does not match scales
        ((a, Int4(w.qweight, w.scales[..., :1], w.zeros, 64), offs), "scales"),
        ((a, Int4(w.qweight, w.scales.double(), w.zeros, 64), offs), "scales"),
        ((a, Int4(w.qweight, w.scales, w.zeros.int(), 64), offs), "zeros"),
        ((a, Int4(w.qweight.to(torch.int8), w.scales, w.zeros, 64), offs), "qweight"),
        ((a, Int4(w.qweight, w.scales, w.zeros, 48), offs), "group_size"),
        ((a, Int4(w.qweight[..., :40], w.scales[..., :1], w.zeros[..., :1], 128), offs), "group_size"),  # K=80
        ((a, inp.w, offs), "weight"),  # a dense tensor is not an Int4Weight
        ((a, w, offs[1:]), "group_offsets"),
        ((a, w, torch.tensor([0, 3, 2, 9, 20], dtype=torch.int32)), "group_offsets"),
        ((a, w, torch.tensor([0, 3, 5, 9, 21], dtype=torch.int32)), "group_offsets"),
        ((a, Int4(w.qweight.to("meta"), w.scales, w.zeros, 64), offs), "qweight"),
    ]
    for args, name in bad:
        with pytest.raises(ValueError, match=name):
            tk.grouped_gemm_int4(*args)
        with pytest.raises(ValueError, match=name):
            ref.grouped_gemm_int4(*args)


@pytest.mark.gpu
def test_parity_bf16_gpu():
    inp = make_grouped_gemm_inputs(1000, 16, 4096 + 72, 2048 + 64, "bfloat16", seed=7, device="cuda")
    weight = Q.quantize_int4(inp.w, 128, True)
    y = tk.grouped_gemm_int4(inp.a, weight, inp.group_offsets)
    expected = ref.grouped_gemm_int4(inp.a, weight, inp.group_offsets)
    tol = grouped_gemm_tol(inp.a, ref.dequantize_int4(weight), inp.group_offsets.cpu().numpy(), torch.bfloat16,
                           extra_roundings=extra_roundings("int4"), accum_unit=2.0 ** -22)
    assert_close(y, expected, **tol, name="y")


@pytest.mark.gpu
def test_packed_stack_past_2_31_bytes_gpu():
    """E * N * K / 2 > 2**31 packed bytes: the last expert's last rows need 64-bit offsets."""
    e, n, k, g = 3, 24576, 65536, 128
    qweight = torch.randint(0, 256, (e, n, k // 2), dtype=torch.uint8, device="cuda")
    scales = torch.rand((e, n, k // g), device="cuda") * 0.01 + 0.001
    weight = ref.Int4Weight(qweight, scales, None, g)
    a = torch.randn(8, k, dtype=torch.bfloat16, device="cuda")
    y = tk.grouped_gemm_int4(a, weight, torch.tensor([0, 0, 0, 8], dtype=torch.int32, device="cuda"))
    tail = ref.Int4Weight(qweight[e - 1:, -64:].contiguous(), scales[e - 1:, -64:].contiguous(), None, g)
    one = torch.tensor([0, 8], dtype=torch.int32, device="cuda")
    expected = ref.grouped_gemm_int4(a, tail, one)
    tol = grouped_gemm_tol(a, ref.dequantize_int4(tail), one.cpu().numpy(), torch.bfloat16,
                           extra_roundings=extra_roundings("int4"), accum_unit=2.0 ** -22)
    assert_close(y[:, -64:], expected, **tol, name="y[:, -64:]")


def test_weight_views_with_poisoned_padding(device):
    """qweight, scales and zeros as slices of bigger buffers (non-contiguous); the scales' padding is NaN, so a
    scale read for a column past N, or from the wrong group, shows up as NaN or a mismatch."""
    t, e, n, k, g = 50, 3, 40, 256, 64
    inp = make_grouped_gemm_inputs(t, e, n, k, "float16", seed=8, device=device)
    w = Q.quantize_int4(inp.w, g, True)
    qbuf = torch.randint(0, 256, (e, n + 8, k // 2 + 16), dtype=torch.uint8, device=device)
    sbuf = torch.full((e, n + 8, k // g + 3), float("nan"), device=device)
    zbuf = torch.randint(0, 16, (e, n + 8, k // g + 3), dtype=torch.uint8, device=device)
    qbuf[:, 4:4 + n, 16:] = w.qweight
    sbuf[:, 4:4 + n, 3:] = w.scales
    zbuf[:, 4:4 + n, 3:] = w.zeros
    view = ref.Int4Weight(qbuf[:, 4:4 + n, 16:], sbuf[:, 4:4 + n, 3:], zbuf[:, 4:4 + n, 3:], g)
    assert not view.qweight.is_contiguous() and not view.scales.is_contiguous()
    check_parity(inp.a, view, inp.group_offsets)


@pytest.mark.parametrize("layout", ["group_major", "sliced"])
def test_zero_points_with_strides_of_their_own(layout, device):
    """Zero points laid out unlike the scales: group-major (``[E, G, N]`` storage seen as ``[E, N, G]``) or a
    slice with other padding than the scales'. A kernel that indexes the zeros with the scales' strides reads
    other groups' and columns' zero points."""
    t, e, n, k, g = 30, 3, 40, 256, 32
    inp = make_grouped_gemm_inputs(t, e, n, k, "float16", seed=13, device=device)
    w = Q.quantize_int4(inp.w, g, True)
    if layout == "group_major":
        zeros = w.zeros.transpose(1, 2).contiguous().transpose(1, 2)
    else:
        zbuf = torch.randint(0, 16, (e + 1, n + 5, 2 * (k // g) + 1), dtype=torch.uint8, device=device)
        zbuf[1:, 5:, 1::2] = w.zeros
        zeros = zbuf[1:, 5:, 1::2]
    assert torch.equal(zeros, w.zeros) and zeros.stride() != w.scales.stride()
    check_parity(inp.a, ref.Int4Weight(w.qweight, w.scales, zeros, g), inp.group_offsets)


@given(sizes=st.lists(st.integers(0, 30), min_size=1, max_size=7), n=st.integers(1, 40),
       groups=st.integers(1, 3), group_size=st.sampled_from([32, 64, 128]), zero_point=st.booleans(),
       seed=st.integers(0, 2 ** 16))
@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_any_routing(sizes, n, groups, group_size, zero_point, seed, device):
    k = groups * group_size
    inp = make_grouped_gemm_inputs(sum(sizes), len(sizes), n, k, "float32", seed=seed, sizes=sizes, device=device)
    weight = Q.quantize_int4(inp.w, group_size, zero_point)
    if sum(sizes) == 0:
        assert tuple(tk.grouped_gemm_int4(inp.a, weight, inp.group_offsets).shape) == (0, n)
        return
    check_parity(inp.a, weight, inp.group_offsets)



# --- split-K (kernels.triton.gemm_configs.split_k) --------------------------------------------------------
# Forced slice counts at small shapes: scale groups not a multiple of the split (uneven slices), empty experts,
# float32 / float16 / bfloat16, the prefill tiles. Each runs under poisoned allocations: the float32 workspace
# starts as NaN, so a partial never written (or a row of y never reduced) fails. The tolerance is the unsplit
# one: summing K as S slice sums and then the S partials in order is another summation tree over the same
# terms, whose error bound (gamma of the terms added) is no larger.
SPLIT_CASES = [
    (13, 5, 72, 320, 32, True, "bfloat16", None, 3),  # 10 groups -> slices of 3, 3, 4
    (6, 8, 40, 192, 64, False, "float16", torch.float32, 2),  # 3 groups -> 1, 2; 8 experts for 6 rows
    (9, 3, 24, 128, 32, False, "float32", None, 4),  # one group per slice
    (300, 3, 200, 384, 128, False, "float16", None, 3),  # prefill-sized tiles, split when forced
]


@pytest.mark.servekernels  # about this project's kernels, not the contract
@pytest.mark.parametrize("t,e,n,k,group_size,zero_point,dtype,out_dtype,split", SPLIT_CASES)
@pytest.mark.parametrize("validate", [True, False])
def test_split_k_parity(t, e, n, k, group_size, zero_point, dtype, out_dtype, split, validate, device):
    from correctness.test_unwritten_outputs import poisoned_allocations

    inp = make_grouped_gemm_inputs(t, e, n, k, dtype, seed=t + k + split, device=device)
    weight = Q.quantize_int4(inp.w, group_size, zero_point)
    with poisoned_allocations():
        check_parity(inp.a, weight, inp.group_offsets, out_dtype=out_dtype, split_k=split, validate=validate)


@pytest.mark.servekernels  # about this project's kernels, not the contract
def test_split_k_plan_launches_the_slices_it_picks(device):
    """With K = 2048 (2 x MIN_SPLIT_K) and a 2-program grid the plan cuts 2 slices by itself (grid z = 2, then
    the in-order reduction); num_sms=1 leaves no slot to fill (one launch, z = 1); both match the reference."""
    from correctness.test_unwritten_outputs import poisoned_allocations
    from kernels.runtime import interpreter_enabled
    from roofline.counting import count_traffic

    if not interpreter_enabled():
        pytest.skip("launch grids are recorded under the Triton interpreter")
    inp = make_grouped_gemm_inputs(5, 2, 40, 2048, "bfloat16", seed=3, device=device, sizes=[3, 2])
    weight = Q.quantize_int4(inp.w, 128)
    for num_sms, grids in ((132, [(2, 1, 2), (5, 1, 1)]), (1, [(2, 1, 1)])):
        with poisoned_allocations(), count_traffic() as counter:
            check_parity(inp.a, weight, inp.group_offsets, num_sms=num_sms)
        assert [launch.grid for launch in counter.launches] == grids, num_sms


@pytest.mark.servekernels  # about this project's kernels, not the contract
@pytest.mark.host_only("the split-K plan: arithmetic only")
def test_split_k_plan():
    from kernels.triton.gemm_configs import CONFIGS, MAX_SPLIT_K, split_k

    cfg = CONFIGS[("int4", "decode")]
    assert cfg.blocks_per_sm == 2
    assert split_k(cfg, 128, 14336, 112, 132) == 2  # Mixtral w2 at T = 16: 8 x 16 bound programs, 264 slots
    assert split_k(cfg, 80, 14336, 112, 132) == 3
    assert split_k(cfg, 80, 14336, 112, 132, batch_invariant=True) == 1
    assert split_k(cfg, 160, 14336, 112, 132) == 1  # a split would pass one wave
    assert split_k(cfg, 10, 14336, 112, 132) == MAX_SPLIT_K
    assert split_k(cfg, 10, 2048, 16, 132) == 2  # slices of at least MIN_SPLIT_K
    assert split_k(cfg, 10, 512, 4, 132) == 1
    assert split_k(cfg, 10, 512, 4, 132, split=3) == 3


@pytest.mark.bad_input
@pytest.mark.servekernels  # about this project's kernels, not the contract
@pytest.mark.parametrize("kwargs,name", [(dict(split_k=0), "split_k"), (dict(split_k=5), "split_k"),
                                         (dict(split_k=True), "split_k"), (dict(split_k="2"), "split_k"),
                                         (dict(split_k=3), "split_k"),  # 2 groups: 3 slices cannot all have one
                                         (dict(split_k=2, batch_invariant=True), "split_k"),
                                         (dict(num_sms=0), "num_sms"), (dict(num_sms=2.0), "num_sms")])
def test_split_arguments_rejected(kwargs, name, device):
    inp = make_grouped_gemm_inputs(4, 2, 16, 128, "float16", seed=1, device=device)
    with pytest.raises(ValueError, match=name):
        tk.grouped_gemm_int4(inp.a, Q.quantize_int4(inp.w, 64), inp.group_offsets, **kwargs)
