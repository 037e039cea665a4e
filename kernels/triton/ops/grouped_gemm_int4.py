"""W4A16 grouped GEMM: float16 / bfloat16 / float32 activations times packed int4 weights, one launch.

    y[rows of e] = a[rows of e] @ dequant(w[e]).T,   dequant(w)[n, k] = (nibble[n, k] - z[n, g]) * s[n, g]

The weight is never dequantized to memory. Each K step loads the packed ``BLOCK_K / 2 x BLOCK_N`` byte tile
once (byte j holds k = 2j in its low nibble, 2j + 1 in its high one), splits it into the even-k and odd-k
nibble tiles in registers and subtracts the zero point (8 when symmetric), giving small integers -15..15 that
every activation dtype holds exactly. The activations are loaded as the matching even and odd columns (each
element once), so a step is two ``mma``s. BLOCK_K divides ``group_size``: the K steps of one scale group sum
into a float32 partial product that the group scale multiplies once per column, and each group's scale (and
zero point) is loaded once. Float32 accumulation throughout.
Rows -> experts come from the shared tile table (``kernels.triton.ops.grouped_gemm``). A split-K plan
(``kernels.triton.gemm_configs.split_k``: decode-sized grids under one wave) gives program ``(i, j, s)`` the
scale groups ``[s * G // S, (s + 1) * G // S)`` of the ``G = K / group_size``; its float32 partial goes to slice s
of a workspace that ``sum_splits`` adds up in order.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.nvtx import annotate
from kernels.validate import torch_arguments
from kernels.reference.gemm import check_int4
from kernels.triton.common import check_launch_device, device_sms, mma
from kernels.triton.gemm_configs import check_split, select_config
from kernels.triton.gemm_configs import split_k as plan_split_k
from kernels.triton.ops.grouped_gemm import (TORCH_OUT, group_tile_table, load_tile, max_row_tiles, row_tile_count,
                                       split_workspace, sum_splits)


@triton.jit
def _grouped_gemm_int4_kernel(
    a_ptr, q_ptr, s_ptr, z_ptr, y_ptr, tiles_ptr, num_tiles, N, K, num_splits,
    stride_am, stride_ak,
    stride_qe, stride_qn, stride_qk,
    stride_se, stride_sn, stride_sg,
    stride_ze, stride_zn, stride_zg,
    stride_ys, stride_ym, stride_yn,
    GROUP: tl.constexpr, HAS_ZEROS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    e, first, end = load_tile(tiles_ptr, num_tiles, pid_m)
    if first >= end:
        return  # a surplus entry of a bound-sized tile table
    e = e.to(tl.int64)
    num_groups = K // GROUP  # GROUP divides K: no K tail
    g_lo = pid_k * num_groups // num_splits  # this split's scale groups [g_lo, g_hi)
    g_hi = (pid_k + 1) * num_groups // num_splits
    k_lo = g_lo * GROUP
    rows = first + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    kh = tl.arange(0, BLOCK_K // 2)  # packed byte j of the step holds k = 2j (low nibble) and 2j + 1 (high)
    row_ok = rows < end
    col_ok = cols < N
    cols64 = cols.to(tl.int64)
    # 64-bit offsets: the packed stack [E, N, K / 2] and a [T, K] can pass 2**31 elements.
    a_even = a_ptr + rows.to(tl.int64)[:, None] * stride_am + (k_lo + 2 * kh)[None, :] * stride_ak  # [BM, BK / 2]
    a_odd = a_even + stride_ak
    q_ptrs = (q_ptr + e * stride_qe + cols64[None, :] * stride_qn
              + (k_lo // 2 + kh)[:, None] * stride_qk)  # [BK / 2, BN]
    s_ptrs = s_ptr + e * stride_se + cols64 * stride_sn
    z_ptrs = z_ptr + e * stride_ze + cols64 * stride_zn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for g in range(g_lo, g_hi):
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
    # The store's offsets and mask are built here, from scalars, not from the loop's rows / row_ok / col_ok:
    # reusing those made the compiler lay them out for the store before the K loop and keep them live through
    # it (a float32 y at BLOCK 32 x 256, 8 warps: 148 registers on sm_90, one resident block; 128 this way)
    y_tile = y_ptr + pid_k.to(tl.int64) * stride_ys + first.to(tl.int64) * stride_ym
    y_rows = tl.arange(0, BLOCK_M)
    y_cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    y_ptrs = y_tile + y_rows.to(tl.int64)[:, None] * stride_ym + y_cols[None, :] * stride_yn
    y_mask = (y_rows < end - first)[:, None] & (y_cols < N)[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=y_mask)


@annotate("grouped_gemm_int4")
@torch_arguments
def grouped_gemm_int4(a, weight, group_offsets, *, out_dtype=None, batch_invariant=False, validate=True,
                      num_sms=None, split_k=None):
    """``a [T, K]`` (float16/bfloat16/float32), ``weight`` an ``Int4Weight`` ``[E, N, K]`` -> ``[T, N]`` in
    ``out_dtype`` (default a's dtype). ``batch_invariant``: one tile config for every T and no split-K (see
    gemm_configs). ``num_sms``: the SM count the split-K plan targets (default: the device's); ``split_k``: force
    that many K slices (1: none). ``validate=False``: no group offset is read on the host (bound-sized grid, see ``kernels.triton.ops.grouped_gemm``)."""
    offs, e, n, k, out_name = check_int4(a, weight, group_offsets, out_dtype, validate)
    check_launch_device("a", a)
    sms = device_sms(a.device, num_sms)
    check_split(split_k)
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
    n_tiles = triton.cdiv(n, cfg.BLOCK_N)
    # planned on the shape bound of the row tiles, so both validate modes pick the same slices (same bits)
    splits = plan_split_k(cfg, max_row_tiles(t, e, cfg.BLOCK_M) * n_tiles, k, k // group, sms, split=split_k,
                          batch_invariant=batch_invariant)
    target, stride_ys = split_workspace(y, splits)
    _grouped_gemm_int4_kernel[(num_tiles, n_tiles, splits)](
        a, qw, sc, zr, target, tiles, num_tiles, n, k, splits,
        a.stride(0), a.stride(1),
        qw.stride(0), qw.stride(1), qw.stride(2),
        sc.stride(0), sc.stride(1), sc.stride(2),
        zr.stride(0), zr.stride(1), zr.stride(2),
        stride_ys, target.stride(-2), target.stride(-1),
        GROUP=group, HAS_ZEROS=weight.zeros is not None,
        BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, BLOCK_K=block_k,
        **cfg.options(splits),
    )
    sum_splits(target, y)
    return y
