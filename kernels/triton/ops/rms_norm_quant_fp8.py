"""RMSNorm fused with the dynamic per-token-group fp8 quantization (``quantize_fp8_act``'s math, per row).

Per row: the float32 norm (``rms_norm``'s ``normalize_row``, the same reduction layout: ``row_warps``), then per
group of ``GROUP`` columns amax -> ``scale = amax / 448`` (IEEE float32 division) -> ``y / scale`` -> saturate ->
round to nearest-even on the e4m3 grid (``kernels.triton.quant.e4m3_round``) -> exact cast; so the result is
``quantize_fp8_act`` of our float32 ``rms_norm`` bit for bit. x is read once, the fp8 row and its scales written
once, the weight read once per program of ``rows_per_program(T)`` rows.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.nvtx import annotate
from kernels.reference.fp8 import E4M3_MAX
from kernels.reference.norms import check_rms_norm
from kernels.reference.quant import AMAX_FLOOR, check_act_group
from kernels.triton.common import check_fp8_supported, check_launch_device, next_pow2
from kernels.triton.ops.rms_norm import normalize_row, row_warps, rows_per_program
from kernels.triton.quant import e4m3_round
from kernels.validate import torch_arguments


@triton.jit
def _rms_norm_quant_fp8_kernel(x_ptr, w_ptr, q_ptr, s_ptr, T, H, rows_per_prog,
                               stride_xt, stride_xh, stride_qt, stride_qh, stride_st, stride_sg,
                               eps, BLOCK_H: tl.constexpr, GROUP: tl.constexpr, AMAX_MIN: tl.constexpr,
                               FP8_MAX: tl.constexpr):
    cols = tl.arange(0, BLOCK_H)
    mask = cols < H
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    NUM_GROUPS: tl.constexpr = BLOCK_H // GROUP
    groups = tl.arange(0, NUM_GROUPS)
    group_ok = groups * GROUP < H
    first = tl.program_id(0).to(tl.int64) * rows_per_prog
    for i in range(0, rows_per_prog):
        row = first + i
        if row < T:
            x = tl.load(x_ptr + row * stride_xt + cols * stride_xh, mask=mask, other=0.0).to(tl.float32)
            y = tl.reshape(normalize_row(x, w, H, eps), (NUM_GROUPS, GROUP))
            amax = tl.maximum(tl.max(tl.abs(y), axis=1), AMAX_MIN)
            # a NaN in the group makes its scale and values NaN (max and clamps may drop a NaN: said explicitly)
            amax = tl.where(tl.max((y != y).to(tl.int32), axis=1) > 0, float("nan"), amax)
            scale = tl.math.div_rn(amax, tl.full((NUM_GROUPS,), FP8_MAX, tl.float32))
            q = tl.math.div_rn(y, scale[:, None])
            q = e4m3_round(tl.where(q != q, q, tl.minimum(tl.maximum(q, -FP8_MAX), FP8_MAX)))
            q = tl.reshape(q, (BLOCK_H,))
            tl.store(q_ptr + row * stride_qt + cols * stride_qh, q.to(q_ptr.dtype.element_ty), mask=mask)
            tl.store(s_ptr + row * stride_st + groups * stride_sg, scale, mask=group_ok)


@annotate("rms_norm_quant_fp8")
@torch_arguments
def rms_norm_quant_fp8(x, weight, *, eps, group_size, validate: bool = True):
    """``x [T, H]`` -> (float8_e4m3fn ``[T, H]``, float32 scales ``[T, ceil(H / group_size)]``).

    Its checks read only shapes, dtypes and devices: ``validate`` changes nothing."""
    t, h = check_rms_norm(x, weight, eps)
    g = check_act_group(group_size, h)
    check_launch_device("x", x)
    check_fp8_supported("x", x.device)
    num_groups = -(-h // g) if h else 0
    q = torch.empty((t, h), dtype=torch.float8_e4m3fn, device=x.device)
    s = torch.empty((t, num_groups), dtype=torch.float32, device=x.device)
    if t == 0 or h == 0:
        return q, s
    rows = rows_per_program(t)
    block_h = next_pow2(h)
    group = block_h if g >= h else g  # one group per token: the whole (padded) row, its masked lanes 0
    _rms_norm_quant_fp8_kernel[(triton.cdiv(t, rows),)](
        x, weight, q, s, t, h, rows, x.stride(0), x.stride(1), q.stride(0), q.stride(1), s.stride(0), s.stride(1),
        float(eps), BLOCK_H=block_h, GROUP=group, AMAX_MIN=AMAX_FLOOR, FP8_MAX=E4M3_MAX,
        num_warps=row_warps(block_h))
    return q, s
