"""W4A16 grouped GEMM: float16 / bfloat16 / float32 activations times packed int4 weights, one launch.

    y[rows of e] = a[rows of e] @ dequant(w[e]).T,   dequant(w)[n, k] = (nibble[n, k] - z[n, g]) * s[n, g]

The weight is never dequantized to memory. Each K step loads the packed ``BLOCK_K / 2 x BLOCK_N`` byte tile
once (byte j holds k = 2j in its low nibble, 2j + 1 in its high one), splits it into the even-k and odd-k
nibble tiles in registers and subtracts the zero point (8 when symmetric), giving small integers -15..15 that
every activation dtype holds exactly. The activations are loaded as the matching even and odd columns (each
element once), so a step is two ``mma``s. BLOCK_K divides ``group_size``: the K steps of one scale group sum
into a float32 partial product that the group scale multiplies once per column, and each group's scale (and
zero point) is loaded once. Float32 accumulation throughout.
Rows -> experts come from the shared tile table (``kernels.triton.dense_gemm``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.nvtx import annotate
from kernels.validate import torch_arguments
from kernels.reference.gemm import check_int4
from kernels.triton.common import cast_rtne, check_launch_device, mma
from kernels.triton.gemm_configs import select_config
from kernels.triton.dense_gemm import TORCH_OUT, group_tile_table, load_tile, row_tile_count


@triton.jit
def _grouped_gemm_int4_kernel(
    a_ptr, q_ptr, s_ptr, z_ptr, y_ptr, tiles_ptr, num_tiles, N, K,
    stride_am, stride_ak,
    stride_qe, stride_qn, stride_qk,
    stride_se, stride_sn, stride_sg,
    stride_ze, stride_zn, stride_zg,
    stride_ym, stride_yn,
    GROUP: tl.constexpr, HAS_ZEROS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e, first, end = load_tile(tiles_ptr, num_tiles, pid_m)
    if first >= end:
        return  # a surplus entry of a bound-sized tile table
    e = e.to(tl.int64)
    rows = first + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    kh = tl.arange(0, BLOCK_K // 2)  # packed byte j of the step holds k = 2j (low nibble) and 2j + 1 (high)
    row_ok = rows < end
    col_ok = cols < N
    cols64 = cols.to(tl.int64)
    # 64-bit offsets: the packed stack [E, N, K / 2] and a [T, K] can pass 2**31 elements.
    a_even = a_ptr + rows.to(tl.int64)[:, None] * stride_am + (2 * kh)[None, :] * stride_ak  # [BM, BK / 2]
    a_odd = a_even + stride_ak
    q_ptrs = q_ptr + e * stride_qe + cols64[None, :] * stride_qn + kh[:, None] * stride_qk  # [BK / 2, BN]
    s_ptrs = s_ptr + e * stride_se + cols64 * stride_sn
    z_ptrs = z_ptr + e * stride_ze + cols64 * stride_zn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for g in range(0, K // GROUP):  # GROUP divides K: no K tail
        # one scale (and zero point) load per group; the group's K steps share them
        scale = tl.load(s_ptrs + g * stride_sg, mask=col_ok, other=0.0)
        if HAS_ZEROS:
            zero = tl.load(z_ptrs + g * stride_zg, mask=col_ok, other=0).to(tl.float32)[None, :]
        else:
            zero = 8.0
        partial = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for _ in range(0, GROUP, BLOCK_K):  # BLOCK_K divides GROUP: a step never spans two groups
            packed = tl.load(q_ptrs, mask=col_ok[None, :], other=0)  # each packed byte loaded once
            w_lo = ((packed & 0xF).to(tl.float32) - zero).to(a_ptr.dtype.element_ty)  # even k
            w_hi = ((packed >> 4).to(tl.float32) - zero).to(a_ptr.dtype.element_ty)  # odd k
            partial = mma(tl.load(a_even, mask=row_ok[:, None], other=0.0), w_lo, partial)
            partial = mma(tl.load(a_odd, mask=row_ok[:, None], other=0.0), w_hi, partial)
            a_even += BLOCK_K * stride_ak
            a_odd += BLOCK_K * stride_ak
            q_ptrs += (BLOCK_K // 2) * stride_qk
        acc += partial * scale[None, :]
    y_ptrs = y_ptr + rows.to(tl.int64)[:, None] * stride_ym + cols[None, :] * stride_yn
    tl.store(y_ptrs, cast_rtne(acc, y_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@annotate("grouped_gemm_int4")
@torch_arguments
def grouped_gemm_int4(a, weight, group_offsets, *, out_dtype=None, batch_invariant=False, validate=True):
    """``a [T, K]`` (float16/bfloat16/float32), ``weight`` an ``Int4Weight`` ``[E, N, K]`` -> ``[T, N]`` in
    ``out_dtype`` (default a's dtype). ``batch_invariant``: one tile config for every T (see gemm_configs).
    ``validate=False``: no group offset is read on the host (bound-sized grid, see ``kernels.triton.dense_gemm``)."""
    offs, e, n, k, out_name = check_int4(a, weight, group_offsets, out_dtype, validate)
    check_launch_device("a", a)
    t = int(a.shape[0])
    y = torch.empty((t, n), dtype=TORCH_OUT[out_name], device=a.device)
    if t == 0 or n == 0:
        return y
    group = int(weight.group_size)
    cfg = select_config("int4", t, e, n, k, batch_invariant=batch_invariant)
    block_k = min(cfg.BLOCK_K, group)  # a K step must stay inside one scale group
    num_tiles = row_tile_count(offs, t, e, cfg.BLOCK_M)
    tiles = group_tile_table(group_offsets, cfg.BLOCK_M, num_tiles, a.device)
    qw, sc = weight.qweight, weight.scales
    zr = weight.zeros if weight.zeros is not None else sc  # a placeholder pointer when symmetric (never read)
    grid = lambda META: (num_tiles, triton.cdiv(n, META["BLOCK_N"]))  # noqa: E731
    _grouped_gemm_int4_kernel[grid](
        a, qw, sc, zr, y, tiles, num_tiles, n, k,
        a.stride(0), a.stride(1),
        qw.stride(0), qw.stride(1), qw.stride(2),
        sc.stride(0), sc.stride(1), sc.stride(2),
        zr.stride(0), zr.stride(1), zr.stride(2),
        y.stride(0), y.stride(1),
        GROUP=group, HAS_ZEROS=weight.zeros is not None,
        BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, BLOCK_K=block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return y
