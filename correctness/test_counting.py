"""Counting hooks on tiny kernels of our own: exact bytes, masked-off lanes not counted, programs, restore."""
from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from kernels.runtime import interpreter_enabled
from roofline.counting import count_traffic

pytestmark = [pytest.mark.skipif(not interpreter_enabled(), reason="counting hooks patch the Triton interpreter"),
              pytest.mark.interpreter("counting hooks patch the Triton interpreter: CPU tensors")]


@triton.jit
def _scale_copy(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=m) * 2, mask=m)


@triton.jit
def _gather_rows(x_ptr, idx_ptr, y_ptr, D: tl.constexpr):
    """y[i] = x[idx[i]] with an unmasked scalar index load: the same row gathered twice is read twice."""
    i = tl.program_id(0)
    row = tl.load(idx_ptr + i)
    d = tl.arange(0, D)
    tl.store(y_ptr + i * D + d, tl.load(x_ptr + row * D + d))


@triton.jit
def _atomic_sum(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.atomic_add(out_ptr + offs * 0, tl.load(x_ptr + offs, mask=m, other=0.0), mask=m)


def test_exact_bytes_masked_lanes_not_counted_and_grid():
    x = torch.randn(100, dtype=torch.float16)
    y = torch.empty_like(x)
    with count_traffic() as c:
        _scale_copy[(triton.cdiv(100, 32),)](x, y, 100, BLOCK=32)
    torch.testing.assert_close(y, x * 2)  # the hooks do not change what the kernel does
    assert c.load_bytes == 100 * 2 and c.store_bytes == 100 * 2  # not 128 lanes: 28 are masked off
    assert c.launches[0].masked_off_bytes == 2 * 28 * 2
    assert c.programs == 4 and c.launches[0].grid == (4, 1, 1) and c.kernels() == ["_scale_copy"]
    assert c.by_argument("load") == {"x_ptr": 200} and c.by_argument("store") == {"y_ptr": 200}


def test_grid_lambda_and_2d_grid_programs():
    x = torch.randn(64)
    y = torch.empty_like(x)
    with count_traffic() as c:
        _scale_copy[lambda META: (triton.cdiv(64, META["BLOCK"]),)](x, y, 64, BLOCK=16)
        _scale_copy[(2, 3)](x, y, 64, BLOCK=32)  # 6 programs, each copies the same 32 elements
    assert [launch.programs for launch in c.launches] == [4, 6]
    assert c.programs == 10
    assert c.load_bytes == 64 * 4 + 2 * 3 * 32 * 4


def test_reread_counted_footprint_not_and_strided_views_attributed():
    base = torch.randn(2, 5, 8)  # x = base[1]: a view at an offset into a bigger buffer
    x = base[1]
    idx = torch.tensor([3, 3, 0], dtype=torch.int32)
    y = torch.empty(3, 8)
    with count_traffic(unique=True) as c:
        _gather_rows[(3,)](x, idx, y, D=8)
    torch.testing.assert_close(y, x[[3, 3, 0]])
    loads = c.by_argument("load")
    assert loads == {"x_ptr": 3 * 8 * 4, "idx_ptr": 3 * 4}  # row 3 read twice: traffic counts both
    assert c.unique_bytes("x_ptr") == 2 * 8 * 4  # the footprint counts it once
    assert c.by_argument("store") == {"y_ptr": 3 * 8 * 4}


def test_atomics_counted_separately():
    x = torch.ones(10)
    out = torch.zeros(1)
    with count_traffic() as c:
        _atomic_sum[(1,)](x, out, 10, BLOCK=16)
    assert float(out) == 10.0
    assert c.atomic_bytes == 10 * 4 and c.load_bytes == 10 * 4
    assert c.total_bytes == 10 * 4 + 2 * 10 * 4  # an RMW lane reads and writes


def test_patches_restored_even_on_error_and_nesting_refused():
    from triton.runtime import interpreter as interp

    before = (interp.InterpreterBuilder.create_masked_load, interp.GridExecutor.__call__)
    with pytest.raises(ZeroDivisionError):
        with count_traffic():
            1 / 0
    assert (interp.InterpreterBuilder.create_masked_load, interp.GridExecutor.__call__) == before
    with count_traffic():
        with pytest.raises(RuntimeError, match="already counting"):
            with count_traffic():
                pass
    x = torch.randn(8)
    y = torch.empty_like(x)
    _scale_copy[(1,)](x, y, 8, BLOCK=8)  # runs normally with no counter installed
    torch.testing.assert_close(y, 2 * x)


# ------------------------------------------------------------------ the suite's own kernels, counted on a CPU

def _kernel_or_fail(name):
    """The kernels these checks are about exist in this build; a missing one is a failure, not a skip."""
    import kernels.triton as kt

    return getattr(kt, name)


def test_decode_reads_each_kv_byte_once_per_kv_head():
    from kernels.testing.paged import make_paged_batch

    decode = _kernel_or_fail("paged_decode")
    seq_lens = [37, 64, 5, 130]
    hq, hkv, d = 8, 2, 64  # GQA 4: a kernel that re-reads K/V per query head would count 4x
    b = make_paged_batch(seq_lens, num_q_heads=hq, num_kv_heads=hkv, head_dim=d, block_size=16, dtype="bfloat16")
    with count_traffic(unique=True) as c:
        decode(*b.decode_args())
    owned = sum(seq_lens) * hkv * d * 2  # bytes of K (and of V) the batch owns: poisoned slots excluded
    loads = c.by_argument("load")
    for cache in (b.k_cache, b.v_cache):
        (name,) = c.argument_of(cache)
        assert loads[name] == owned, f"{name}: {loads[name]} bytes loaded, {owned} owned"
        assert c.unique_bytes(name) == owned  # and every owned byte exactly once


def test_split_kv_decode_of_one_long_sequence_fills_an_h100():
    from kernels.ops.models import LLAMA3_8B
    from kernels.ops.paged_decode import decode_case
    from roofline.counting import launches_only
    from roofline.lazy_inputs import lazy_inputs as _lazy_inputs

    decode = _kernel_or_fail("paged_decode")
    case = decode_case("b1-ctx32k", 1, 32768, LLAMA3_8B)
    args, kwargs = _lazy_inputs(case)  # stride-0 caches: full size, no memory, nothing executed
    with launches_only() as c:
        decode(*args, **kwargs)
    first = c.launches[0]
    assert first.programs >= 132, f"{first.kernel} launches {first.programs} programs for 1 x 32k: an H100 has 132 SMs"


@triton.jit
def _unpack_like(x_ptr, y_ptr, BLOCK: tl.constexpr):
    """Loads x[k // 2] for k in 0..BLOCK: each byte twice in ONE access (the int4 nibble pattern)."""
    k = tl.arange(0, BLOCK)
    b = tl.load(x_ptr + k // 2)
    tl.store(y_ptr + k, b)


def test_duplicate_addresses_within_one_access_count_once():
    x = torch.arange(8, dtype=torch.uint8)
    y = torch.empty(16, dtype=torch.uint8)
    with count_traffic() as c:
        _unpack_like[(1,)](x, y, BLOCK=16)
        _unpack_like[(1,)](x, y, BLOCK=16)
    assert torch.equal(y, x.repeat_interleave(2))
    assert c.by_argument("load") == {"x_ptr": 2 * 8}  # 8 bytes per access (a GPU merges the lanes), 2 accesses
    assert sum(launch.lane_bytes for launch in c.launches) == 2 * (16 + 16)  # per-lane figure: loads + stores


def test_sampled_counting_runs_few_programs_and_estimates_the_total():
    n = 1000  # 63 programs of 16 elements, the last one masked down to 8
    x = torch.randn(n)
    y = torch.zeros(n)
    with count_traffic(max_programs=9, seed=3) as c:
        _scale_copy[(triton.cdiv(n, 16),)](x, y, n, BLOCK=16)
    launch = c.launches[0]
    assert launch.programs == 63 and launch.executed == 9
    assert (y != 0).sum() <= 9 * 16  # skipped programs wrote nothing
    # uniform work: the stratified estimate is exact up to the one short program
    assert abs(c.load_bytes - n * 4) <= 7 * 8 * 4
    small = torch.randn(40)
    with count_traffic(max_programs=9) as c:  # few programs: all run, exact
        _scale_copy[(3,)](small, torch.empty(40), 40, BLOCK=16)
    assert c.launches[0].executed == 3 and c.load_bytes == 40 * 4


def test_sampled_decode_estimate_matches_exact_count():
    from kernels.testing.paged import make_paged_batch

    decode = _kernel_or_fail("paged_decode")
    b = make_paged_batch([300, 17, 129, 64, 250, 5], num_q_heads=8, num_kv_heads=2, head_dim=64, block_size=16,
                         dtype="bfloat16")
    with count_traffic() as exact:
        decode(*b.decode_args())
    with count_traffic(max_programs=6, seed=1) as sampled:
        decode(*b.decode_args())
    assert sampled.programs == exact.programs
    assert sum(launch.executed for launch in sampled.launches) < exact.programs
    assert sampled.total_bytes == pytest.approx(exact.total_bytes, rel=0.35)  # unbiased; 6 strata of ragged work


@pytest.mark.parametrize("case", ["grouped_gemm", "grouped_gemm_int4", "grouped_gemm_fp8"])
def test_surplus_programs_of_a_shape_sized_grid_move_no_data(case):
    """``validate=False`` sizes a GEMM's row-tile grid from shapes alone (``max_row_tiles``): the surplus programs
    must read their tile-table entry and leave. Every argument but the table moves the bytes of the validated,
    exactly sized launch; a surplus program that reads its expert's weights (masked rows make its output right)
    shows here as extra weight traffic."""
    from correctness.launch_cases import CASES

    op, args, kwargs, hints = CASES[case]("cpu")
    fn = _kernel_or_fail(op)
    counted = {}
    for validate in (True, False):
        with count_traffic() as c:
            fn(*args, **kwargs, **hints, validate=validate)
        counted[validate] = c
    exact, bound = counted[True], counted[False]
    assert bound.programs > exact.programs, "the shape bound has no surplus tile: the case proves nothing"
    loads = [{k: v for k, v in c.by_argument("load").items() if k != "tiles_ptr"} for c in (exact, bound)]
    assert loads[1] == loads[0], f"validate=False loads {loads[1]}, the exact grid {loads[0]}"
    assert bound.by_argument("store") == exact.by_argument("store")
