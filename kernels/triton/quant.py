"""Quantization on the kernels' device, bit-identical to ``kernels.reference.quant``.

- ``quantize_fp8_act`` runs before every fp8 GEMM, so it is a Triton kernel: one program per (tokens, group),
  amax -> float32 scale (IEEE division) -> float32 quotient -> saturate -> round to nearest-even on the e4m3
  grid (done explicitly: the interpreter's float8 cast does not round ties to even) -> exact cast to fp8.
- ``quantize_int4``, ``dequantize_int4`` and ``quantize_fp8`` are offline weight transforms, written with torch
  ops that repeat the reference's float64 steps one for one (so the results are the same bits, on any device).

- ``quantize_mxfp4`` and ``dequantize_mxfp4`` likewise (the E2M1 table, the exact ``floor(log2(amax))`` from
  ``frexp``, ties to the even code: the reference's steps, on torch float64).

``Int4Weight``, ``Fp8Weight`` and ``Mxfp4Weight`` are the reference's own dataclasses, re-exported.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.nvtx import annotate
from kernels.reference.fp8 import E4M3_MAX
from kernels.reference.quant import (AMAX_FLOOR, E2M1_EMAX, E2M1_SIGN, E2M1_VALUES, E8M0_BIAS, E8M0_EXP_MAX,
                                     E8M0_EXP_MIN, E8M0_NAN, MX_BLOCK, Fp8Weight, Int4Weight, Mxfp4Weight, as_stack,
                                     check_act, check_act_group, check_fp8_args, check_int4_args, check_int4_weight,
                                     check_mxfp4_args, check_mxfp4_weight, fp8_scale_shape)
from kernels.triton.common import check_fp8_supported, check_launch_device, next_pow2
from kernels.validate import require, torch_arguments

__all__ = ["Int4Weight", "Fp8Weight", "Mxfp4Weight", "quantize_int4", "dequantize_int4", "quantize_fp8",
           "quantize_fp8_act", "quantize_mxfp4", "dequantize_mxfp4"]


# ----------------------------------------------------------------------------------------------------------
# activations: Triton

@triton.jit
def e4m3_round(y):
    """float32 ``y`` (|y| <= 448) rounded to nearest-even onto the e4m3fn grid, still float32 (sign kept).

    The grid step is ``2**(e - 3)`` for a value of binade e >= -6, and ``2**-9`` below 2**-6 (subnormals).
    Scaling by a power of two is exact, and ``(x + 1.5 * 2**23) - 1.5 * 2**23`` rounds x to an integer, ties
    to even, in float32 arithmetic for |x| < 2**22.
    """
    bits = y.to(tl.int32, bitcast=True)
    ay = tl.abs(y)
    e = tl.maximum(((ay.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, -6)
    step = ((e - 3 + 127) << 23).to(tl.float32, bitcast=True)
    inv_step = ((127 + 3 - e) << 23).to(tl.float32, bitcast=True)
    r = ((ay * inv_step + 12582912.0) - 12582912.0) * step
    return (r.to(tl.int32, bitcast=True) | (bits & -2147483648)).to(tl.float32, bitcast=True)


@triton.jit
def _quantize_fp8_act_kernel(
    a_ptr, q_ptr, s_ptr, T, K,
    stride_am, stride_ak, stride_qm, stride_qk, stride_sm, stride_sg,
    GROUP: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr, AMAX_MIN: tl.constexpr, FP8_MAX: tl.constexpr,
):
    """Program (i, j): rows ``[i * ROWS, (i + 1) * ROWS)``, token group j (k in ``[j * GROUP, (j + 1) * GROUP)``)."""
    rows = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)
    grp = tl.program_id(1)
    offs = tl.arange(0, BLOCK)
    ks = grp * GROUP + offs
    row_ok = rows < T
    mask = row_ok[:, None] & ((offs < GROUP) & (ks < K))[None, :]
    x = tl.load(a_ptr + rows[:, None] * stride_am + ks[None, :] * stride_ak, mask=mask, other=0.0).to(tl.float32)
    amax = tl.maximum(tl.max(tl.abs(x), axis=1), AMAX_MIN)
    # a NaN in the group makes its scale and values NaN (max and clamps may drop a NaN: said explicitly)
    amax = tl.where(tl.max((x != x).to(tl.int32), axis=1) > 0, float("nan"), amax)
    scale = tl.math.div_rn(amax, tl.full((ROWS,), FP8_MAX, tl.float32))  # IEEE float32 division, as the reference
    y = tl.math.div_rn(x, scale[:, None])
    y = e4m3_round(tl.where(y != y, y, tl.minimum(tl.maximum(y, -FP8_MAX), FP8_MAX)))
    tl.store(q_ptr + rows[:, None] * stride_qm + ks[None, :] * stride_qk, y.to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(s_ptr + rows * stride_sm + grp * stride_sg, scale, mask=row_ok)


# Elements per program in quantize_fp8_act: several tokens per program when groups are small.
ACT_QUANT_TILE = 4096


@annotate("quantize_fp8_act")
@torch_arguments
def quantize_fp8_act(a, group_size: int = 128, *, validate: bool = True):
    """``a [T, K]`` -> (``a_fp8`` float8_e4m3fn ``[T, K]``, ``a_scales`` float32 ``[T, ceil(K / group_size)]``).

    Its checks read only shapes and dtypes: ``validate`` changes nothing."""
    check_act(a)
    t, k = (int(s) for s in a.shape)
    g = check_act_group(group_size, k)
    check_launch_device("a", a)
    check_fp8_supported("a", a.device)
    num_groups = -(-k // g)
    q = torch.empty((t, k), dtype=torch.float8_e4m3fn, device=a.device)
    s = torch.empty((t, num_groups), dtype=torch.float32, device=a.device)
    if t == 0 or k == 0:
        return q, s
    block = next_pow2(g)
    rows = min(max(ACT_QUANT_TILE // block, 1), next_pow2(t))
    grid = lambda META: (triton.cdiv(t, META["ROWS"]), num_groups)  # noqa: E731
    _quantize_fp8_act_kernel[grid](
        a, q, s, t, k, a.stride(0), a.stride(1), q.stride(0), q.stride(1), s.stride(0), s.stride(1),
        GROUP=g, BLOCK=block, ROWS=rows, AMAX_MIN=AMAX_FLOOR, FP8_MAX=E4M3_MAX,
    )
    return q, s


# ----------------------------------------------------------------------------------------------------------
# weights: torch, step for step the reference's float64 arithmetic

def _finite_f64(w, validate: bool = True) -> torch.Tensor:
    w64 = w.detach().to(torch.float64)
    if validate:  # the one read of device values in the weight transforms
        require(bool(torch.isfinite(w64).all()), "w", "must be finite (NaN or inf cannot be quantized)")
    return w64


def _float32_scale(amax: torch.Tensor, qmax: float) -> torch.Tensor:
    return (amax.clamp_min(AMAX_FLOOR) / qmax).to(torch.float32).to(torch.float64)


def pack_nibbles(nibbles: torch.Tensor) -> torch.Tensor:
    """uint8 0..15 ``[..., K]`` -> ``[..., K // 2]``, even k in the low nibble."""
    nibbles = nibbles.to(torch.uint8)
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """``[..., K // 2]`` uint8 -> ``[..., K]`` values 0..15."""
    return torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(*packed.shape[:-1], 2 * packed.shape[-1])


@annotate("quantize_int4")
@torch_arguments
def quantize_int4(w, group_size: int = 128, zero_point: bool = False, *, validate: bool = True) -> Int4Weight:
    """int4 groupwise quantization of a torch ``[E, N, K]`` (or ``[N, K]``) weight, on its device.
    ``validate=False`` skips the finiteness check (the only host read)."""
    w = as_stack(w)
    check_int4_args(w, group_size)
    g = int(group_size)
    w64 = _finite_f64(w, validate)
    wg = w64.reshape(*w64.shape[:-1], w64.shape[-1] // g, g)
    if zero_point:
        lo, hi = wg.amin(dim=-1), wg.amax(dim=-1)
        s = _float32_scale(hi - lo, 15.0)
        z = torch.round(-lo / s).clamp(0, 15)
        nib = (torch.round(wg / s[..., None]) + z[..., None]).clamp(0, 15)
        zeros = z.to(torch.uint8)
    else:
        s = _float32_scale(wg.abs().amax(dim=-1), 7.0)
        nib = torch.round(wg / s[..., None]).clamp(-7, 7) + 8
        zeros = None
    return Int4Weight(pack_nibbles(nib.to(torch.uint8).reshape(w64.shape)), s.to(torch.float32), zeros, g)


@annotate("dequantize_int4")
@torch_arguments
def dequantize_int4(weight: Int4Weight, *, validate: bool = True) -> torch.Tensor:
    """float32 ``[E, N, K]`` (the reference's float64 values rounded once to float32). Its checks read only
    shapes and dtypes: ``validate`` changes nothing."""
    e, n, k = check_int4_weight(weight)
    g = int(weight.group_size)
    nib = unpack_nibbles(weight.qweight).to(torch.float64).reshape(e, n, k // g, g)
    z = 8.0 if weight.zeros is None else weight.zeros.to(torch.float64)[..., None]
    return ((nib - z) * weight.scales.to(torch.float64)[..., None]).reshape(e, n, k).to(torch.float32)


@annotate("quantize_fp8")
@torch_arguments
def quantize_fp8(w, granularity: str = "block", block_size=(128, 128), *, validate: bool = True) -> Fp8Weight:
    """float8 e4m3fn quantization of a torch ``[E, N, K]`` (or ``[N, K]``) weight, on its device.
    ``validate=False`` skips the finiteness check (the only host read)."""
    w = as_stack(w)
    bs = check_fp8_args(granularity, block_size)
    w64 = _finite_f64(w, validate)
    e, n, k = w64.shape
    a = w64.abs()
    if granularity == "tensor":
        s = _float32_scale(a.amax(dim=(1, 2)) if n * k else a.new_zeros(e), E4M3_MAX)
        s_full = s[:, None, None]
    elif granularity == "channel":
        s = _float32_scale(a.amax(dim=2) if k else a.new_zeros(e, n), E4M3_MAX)
        s_full = s[:, :, None]
    else:
        bn, bk = bs
        _, nb, kb = fp8_scale_shape(e, n, k, granularity, bs)
        padded = torch.nn.functional.pad(a, (0, kb * bk - k, 0, nb * bn - n))
        s = _float32_scale(padded.reshape(e, nb, bn, kb, bk).amax(dim=(2, 4)), E4M3_MAX)
        s_full = s.repeat_interleave(bn, dim=1).repeat_interleave(bk, dim=2)[:, :n, :k]
    scaled = (w64 / s_full).to(torch.float32).clamp(-E4M3_MAX, E4M3_MAX)
    return Fp8Weight(scaled.to(torch.float8_e4m3fn), s.to(torch.float32), granularity, bs)


@annotate("quantize_mxfp4")
@torch_arguments
def quantize_mxfp4(w, *, validate: bool = True) -> Mxfp4Weight:
    """MXFP4 quantization of a torch ``[E, N, K]`` (or ``[N, K]``) weight on its device, blocks of 32 along K:
    the reference's steps (``kernels.reference.quant.mx_quantize_blocks``) in torch float64, so the same bytes.
    ``validate=False`` skips the finiteness check (the only host read)."""
    w = as_stack(w)
    check_mxfp4_args(w)
    w64 = _finite_f64(w, validate)
    blocks = w64.reshape(*w64.shape[:-1], w64.shape[-1] // MX_BLOCK, MX_BLOCK)
    amax = blocks.abs().amax(dim=-1)
    floor_log2 = torch.frexp(torch.where(amax > 0, amax, torch.ones_like(amax)))[1].to(torch.int64) - 1
    shared = torch.where(amax > 0, floor_log2 - E2M1_EMAX, E8M0_EXP_MIN).clamp(E8M0_EXP_MIN, E8M0_EXP_MAX)
    scaled = blocks / torch.ldexp(torch.ones_like(amax), shared)[..., None]
    table = torch.tensor(E2M1_VALUES, dtype=torch.float64, device=w64.device)
    a = scaled.abs().clamp_max(float(E2M1_VALUES[-1]))
    hi = torch.searchsorted(table, a.contiguous(), side="left")
    lo = (hi - 1).clamp_min(0)
    d_lo, d_hi = a - table[lo], table[hi] - a
    mag = torch.where(d_lo < d_hi, lo, torch.where(d_hi < d_lo, hi, torch.where(lo % 2 == 0, lo, hi)))
    codes = (mag + E2M1_SIGN * torch.signbit(scaled).to(torch.int64)).to(torch.uint8).reshape(w64.shape)
    return Mxfp4Weight(pack_nibbles(codes), (shared + E8M0_BIAS).to(torch.uint8))


@annotate("dequantize_mxfp4")
@torch_arguments
def dequantize_mxfp4(weight: Mxfp4Weight, *, validate: bool = True) -> torch.Tensor:
    """float32 ``[E, N, K]`` (every MXFP4 value is a float32 when its scale's exponent is at least -125: the
    reference's float64 value rounded once to float32; NaN where the scale byte is 255). Its checks read only
    shapes and dtypes: ``validate`` changes nothing."""
    e, n, k = check_mxfp4_weight(weight)
    codes = unpack_nibbles(weight.data).to(torch.int64)
    table = torch.tensor(E2M1_VALUES, dtype=torch.float64, device=codes.device)
    mag = table[codes & 7]
    values = torch.where((codes & E2M1_SIGN) != 0, -mag, mag).reshape(e, n, k // MX_BLOCK, MX_BLOCK)
    exps = weight.scales.to(torch.int64)
    scale = torch.where(exps == E8M0_NAN, float("nan"), torch.ldexp(torch.ones_like(exps, dtype=torch.float64),
                                                                     exps - E8M0_BIAS))
    return (values * scale[..., None]).reshape(e, n, k).to(torch.float32)
