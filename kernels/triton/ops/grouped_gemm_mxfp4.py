"""W4A16 grouped GEMM on MXFP4 weights: float16 / bfloat16 / float32 activations, one launch, optional bias.

    y[rows of e] = a[rows of e] @ dequant(w[e]).T + bias[e],   dequant(w)[n, k] = E2M1(code[n, k]) * 2**(s[n, b] - 127)

with b = k // 32 the MX block. The weight is never dequantized to memory. A K step is one MX block: the packed
``16 x BLOCK_N`` byte tile is loaded once (byte j holds k = 2j in its low nibble, 2j + 1 in its high one) and
split into the even-k and odd-k code tiles in registers, each code becoming twice its E2M1 value (an integer
-12..12, exact in every activation dtype); the activations are loaded as the matching even and odd columns, so
a step is two ``mma``s into a float32 partial that the block's scale, ``2**(s - 128)`` (halving the doubled
codes), multiplies once per column: a power of two, so the multiply is exact. Each scale byte is read once, at
block index < K / 32 only: K is a multiple of 32 and a step never spans two blocks, so no index past a row's
end is ever formed (the tests poison the bytes past each row's end with 255, a NaN scale). Scale 255 gives NaN,
as E8M0 says. Float32 accumulation throughout; ``bias[e, n]`` (float32) is added to the float32 result before
the one cast to the output dtype (by slice 0 only when K is split).
Rows -> experts come from the shared tile table (``kernels.triton.ops.grouped_gemm``); the split-K plan is the
int4 GEMM's (``kernels.triton.gemm_configs.split_k``), in units of MX blocks: program ``(i, j, s)`` takes blocks
``[s * B // S, (s + 1) * B // S)`` of the ``B = K / 32`` and writes its float32 partial to slice s of a
workspace that ``sum_splits`` adds up in order (deterministic).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.nvtx import annotate
from kernels.reference.gemm import check_mxfp4
from kernels.reference.quant import MX_BLOCK
from kernels.triton.common import check_launch_device, device_sms, mma
from kernels.triton.gemm_configs import check_split, select_config
from kernels.triton.gemm_configs import split_k as plan_split_k
from kernels.triton.ops.grouped_gemm import (TORCH_OUT, group_tile_table, load_tile, max_row_tiles, row_tile_count,
                                             split_workspace, sum_splits)
from kernels.validate import torch_arguments


@triton.jit
def e2m1_twice(codes):
    """E2M1 codes (0..15, bit 3 the sign) -> twice their value as float32. Magnitude code m (0..7) is 0, 0.5, 1,
    1.5, 2, 3, 4, 6, so twice it is 0 1 2 3 4 6 8 12: m itself up to 4, then steps of 2 to 8 and of 4 to 12, i.e.
    ``m + max(m - 4, 0) + 2 max(m - 6, 0)``."""
    m = (codes & 7).to(tl.int32)
    twice = (m + tl.maximum(m - 4, 0) + 2 * tl.maximum(m - 6, 0)).to(tl.float32)
    return tl.where(codes >= 8, -twice, twice)


@triton.jit
def e8m0_half(s):
    """E8M0 scale bytes -> float32 ``2**(s - 128)`` (half the scale, for the doubled codes); 255 is NaN.
    Built from its float32 bits: for s >= 2 the normal float with exponent field ``s - 1``; s = 1 and 0 give the
    subnormals 2**-127 and 2**-128 (mantissa bits ``0x200000 << s``)."""
    s32 = s.to(tl.int32)
    bits = tl.where(s32 >= 2, (s32 - 1) << 23, 0x200000 << tl.minimum(s32, 1))
    return tl.where(s32 == 255, float("nan"), bits.to(tl.float32, bitcast=True))


@triton.jit
def _grouped_gemm_mxfp4_kernel(
    a_ptr, q_ptr, s_ptr, b_ptr, y_ptr, tiles_ptr, num_tiles, N, K, num_splits,
    stride_am, stride_ak,
    stride_qe, stride_qn, stride_qk,
    stride_se, stride_sn, stride_sb,
    stride_be, stride_bn,
    stride_ys, stride_ym, stride_yn,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MX: tl.constexpr,
):
    pid_n = tl.program_id(0)  # N tiles on the grid's first axis: see the launcher
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    e, first, end = load_tile(tiles_ptr, num_tiles, pid_m)
    if first >= end:
        return  # a surplus entry of a bound-sized tile table
    e = e.to(tl.int64)
    num_blocks = K // MX  # MX divides K: every block is whole
    b_lo = pid_k * num_blocks // num_splits  # this split's MX blocks [b_lo, b_hi)
    b_hi = (pid_k + 1) * num_blocks // num_splits
    rows = first + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    kh = tl.arange(0, MX // 2)  # packed byte j of the block holds k = 2j (low nibble) and 2j + 1 (high)
    row_ok = rows < end
    col_ok = cols < N
    cols64 = cols.to(tl.int64)
    k_lo = b_lo * MX
    # 64-bit offsets: the packed stack [E, N, K / 2] and a [T, K] can pass 2**31 elements.
    a_even = a_ptr + rows.to(tl.int64)[:, None] * stride_am + (k_lo + 2 * kh)[None, :] * stride_ak  # [BM, 16]
    a_odd = a_even + stride_ak
    q_ptrs = q_ptr + e * stride_qe + cols64[None, :] * stride_qn + (k_lo // 2 + kh)[:, None] * stride_qk  # [16, BN]
    s_ptrs = s_ptr + e * stride_se + cols64 * stride_sn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for blk in range(b_lo, b_hi):
        scale = e8m0_half(tl.load(s_ptrs + blk * stride_sb, mask=col_ok, other=127))
        packed = tl.load(q_ptrs, mask=col_ok[None, :], other=0)  # each packed byte loaded once
        w_lo = e2m1_twice(packed & 0xF).to(a_ptr.dtype.element_ty)  # even k
        w_hi = e2m1_twice(packed >> 4).to(a_ptr.dtype.element_ty)  # odd k
        partial = mma(tl.load(a_even, mask=row_ok[:, None], other=0.0), w_lo,
                      tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32))
        partial = mma(tl.load(a_odd, mask=row_ok[:, None], other=0.0), w_hi, partial)
        acc += partial * scale[None, :]
        a_even += MX * stride_ak
        a_odd += MX * stride_ak
        q_ptrs += (MX // 2) * stride_qk
    # The store's offsets and mask are built here, from scalars (see grouped_gemm_int4: reusing the loop's
    # row / column tensors keeps them live through the K loop)
    y_cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if HAS_BIAS:
        if pid_k == 0:  # the bias once per output, in the first K slice
            acc += tl.load(b_ptr + e * stride_be + y_cols * stride_bn, mask=y_cols < N, other=0.0)[None, :]
    y_tile = y_ptr + pid_k.to(tl.int64) * stride_ys + first.to(tl.int64) * stride_ym
    y_rows = tl.arange(0, BLOCK_M)
    y_ptrs = y_tile + y_rows.to(tl.int64)[:, None] * stride_ym + y_cols[None, :] * stride_yn
    y_mask = (y_rows < end - first)[:, None] & (y_cols < N)[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=y_mask)


@annotate("grouped_gemm_mxfp4")
@torch_arguments
def grouped_gemm_mxfp4(a, weight, group_offsets, *, bias=None, out_dtype=None, batch_invariant=False, validate=True,
                       num_sms=None, split_k=None):
    """``a [T, K]`` (float16/bfloat16/float32), ``weight`` an ``Mxfp4Weight`` ``[E, N, K]``, ``bias`` None or
    float32 ``[E, N]`` -> ``[T, N]`` in ``out_dtype`` (default a's dtype). ``batch_invariant``: one tile config for
    every T and no split-K (see gemm_configs). ``num_sms``: the SM count the split-K plan targets (default: the
    device's); ``split_k``: force that many K slices (1: none). ``validate=False``: no group offset is read on the
    host (bound-sized grid, see ``kernels.triton.ops.grouped_gemm``)."""
    offs, e, n, k, out_name = check_mxfp4(a, weight, group_offsets, bias, out_dtype, validate)
    check_launch_device("a", a)
    sms = device_sms(a.device, num_sms)
    check_split(split_k)
    t = int(a.shape[0])
    y = torch.empty((t, n), dtype=TORCH_OUT[out_name], device=a.device)
    if t == 0 or n == 0:
        return y
    cfg = select_config("mxfp4", t, e, n, k, batch_invariant=batch_invariant)
    num_tiles = row_tile_count(offs, t, e, cfg.BLOCK_M)
    tiles = group_tile_table(group_offsets, cfg.BLOCK_M, num_tiles, a.device)
    qw, sc = weight.data, weight.scales
    bs = bias if bias is not None else sc  # a placeholder pointer without a bias (never read)
    n_tiles = triton.cdiv(n, cfg.BLOCK_N)
    # planned on the shape bound of the row tiles, so both validate modes pick the same slices (same bits)
    splits = plan_split_k(cfg, max_row_tiles(t, e, cfg.BLOCK_M) * n_tiles, k, k // MX_BLOCK, sms, split=split_k,
                          batch_invariant=batch_invariant)
    target, stride_ys = split_workspace(y, splits)
    # grid (N tiles, row tiles, K slices): a GPU runs an expert's N tiles back to back (its activation rows stay in
    # L2), and the counting sampler's launch-order strata each hold one N tile, the narrow last one included
    _grouped_gemm_mxfp4_kernel[(n_tiles, num_tiles, splits)](
        a, qw, sc, bs, target, tiles, num_tiles, n, k, splits,
        a.stride(0), a.stride(1),
        qw.stride(0), qw.stride(1), qw.stride(2),
        sc.stride(0), sc.stride(1), sc.stride(2),
        bs.stride(0), bs.stride(1),
        stride_ys, target.stride(-2), target.stride(-1),
        HAS_BIAS=bias is not None, BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, MX=MX_BLOCK,
        **cfg.options(splits),
    )
    sum_splits(target, y)
    return y
