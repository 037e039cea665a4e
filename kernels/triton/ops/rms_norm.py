"""RMSNorm: ``y = x / sqrt(mean(x**2) + eps) * (weight_offset + weight)`` per row, float32 inside.

A program holds the weight row in registers and walks ``rows_per_program(T)`` consecutive rows, each loaded
once as a whole ``[BLOCK_H]`` row (so ``x`` is read once and ``y`` written once); the weight is read once per
program, not once per row: counted traffic is within ``1 + 1 / (2 * ROWS_MIN)`` of the minimum at equal x and
weight dtypes (the spec's goal). ``normalize_row`` is the float32 math every norm here shares, so
``rms_norm_quant_fp8`` on a row equals ``quantize_fp8_act`` of this kernel's float32 output bit for bit.

Rounding: the sum of squares in float32 (tree order), IEEE ``sqrt_rn`` and ``div_rn`` (no approximate rsqrt),
``(x * r) * (weight_offset + w)``, one cast on store.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.nvtx import annotate
from kernels.reference.norms import check_rms_norm
from kernels.triton.common import check_launch_device, next_pow2
from kernels.validate import torch_arguments

# Rows per program: at least ROWS_MIN, so the weight row (read once per program) adds at most 1 / (2 ROWS_MIN)
# of x's and y's traffic (1/128: counted / min <= 1.008 at equal dtypes), more when T would need more than
# MAX_PROGRAMS programs (4 per SM of an H100's 132).
ROWS_MIN = 64
MAX_PROGRAMS = 528


def rows_per_program(num_tokens: int) -> int:
    return max(ROWS_MIN, -(-int(num_tokens) // MAX_PROGRAMS))


def row_warps(block_h: int) -> int:
    """Warps for one ``[block_h]`` row: 16 float32 values per thread (x and the weight: 32 registers), 1 to 16."""
    return min(16, max(1, block_h // 512))


@triton.jit
def normalize_row(x, w, H, eps):
    """float32 ``x [BLOCK_H]`` (masked lanes 0) times ``1 / sqrt(mean(x**2) + eps)`` times ``w`` (the
    weight plus its offset, float32)."""
    ms = tl.sum(x * x, axis=0) / H
    r = tl.math.div_rn(1.0, tl.sqrt_rn(ms + eps))
    return (x * r) * w


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, T, H, rows_per_prog,
                     stride_xt, stride_xh, stride_ot, stride_oh,
                     eps, w_offset, BLOCK_H: tl.constexpr):
    cols = tl.arange(0, BLOCK_H)
    mask = cols < H
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32) + w_offset
    first = tl.program_id(0).to(tl.int64) * rows_per_prog
    for i in range(0, rows_per_prog):
        row = first + i
        if row < T:
            x = tl.load(x_ptr + row * stride_xt + cols * stride_xh, mask=mask, other=0.0).to(tl.float32)
            y = normalize_row(x, w, H, eps)
            tl.store(out_ptr + row * stride_ot + cols * stride_oh, y.to(out_ptr.dtype.element_ty), mask=mask)


def launch_rms_norm(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, eps: float,
                    weight_offset: float) -> None:
    """Normalize ``x [T, H]`` into the preallocated ``out``; no validation (the caller checked)."""
    t, h = x.shape
    if t == 0 or h == 0:
        return
    rows = rows_per_program(t)
    block_h = next_pow2(h)
    grid = (triton.cdiv(t, rows),)
    _rms_norm_kernel[grid](x, weight, out, t, h, rows, x.stride(0), x.stride(1), out.stride(0), out.stride(1),
                           float(eps), float(weight_offset), BLOCK_H=block_h, num_warps=row_warps(block_h))


@annotate("rms_norm")
@torch_arguments
def rms_norm(x, weight, *, eps, weight_offset=0.0, validate: bool = True):
    """``x [T, H]`` (any strides), ``weight [H]`` -> ``y [T, H]`` in x's dtype.

    Its checks read only shapes, dtypes and devices: ``validate`` changes nothing."""
    check_rms_norm(x, weight, eps, weight_offset)
    check_launch_device("x", x)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    launch_rms_norm(x, weight, out, eps, weight_offset)
    return out
