"""W8A8 float8 grouped GEMM with per-token-group activation scales and tensor / channel / block weight scales.

    y[t, n] = sum_k (a_fp8[t, k] * a_scales[t, k // g]) * (w[e, n, k] * w_scale(e, n, k))

Both operands go into ``mma`` as float8 e4m3 (exact products, float32 accumulation). A K step never spans two
scale groups: BLOCK_K divides the activation group g (unless there is one scale per token) and, for block
weights, the weight's bk. So each K step's float32 partial product is scaled once, inside the K loop, by
``a_scale[t] * w_scale[block of n]`` (block granularity) or ``a_scale[t]`` (then the per-channel or
per-tensor weight scale multiplies the accumulator after the loop). The scales are loaded at the first K step of
each scale span (``gcd(g, bk)`` of K, where both stay the same) and kept for its other steps. Rows -> experts come from the shared tile
table (``kernels.triton.ops.grouped_gemm``). A split-K plan (``kernels.triton.gemm_configs.split_k``: decode-sized
grids under one wave) gives program ``(i, j, s)`` the K units ``[s * U // S, (s + 1) * U // S)`` (a unit: one
scale span, or one K step when the scales do not change along K), so a slice starts on a span; its float32
partial goes to slice s of a workspace that ``sum_splits`` adds up in order.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kernels.nvtx import annotate
from kernels.reference.gemm import check_fp8
from kernels.triton.common import check_fp8_supported, check_launch_device, device_sms, mma
from kernels.triton.gemm_configs import check_split, select_config
from kernels.triton.gemm_configs import split_k as plan_split_k
from kernels.triton.ops.grouped_gemm import (TORCH_OUT, group_tile_table, load_tile, max_row_tiles, row_tile_count,
                                       split_workspace, sum_splits)
from kernels.validate import require, torch_arguments

GRANULARITY_IDS = {"tensor": 0, "channel": 1, "block": 2}
MIN_BLOCK_K = 16  # tl.dot's smallest K


@triton.jit
def _grouped_gemm_fp8_kernel(
    a_ptr, as_ptr, w_ptr, ws_ptr, y_ptr, tiles_ptr, num_tiles, N, K, a_group, w_bn, w_bk, span, unit, num_splits,
    stride_am, stride_ak, stride_asm, stride_asg,
    stride_we, stride_wn, stride_wk,
    stride_wse, stride_wsn, stride_wsk,
    stride_ys, stride_ym, stride_yn,
    GRANULARITY: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    e, first, end = load_tile(tiles_ptr, num_tiles, pid_m)
    if first >= end:
        return  # a surplus entry of a bound-sized tile table
    e = e.to(tl.int64)
    num_units = tl.cdiv(K, unit)
    k_lo = (pid_k * num_units // num_splits) * unit  # this split's K range [k_lo, k_hi)
    k_hi = tl.minimum(((pid_k + 1) * num_units // num_splits) * unit, K)
    rows = first + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    row_ok = rows < end
    col_ok = cols < N
    rows64 = rows.to(tl.int64)
    cols64 = cols.to(tl.int64)
    # 64-bit offsets: the weight stack [E, N, K] and a [T, K] can pass 2**31 elements.
    a_ptrs = a_ptr + rows64[:, None] * stride_am + (k_lo + ks)[None, :] * stride_ak
    w_ptrs = w_ptr + e * stride_we + cols64[None, :] * stride_wn + (k_lo + ks)[:, None] * stride_wk  # [BK, BN]
    as_ptrs = as_ptr + rows64 * stride_asm
    if GRANULARITY == 2:
        ws_ptrs = ws_ptr + e * stride_wse + (cols // w_bn) * stride_wsn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    a_scale = tl.zeros((BLOCK_M,), dtype=tl.float32)
    w_scale = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k_ok = ks < K - k0
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        partial = mma(a, w, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32))
        if (k0 % span == 0) | (k0 == k_lo):  # a scale span's first step (a slice starts on one): its scales
            a_scale = tl.load(as_ptrs + (k0 // a_group) * stride_asg, mask=row_ok, other=0.0)
            if GRANULARITY == 2:
                w_scale = tl.load(ws_ptrs + (k0 // w_bk) * stride_wsk, mask=col_ok, other=0.0)
        if GRANULARITY == 2:
            acc += partial * a_scale[:, None] * w_scale[None, :]
        else:
            acc += partial * a_scale[:, None]
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += BLOCK_K * stride_wk
    if GRANULARITY == 1:
        acc = acc * tl.load(ws_ptr + e * stride_wse + cols64 * stride_wsn, mask=col_ok, other=0.0)[None, :]
    if GRANULARITY == 0:
        acc = acc * tl.load(ws_ptr + e * stride_wse)
    y_ptrs = y_ptr + pid_k * stride_ys + rows64[:, None] * stride_ym + cols[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def _pow2_divisor(x: int) -> int:
    """The largest power of two dividing x."""
    return x & -x


@annotate("grouped_gemm_fp8")
@torch_arguments
def grouped_gemm_fp8(a_fp8, a_scales, weight, group_offsets, *, out_dtype=torch.bfloat16, batch_invariant=False,
                     validate=True, num_sms=None, split_k=None):
    """``a_fp8 [T, K]`` float8_e4m3fn with ``a_scales [T, ceil(K / g)]`` (from ``quantize_fp8_act``), ``weight``
    an ``Fp8Weight`` ``[E, N, K]`` -> ``[T, N]`` in ``out_dtype`` (default bfloat16). ``batch_invariant``: one
    tile config for every T and no split-K (see gemm_configs). ``num_sms``: the SM count the split-K plan
    targets (default: the device's); ``split_k``: force that many K slices (1: none). ``validate=False``: no
    group offset is read on the host (bound-sized grid, see ``kernels.triton.ops.grouped_gemm``)."""
    offs, e, n, k, g, out_name = check_fp8(a_fp8, a_scales, weight, group_offsets, out_dtype, validate)
    check_launch_device("a_fp8", a_fp8)
    check_fp8_supported("a_fp8", a_fp8.device)
    sms = device_sms(a_fp8.device, num_sms)
    check_split(split_k)
    t = int(a_fp8.shape[0])
    y = torch.empty((t, n), dtype=TORCH_OUT[out_name], device=a_fp8.device)
    if t == 0 or n == 0:
        return y
    if k == 0:
        return y.zero_()
    cfg = select_config("fp8", t, e, n, k, batch_invariant=batch_invariant)
    block_k = cfg.BLOCK_K
    if int(a_scales.shape[1]) > 1:
        block_k = min(block_k, _pow2_divisor(g))
    w_bn, w_bk = weight.block_size if weight.granularity == "block" else (1, 1)
    if weight.granularity == "block":
        block_k = min(block_k, _pow2_divisor(int(w_bk)))
        require(block_k >= MIN_BLOCK_K, "weight.block_size",
                f"bk = {w_bk} must be a multiple of {MIN_BLOCK_K} (a K step may not span two scale blocks)")
    require(block_k >= MIN_BLOCK_K, "a_scales", f"activation group size {g} must be a multiple of {MIN_BLOCK_K}")
    # a scale span: K over which the activation group and the weight block stay the same (BLOCK_K divides both,
    # so it divides their gcd); the kernel loads the scales at a span's first K step only
    bounds = ([g] if int(a_scales.shape[1]) > 1 else []) + ([int(w_bk)] if weight.granularity == "block" else [])
    span = math.gcd(*bounds) if bounds else triton.cdiv(k, block_k) * block_k
    num_tiles = row_tile_count(offs, t, e, cfg.BLOCK_M)
    tiles = group_tile_table(group_offsets, cfg.BLOCK_M, num_tiles, a_fp8.device)
    ws = weight.scales
    ws_strides = tuple(ws.stride()) + (0,) * (3 - ws.dim())
    # split-K units: a scale span (a slice then starts on one), or a K step when the scales never change
    unit = span if bounds else block_k
    n_tiles = triton.cdiv(n, cfg.BLOCK_N)
    # planned on the shape bound of the row tiles, so both validate modes pick the same slices (same bits)
    splits = plan_split_k(cfg, max_row_tiles(t, e, cfg.BLOCK_M) * n_tiles, k, triton.cdiv(k, unit), sms, split=split_k,
                          batch_invariant=batch_invariant)
    target, stride_ys = split_workspace(y, splits)
    _grouped_gemm_fp8_kernel[(num_tiles, n_tiles, splits)](
        a_fp8, a_scales, weight.data, ws, target, tiles, num_tiles, n, k, g, int(w_bn), int(w_bk), span, unit,
        splits,
        a_fp8.stride(0), a_fp8.stride(1), a_scales.stride(0), a_scales.stride(1),
        weight.data.stride(0), weight.data.stride(1), weight.data.stride(2),
        *ws_strides,
        stride_ys, target.stride(-2), target.stride(-1),
        GRANULARITY=GRANULARITY_IDS[weight.granularity],
        BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, BLOCK_K=block_k,
        **cfg.options(splits),
    )
    sum_splits(target, y)
    return y
