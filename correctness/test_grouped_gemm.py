"""Dense grouped GEMM (Triton) vs the float64 reference, and the shared tile -> group table."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernels.reference as ref
from correctness.impl import T as tk
from kernels.testing.assertions import assert_close
from kernels.testing.moe_inputs import make_grouped_gemm_inputs, offsets_from_sizes, skewed_group_sizes
from kernels.testing.tolerances_gemm import grouped_gemm_tol
from kernels.triton.ops.grouped_gemm import group_tile_table, num_row_tiles

# (T, E, N, K, dtype): skewed routing from moe_inputs (hot / empty / one-row experts); K, N off every tile size.
CASES = [
    (200, 8, 72, 192, "bfloat16"),
    (1, 4, 200, 320, "float16"),
    (37, 64, 24, 40, "float32"),  # many experts, most empty or one row
    (300, 3, 200, 320, "float16"),  # prefill-sized tiles
    (5, 1, 72, 192, "bfloat16"),  # E = 1
]


def run_and_compare(x, w, offsets, *, out_dtype=None):
    y = tk.grouped_gemm(x, w, offsets, out_dtype=out_dtype)
    expected = ref.grouped_gemm(x, w, offsets)
    out_dtype = out_dtype or x.dtype
    assert y.dtype == out_dtype and tuple(y.shape) == expected.shape
    # float32 accumulation over K (+1 rounding for float32 products), then the cast to out_dtype.
    assert_close(y, expected, **grouped_gemm_tol(x, w, offsets.cpu().numpy(), out_dtype), name="y")
    return y


@pytest.mark.parametrize("t,e,n,k,dtype", CASES)
def test_parity_skewed(t, e, n, k, dtype, device):
    inp = make_grouped_gemm_inputs(t, e, n, k, dtype, seed=t + e, device=device)
    assert (inp.sizes == 0).any() or e < 3, "the routing must include an empty expert"
    run_and_compare(inp.a, inp.w.to(inp.a.dtype), inp.group_offsets)


def test_strided_operands_and_poisoned_padding(device):
    """a is a column slice of a wider buffer, w a slice of a bigger stack stored K-major; the parts outside the
    slices hold NaN, so reading past K or N anywhere shows up as NaN in the output."""
    t, e, n, k = 45, 5, 40, 96
    inp = make_grouped_gemm_inputs(t, e, n, k, "float16", seed=3, device=device)
    a_buf = torch.full((t, k + 24), float("nan"), dtype=torch.float16, device=device)
    a_buf[:, 8:8 + k] = inp.a
    w_buf = torch.full((e, k + 16, n + 8), float("nan"), dtype=torch.float16, device=device)  # [E, K', N'] K-major
    w_buf[:, :k, :n] = inp.w.to(torch.float16).transpose(1, 2)
    a, w = a_buf[:, 8:8 + k], w_buf[:, :k, :n].transpose(1, 2)
    assert not a.is_contiguous() and w.stride(-1) != 1
    run_and_compare(a, w, inp.group_offsets)


def test_out_dtype_and_int64_offsets(device):
    inp = make_grouped_gemm_inputs(64, 6, 72, 192, "bfloat16", seed=5, device=device)
    offs = inp.group_offsets.to(torch.int64)
    run_and_compare(inp.a, inp.w.to(torch.bfloat16), offs, out_dtype=torch.float32)


def test_empty_batch(device):
    inp = make_grouped_gemm_inputs(0, 3, 40, 64, "float16", device=device)
    y = tk.grouped_gemm(inp.a, inp.w.half(), inp.group_offsets)
    assert tuple(y.shape) == (0, 40) and y.dtype == torch.float16


@pytest.mark.host_only("tile tables and group sizes built by torch/numpy on the host: no kernel")
@pytest.mark.parametrize("sizes", [[0, 0, 5, 0, 17, 1, 0], [33], [0, 1, 0], [16, 16, 15, 17]])
@pytest.mark.servekernels  # about this project's kernels, not the contract
def test_tile_table(sizes):
    """Row tiles list every expert's rows back to back in BLOCK_M pieces; empty experts own no tile."""
    block_m = 16
    offs = offsets_from_sizes(sizes)
    num = num_row_tiles(offs.numpy(), block_m)
    table = group_tile_table(offs, block_m, num, "cpu").numpy()
    expected = [(e, start, int(offs[e + 1])) for e in range(len(sizes))
                for start in range(int(offs[e]), int(offs[e + 1]), block_m)]
    assert [tuple(int(v) for v in col) for col in table.T] == expected


@pytest.mark.bad_input
def test_bad_inputs_raise(device):
    inp = make_grouped_gemm_inputs(20, 4, 24, 64, "float16", seed=1, device=device)
    a, w, offs = inp.a, inp.w.half(), inp.group_offsets
    bad = [
        ((a[:, :32], w, offs), "w"),  # K mismatch
        ((a, w.float(), offs), "w"),  # dtype mismatch
        ((a[0], w, offs), "a"),  # 1-D activations
        ((a.double(), w.double(), offs), "a"),  # float64 activations
        ((a, w[0], offs), "w"),  # 2-D weight stack
        ((a, w, offs[:-1]), "group_offsets"),  # wrong length
        ((a, w, offs + 1), "group_offsets"),  # does not start at 0
        ((a, w, torch.tensor([0, 12, 5, 15, 20], dtype=torch.int32)), "group_offsets"),  # not monotone
        ((a, w, torch.tensor([0, 5, 5, 10, 19], dtype=torch.int32)), "group_offsets"),  # does not end at T
        ((a, w, offs.float()), "group_offsets"),  # not integers
        ((a, w.to("meta"), offs), "w"),  # another device
    ]
    for args, name in bad:
        with pytest.raises(ValueError, match=name):
            tk.grouped_gemm(*args)
        with pytest.raises(ValueError, match=name):
            ref.grouped_gemm(*args)
    with pytest.raises(ValueError, match="out_dtype"):
        tk.grouped_gemm(a, w, offs, out_dtype=torch.int32)


@pytest.mark.gpu
def test_parity_bf16_gpu():
    inp = make_grouped_gemm_inputs(1000, 16, 4096 + 72, 2048 + 64, "bfloat16", seed=7, device="cuda")
    y = tk.grouped_gemm(inp.a, inp.w.bfloat16(), inp.group_offsets)
    expected = ref.grouped_gemm(inp.a, inp.w.bfloat16(), inp.group_offsets)
    tol = grouped_gemm_tol(inp.a, inp.w.bfloat16(), inp.group_offsets.cpu().numpy(), torch.bfloat16,
                           accum_unit=2.0 ** -22)
    assert_close(y, expected, **tol, name="y")


@pytest.mark.gpu
def test_weight_stack_past_2_31_elements_gpu():
    """E * N * K > 2**31: rows routed to the last expert read weight elements past 2**31 (64-bit offsets)."""
    e, n, k = 3, 24576, 32768
    w = torch.empty((e, n, k), dtype=torch.bfloat16, device="cuda")
    w[e - 1].normal_(0.0, k ** -0.5)
    a = torch.randn(8, k, dtype=torch.bfloat16, device="cuda")
    offs = torch.tensor([0, 0, 0, 8], dtype=torch.int32, device="cuda")
    y = tk.grouped_gemm(a, w, offs)
    tail = w[e - 1:, -64:].contiguous()  # the last 64 output channels: the highest weight offsets
    one = torch.tensor([0, 8], dtype=torch.int32, device="cuda")
    expected = ref.grouped_gemm(a, tail, one)
    tol = grouped_gemm_tol(a, tail, one.cpu().numpy(), torch.bfloat16, accum_unit=2.0 ** -22)
    assert_close(y[:, -64:], expected, **tol, name="y[:, -64:]")


@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=9), n=st.integers(1, 40), k=st.integers(1, 70),
       seed=st.integers(0, 2 ** 16))
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_any_routing(sizes, n, k, seed, device):
    """Any group sizes (runs of empty experts, single rows, T = 0), any N and K: float32 parity."""
    inp = make_grouped_gemm_inputs(sum(sizes), len(sizes), n, k, "float32", seed=seed, sizes=sizes, device=device)
    if sum(sizes) == 0:
        assert tuple(tk.grouped_gemm(inp.a, inp.w, inp.group_offsets).shape) == (0, n)
        return
    run_and_compare(inp.a, inp.w, inp.group_offsets)


@pytest.mark.host_only("tile tables and group sizes built by torch/numpy on the host: no kernel")
@pytest.mark.parametrize("t,e", [(200, 8), (37, 64), (300, 3), (16, 4), (1, 4), (0, 3), (5, 1)])
def test_skewed_routing_generator(t, e):
    """The default routing really is skewed: a hot expert, empty experts, one-row experts (when T and E allow)."""
    sizes = skewed_group_sizes(t, e, np.random.default_rng(t + e))
    assert sizes.sum() == t and len(sizes) == e and (sizes >= 0).all()
    if e >= 3 and t >= 8:
        assert (sizes == 0).any() and sizes.max() >= t / 4
    if e >= 4 and t >= 8:
        assert (sizes == 1).any()
    offs = offsets_from_sizes(sizes)
    assert offs.dtype == torch.int32 and offs[0] == 0 and offs[-1] == t
