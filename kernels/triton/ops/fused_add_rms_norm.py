"""The residual add fused into RMSNorm: ``residual <- residual + x`` in place, then the norm of the new residual.

Each row is read once (x and residual), the sum stored once into ``residual`` (its dtype) and the norm of the
stored value (rounded back exactly as the next layer will read it) written once; the weight row is held per
program over ``rows_per_program(T)`` rows, as in ``rms_norm``, whose float32 ``normalize_row`` this shares.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.nvtx import annotate
from kernels.reference.norms import check_rms_norm
from kernels.triton.common import check_launch_device, next_pow2
from kernels.triton.ops.rms_norm import normalize_row, row_warps, rows_per_program
from kernels.validate import require, torch_arguments


@triton.jit
def _fused_add_rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, T, H, rows_per_prog,
                               stride_xt, stride_xh, stride_rt, stride_rh, stride_ot, stride_oh,
                               eps, BLOCK_H: tl.constexpr):
    cols = tl.arange(0, BLOCK_H)
    mask = cols < H
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    first = tl.program_id(0).to(tl.int64) * rows_per_prog
    for i in range(0, rows_per_prog):
        row = first + i
        if row < T:
            x = tl.load(x_ptr + row * stride_xt + cols * stride_xh, mask=mask, other=0.0).to(tl.float32)
            res_ptrs = res_ptr + row * stride_rt + cols * stride_rh
            stored = (tl.load(res_ptrs, mask=mask, other=0.0).to(tl.float32) + x).to(res_ptr.dtype.element_ty)
            tl.store(res_ptrs, stored, mask=mask)
            y = normalize_row(stored.to(tl.float32), w, H, eps)
            tl.store(out_ptr + row * stride_ot + cols * stride_oh, y.to(out_ptr.dtype.element_ty), mask=mask)


@annotate("fused_add_rms_norm")
@torch_arguments
def fused_add_rms_norm(x, residual, weight, *, eps, validate: bool = True):
    """``residual [T, H]`` += ``x [T, H]`` in place; returns the norm of the new residual in x's dtype. ``residual``
    must not overlap ``x`` (its rows are written while x's are read).

    Its checks read only shapes, dtypes and devices: ``validate`` changes nothing."""
    check_rms_norm(x, weight, eps, residual=residual)
    check_launch_device("x", x)
    require(residual.numel() == 0 or residual.data_ptr() != x.data_ptr(), "residual",
            "is x itself: the sum is written into residual while x is read")
    t, h = x.shape
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if t == 0 or h == 0:
        return out
    rows = rows_per_program(t)
    block_h = next_pow2(h)
    _fused_add_rms_norm_kernel[(triton.cdiv(t, rows),)](
        x, residual, weight, out, t, h, rows, x.stride(0), x.stride(1), residual.stride(0), residual.stride(1),
        out.stride(0), out.stride(1), float(eps), BLOCK_H=block_h, num_warps=row_warps(block_h))
    return out
