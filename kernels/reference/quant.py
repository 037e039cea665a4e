"""Weight and activation quantization, defined in float64 numpy: int4 (W4A16), float8 e4m3 (W8A8) and MXFP4
(OCP Microscaling, W4A16; its rules under ``quantize_mxfp4``).

Weights are stacks ``[E, N, K]`` (a 2-D ``[N, K]`` weight is E = 1; results always carry the E axis).

int4, one scale (and optionally one zero point) per group of ``group_size`` consecutive k:
- symmetric: ``s = max|w| / 7``, ``q = clamp(round(w / s), -7, 7)``, stored nibble ``q + 8``;
  dequant ``(nibble - 8) * s``.
- zero point: ``s = (max - min) / 15``, ``z = clamp(round(-min / s), 0, 15)``,
  nibble ``clamp(round(w / s) + z, 0, 15)``; dequant ``(nibble - z) * s``.
- nibbles are packed two per byte: element k lives in byte ``k // 2``, even k in the low nibble.

float8 e4m3fn, ``scale = amax / 448`` per granule ("tensor", "channel" = one output row n, "block" =
``bn x bk`` tiles), ``data = e4m3(w / scale)`` saturated to +-448. Activations: the same per token and group
of ``group_size`` consecutive k (dynamic, computed every call).

Precision (what the kernels reproduce bit for bit): scales are stored as float32, rounded once from the
float64 quotient; the scaled value ``w / scale`` is a float32 (the float64 quotient rounded once to float32,
which is exactly IEEE float32 division); it is then rounded to nearest-even onto the e4m3 grid. An amax
below ``AMAX_FLOOR`` (an all-zero group or granule) is raised to it, so every scale is finite and positive.
Rounding everywhere is to nearest, ties to even (``np.round``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kernels.reference._arrays import f64
from kernels.reference.fp8 import E4M3_MAX, round_to_e4m3
from kernels.validate import check_ndim, dtype_name, is_torch, require

INT4_GROUP_SIZES = (32, 64, 128)
FP8_GRANULARITIES = ("tensor", "channel", "block")
# Smallest amax a scale is computed from: an all-zero group gets scale AMAX_FLOOR / qmax (finite, > 0) and
# dequantizes to exact zeros. A power of two so float32 holds it exactly.
AMAX_FLOOR = 2.0 ** -32
ACT_DTYPES = ("float16", "bfloat16", "float32")


@dataclass(frozen=True)
class Int4Weight:
    """Packed int4 weight stack. ``qweight`` uint8 ``[E, N, K // 2]``, ``scales`` float32
    ``[E, N, K // group_size]``, ``zeros`` uint8 (0..15) of the same shape or None (symmetric)."""

    qweight: object
    scales: object
    zeros: object
    group_size: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """The dequantized ``(E, N, K)``."""
        e, n, kh = (int(s) for s in self.qweight.shape)
        return e, n, 2 * kh


@dataclass(frozen=True)
class Fp8Weight:
    """float8 e4m3fn weight stack. ``data`` ``[E, N, K]``, ``scales`` float32: ``[E]`` ("tensor"),
    ``[E, N]`` ("channel"), ``[E, ceil(N / bn), ceil(K / bk)]`` ("block", ``block_size = (bn, bk)``)."""

    data: object
    scales: object
    granularity: str
    block_size: tuple[int, int] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)


@dataclass(frozen=True)
class Mxfp4Weight:
    """MXFP4 weight stack (OCP Microscaling). ``data`` uint8 ``[E, N, K // 2]``: two E2M1 codes a byte, element
    k in byte ``k // 2``, even k in the low nibble; ``scales`` uint8 ``[E, N, K // 32]``: one E8M0 exponent per
    block of 32 consecutive k (value ``2**(e - 127)``, 255 is NaN). ``scales`` may be a view whose rows are
    longer than ``K // 32`` (a padded layout): what lies past a row's end is never part of the weight."""

    data: object
    scales: object

    @property
    def shape(self) -> tuple[int, int, int]:
        """The dequantized ``(E, N, K)``."""
        e, n, kh = (int(s) for s in self.data.shape)
        return e, n, 2 * kh


# ----------------------------------------------------------------------------------------------------------
# shared checks (the Triton launchers use the same ones)

def as_stack(w, name: str = "w"):
    """A ``[N, K]`` weight as ``[1, N, K]``; a ``[E, N, K]`` stack unchanged; anything else is a ValueError."""
    require(hasattr(w, "shape") and len(w.shape) in (2, 3), name,
            f"expected [N, K] or [E, N, K], got shape {tuple(getattr(w, 'shape', ()))}")
    return w[None] if len(w.shape) == 2 else w


def check_int4_args(w, group_size: int) -> None:
    require(int(group_size) in INT4_GROUP_SIZES, "group_size", f"must be one of {INT4_GROUP_SIZES}, got {group_size}")
    k = int(w.shape[-1])
    require(k > 0 and k % group_size == 0, "group_size", f"must divide K = {k}")


def check_int4_weight(weight, name: str = "weight") -> tuple[int, int, int]:
    """Shapes and dtypes of an Int4Weight; returns ``(E, N, K)``."""
    require(isinstance(weight, Int4Weight), name, f"expected an Int4Weight, got {type(weight).__name__}")
    check_ndim(weight.qweight, 3, f"{name}.qweight", "[E, N, K // 2] uint8")
    require(dtype_name(weight.qweight) == "uint8", f"{name}.qweight", f"must be uint8, got {dtype_name(weight.qweight)}")
    e, n, k = weight.shape
    g = int(weight.group_size)
    require(g in INT4_GROUP_SIZES, f"{name}.group_size", f"must be one of {INT4_GROUP_SIZES}, got {g}")
    require(k % g == 0, f"{name}.group_size", f"{g} does not divide K = {k}")
    want = (e, n, k // g)
    require(tuple(weight.scales.shape) == want, f"{name}.scales",
            f"shape {tuple(weight.scales.shape)} does not match qweight: expected {want}")
    require(dtype_name(weight.scales) == "float32", f"{name}.scales", f"must be float32, got {dtype_name(weight.scales)}")
    if weight.zeros is not None:
        require(tuple(weight.zeros.shape) == want, f"{name}.zeros",
                f"shape {tuple(weight.zeros.shape)} does not match qweight: expected {want}")
        require(dtype_name(weight.zeros) == "uint8", f"{name}.zeros", f"must be uint8, got {dtype_name(weight.zeros)}")
    return e, n, k


def fp8_scale_shape(e: int, n: int, k: int, granularity: str, block_size) -> tuple[int, ...]:
    if granularity == "tensor":
        return (e,)
    if granularity == "channel":
        return (e, n)
    bn, bk = block_size
    return (e, -(-n // bn), -(-k // bk))


def check_fp8_args(granularity, block_size) -> tuple[int, int] | None:
    require(granularity in FP8_GRANULARITIES, "granularity", f"must be one of {FP8_GRANULARITIES}, got {granularity!r}")
    if granularity != "block":
        return None
    require(block_size is not None and len(block_size) == 2 and all(int(b) == b and b >= 1 for b in block_size),
            "block_size", f"must be a pair of positive ints (bn, bk), got {block_size}")
    return int(block_size[0]), int(block_size[1])


def check_fp8_weight(weight, name: str = "weight") -> tuple[int, int, int]:
    """Shapes and dtypes of an Fp8Weight; returns ``(E, N, K)``."""
    require(isinstance(weight, Fp8Weight), name, f"expected an Fp8Weight, got {type(weight).__name__}")
    check_ndim(weight.data, 3, f"{name}.data", "[E, N, K] float8_e4m3fn")
    require(dtype_name(weight.data) == "float8_e4m3fn", f"{name}.data",
            f"must be float8_e4m3fn, got {dtype_name(weight.data)}")
    require(weight.granularity in FP8_GRANULARITIES, f"{name}.granularity",
            f"must be one of {FP8_GRANULARITIES}, got {weight.granularity!r}")
    e, n, k = weight.shape
    if weight.granularity == "block":
        bs = weight.block_size
        require(bs is not None and len(bs) == 2 and all(int(b) >= 1 for b in bs), f"{name}.block_size",
                f"must be a pair of positive ints for block granularity, got {bs}")
    want = fp8_scale_shape(e, n, k, weight.granularity, weight.block_size)
    require(tuple(weight.scales.shape) == want, f"{name}.scales",
            f"shape {tuple(weight.scales.shape)} does not match {weight.granularity} granularity: expected {want}")
    require(dtype_name(weight.scales) == "float32", f"{name}.scales", f"must be float32, got {dtype_name(weight.scales)}")
    return e, n, k


def check_mxfp4_args(w) -> None:
    """K a positive multiple of the MX block (32), else a ValueError naming ``w``."""
    k = int(w.shape[-1])
    require(k > 0 and k % MX_BLOCK == 0, "w", f"K = {k} must be a positive multiple of the MX block {MX_BLOCK}")


def check_mxfp4_weight(weight, name: str = "weight") -> tuple[int, int, int]:
    """Shapes and dtypes of an Mxfp4Weight; returns ``(E, N, K)``."""
    require(isinstance(weight, Mxfp4Weight), name, f"expected an Mxfp4Weight, got {type(weight).__name__}")
    check_ndim(weight.data, 3, f"{name}.data", "[E, N, K // 2] uint8")
    require(dtype_name(weight.data) == "uint8", f"{name}.data", f"must be uint8, got {dtype_name(weight.data)}")
    e, n, k = weight.shape
    require(k > 0 and k % MX_BLOCK == 0, f"{name}.data",
            f"K = {k} (2 x its last dim) must be a positive multiple of the MX block {MX_BLOCK}")
    want = (e, n, k // MX_BLOCK)
    require(tuple(weight.scales.shape) == want, f"{name}.scales",
            f"shape {tuple(weight.scales.shape)} does not match data: expected {want}")
    require(dtype_name(weight.scales) == "uint8", f"{name}.scales",
            f"must be uint8 (E8M0 exponents), got {dtype_name(weight.scales)}")
    return e, n, k


def check_act(a, name: str = "a") -> None:
    check_ndim(a, 2, name, "[T, K]")
    if is_torch(a):
        require(dtype_name(a) in ACT_DTYPES, name, f"dtype must be one of {ACT_DTYPES}, got {dtype_name(a)}")


def check_act_group(group_size, k: int) -> int:
    """The token-group size actually used: ``group_size``, or K when ``group_size >= K`` (one scale per token).
    Below K it must be a power of two, so the GEMM can tell the group size back from the scales' shape."""
    require(int(group_size) == group_size and group_size >= 1, "group_size", f"must be a positive int, got {group_size}")
    g = int(group_size)
    if g >= k:
        return max(int(k), 1)
    require(g & (g - 1) == 0, "group_size", f"must be a power of two, or >= K = {k} for one scale per token; got {g}")
    return g


def act_group_size(k: int, num_groups: int, name: str = "a_scales") -> int:
    """The token-group size behind ``num_groups`` scale columns for K: one column is per token (g = K);
    otherwise the power of two g with ``ceil(K / g) == num_groups`` (the only sizes quantize_fp8_act makes
    under this rule are what a caller can pass unambiguously)."""
    require(num_groups >= 1, name, f"needs at least one scale column, got {num_groups}")
    if num_groups == 1:
        return max(int(k), 1)
    g = 1 << max(math.ceil(k / num_groups) - 1, 0).bit_length()
    require(-(-k // g) == num_groups, name,
            f"{num_groups} scale columns for K = {k} match no power-of-two group size")
    return g


# ----------------------------------------------------------------------------------------------------------
# helpers that read like the math

def pack_nibbles(nibbles: np.ndarray) -> np.ndarray:
    """uint8 values 0..15, ``[..., K]`` (K even) -> ``[..., K // 2]``: even k in the low nibble."""
    nibbles = nibbles.astype(np.uint8)
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    """Inverse of ``pack_nibbles``: ``[..., K // 2]`` uint8 -> ``[..., K]`` values 0..15."""
    packed = np.asarray(packed, dtype=np.uint8)
    out = np.empty(packed.shape[:-1] + (2 * packed.shape[-1],), dtype=np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out


def to_groups(w: np.ndarray, group_size: int) -> np.ndarray:
    """``[E, N, K]`` -> ``[E, N, K // group_size, group_size]``."""
    return w.reshape(*w.shape[:-1], w.shape[-1] // group_size, group_size)


def float32_scale(amax: np.ndarray, qmax: float) -> np.ndarray:
    """``max(amax, AMAX_FLOOR) / qmax`` rounded once to float32, returned as float64."""
    return (np.maximum(amax, AMAX_FLOOR) / qmax).astype(np.float32).astype(np.float64)


def group_quantize_int4(w: np.ndarray, group_size: int, zero_point: bool):
    """float64 ``[E, N, K]`` -> (nibbles uint8 ``[E, N, K]``, scales float64 ``[E, N, G]``, zeros uint8 or None)."""
    wg = to_groups(w, group_size)
    if zero_point:
        lo, hi = wg.min(axis=-1), wg.max(axis=-1)
        s = float32_scale(hi - lo, 15.0)
        z = np.clip(np.round(-lo / s), 0, 15)
        nib = np.clip(np.round(wg / s[..., None]) + z[..., None], 0, 15)
        zeros = z.astype(np.uint8)
    else:
        s = float32_scale(np.abs(wg).max(axis=-1), 7.0)
        nib = np.clip(np.round(wg / s[..., None]), -7, 7) + 8
        zeros = None
    return nib.astype(np.uint8).reshape(w.shape), s, zeros


def group_dequantize_int4(nibbles: np.ndarray, scales: np.ndarray, zeros, group_size: int) -> np.ndarray:
    """``(nibble - z) * s`` per group (z = 8 when symmetric), float64 ``[E, N, K]``."""
    z = np.full(scales.shape, 8.0) if zeros is None else np.asarray(zeros, dtype=np.float64)
    q = to_groups(nibbles.astype(np.float64), group_size) - z[..., None]
    return (q * np.asarray(scales, dtype=np.float64)[..., None]).reshape(nibbles.shape)


def granule_amax(w: np.ndarray, granularity: str, block_size) -> np.ndarray:
    """max |w| per granule: ``[E]``, ``[E, N]`` or ``[E, ceil(N / bn), ceil(K / bk)]``."""
    a = np.abs(w)
    if granularity == "tensor":
        return a.max(axis=(1, 2), initial=0.0)
    if granularity == "channel":
        return a.max(axis=2, initial=0.0)
    e, n, k = w.shape
    bn, bk = block_size
    nb, kb = -(-n // bn), -(-k // bk)
    padded = np.zeros((e, nb * bn, kb * bk))
    padded[:, :n, :k] = a
    return padded.reshape(e, nb, bn, kb, bk).max(axis=(2, 4))


def expand_scales(scales: np.ndarray, shape, granularity: str, block_size) -> np.ndarray:
    """Per-granule scales broadcast to every element of ``[E, N, K]``."""
    e, n, k = shape
    s = np.asarray(scales, dtype=np.float64)
    if granularity == "tensor":
        return np.broadcast_to(s[:, None, None], shape)
    if granularity == "channel":
        return np.broadcast_to(s[:, :, None], shape)
    bn, bk = block_size
    return np.repeat(np.repeat(s, bn, axis=1), bk, axis=2)[:, :n, :k]


def fp8_quantize_values(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``e4m3(clamp(float32(x / scale), +-448))`` as float64 (scale already broadcast to x)."""
    scaled = (x / scale).astype(np.float32).astype(np.float64)
    return round_to_e4m3(np.clip(scaled, -E4M3_MAX, E4M3_MAX))


# MXFP4, the OCP Microscaling Formats (MX) v1.0 spec, written out (docs/contract.md lists the sources):
# - E2M1 element code ``s e1 e0 m`` (bit 3 the sign): magnitude code 0..7 -> the values below (code 1 the one
#   subnormal, 0.5; the largest normal 6 = 1.5 * 2**2, so E2M1's largest exponent emax_elem is 2). No inf, no NaN.
# - E8M0 scale: an unsigned exponent byte ``e``, value ``2**(e - 127)``; 255 is NaN (it makes the whole block NaN).
# - a block of 32 consecutive elements shares one scale ``X = 2**(floor(log2(amax)) - emax_elem)``, amax the
#   block's largest |w|; each element is ``w / X`` rounded to the nearest E2M1 value, ties to the even code, and
#   saturated at +-6 (amax / X is in [4, 8), so only the block's largest elements can saturate).
# - an all-zero block (amax = 0, log2 undefined) gets e = 0 (2**-127, finite; its codes are all zero); a shared
#   exponent outside E8M0's finite range [-127, 127] is clamped to it.
E2M1_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
E2M1_SIGN = 8  # the sign bit of a code
E2M1_EMAX = 2  # the largest E2M1 exponent: 6 = 1.5 * 2**2
E8M0_BIAS = 127
E8M0_NAN = 255
E8M0_EXP_MIN, E8M0_EXP_MAX = -127, 127  # the finite shared exponents (e = 0 .. 254)
MX_BLOCK = 32


def e8m0_value(e) -> np.ndarray:
    """The E8M0 byte ``e`` as float64 ``2**(e - 127)``; NaN for 255."""
    e = np.asarray(e, dtype=np.int64)
    return np.where(e == E8M0_NAN, np.nan, np.ldexp(1.0, e - E8M0_BIAS))


def floor_log2(x: np.ndarray) -> np.ndarray:
    """``floor(log2(x))`` exactly for x > 0 (``frexp``: x = m * 2**p with m in [0.5, 1), so floor(log2 x) = p - 1;
    ``np.log2`` rounds and can return an integer for x just below a power of two)."""
    return np.frexp(x)[1].astype(np.int64) - 1


def e2m1_round(y: np.ndarray) -> np.ndarray:
    """float64 ``y`` (already divided by its block's scale) -> E2M1 codes uint8 0..15: |y| saturated at 6, rounded
    to the nearest value of ``E2M1_VALUES``, a tie to the even code; the sign bit is y's (so -0.1 is code 8, -0)."""
    a = np.minimum(np.abs(y), E2M1_VALUES[-1])
    hi = np.searchsorted(E2M1_VALUES, a, side="left")  # the first value >= a
    lo = np.maximum(hi - 1, 0)  # the value below it (a = 0: both are code 0)
    d_lo, d_hi = a - E2M1_VALUES[lo], E2M1_VALUES[hi] - a
    mag = np.where(d_lo < d_hi, lo, np.where(d_hi < d_lo, hi, np.where(lo % 2 == 0, lo, hi)))
    return (mag + E2M1_SIGN * np.signbit(y)).astype(np.uint8)


def e2m1_value(codes) -> np.ndarray:
    """E2M1 codes 0..15 -> float64 values (code 8, -0, gives -0.0)."""
    codes = np.asarray(codes, dtype=np.int64)
    mag = E2M1_VALUES[codes & 7]
    return np.where(codes & E2M1_SIGN, -mag, mag)


def mx_quantize_blocks(w: np.ndarray):
    """float64 ``[E, N, K]`` (K a multiple of 32) -> (codes uint8 ``[E, N, K]``, E8M0 exponents uint8
    ``[E, N, K // 32]``)."""
    blocks = to_groups(w, MX_BLOCK)
    amax = np.abs(blocks).max(axis=-1)
    shared = np.where(amax > 0, floor_log2(np.where(amax > 0, amax, 1.0)) - E2M1_EMAX, E8M0_EXP_MIN)
    shared = np.clip(shared, E8M0_EXP_MIN, E8M0_EXP_MAX)
    scaled = blocks / np.ldexp(1.0, shared)[..., None]  # a power of two: exact in float64
    return e2m1_round(scaled).reshape(w.shape), (shared + E8M0_BIAS).astype(np.uint8)


def mx_dequantize_blocks(codes: np.ndarray, exps: np.ndarray) -> np.ndarray:
    """codes ``[E, N, K]`` and E8M0 exponents ``[E, N, K // 32]`` -> float64 ``[E, N, K]``."""
    values = to_groups(e2m1_value(codes), MX_BLOCK) * e8m0_value(exps)[..., None]
    return values.reshape(codes.shape)


# ----------------------------------------------------------------------------------------------------------
# public API

def _torch():
    import torch  # deferred: the references are numpy; torch only for a tensor argument

    return torch


def _require_finite(w64: np.ndarray, name: str) -> None:
    require(bool(np.isfinite(w64).all()), name, "must be finite (NaN or inf cannot be quantized)")


def quantize_int4(w, group_size: int = 128, zero_point: bool = False) -> Int4Weight:
    """int4 groupwise quantization of ``[E, N, K]`` (or ``[N, K]``) weights; CPU torch tensors out."""
    torch = _torch()
    w = as_stack(w)
    check_int4_args(w, group_size)
    w64 = f64(w)
    _require_finite(w64, "w")
    nib, s, zeros = group_quantize_int4(w64, int(group_size), bool(zero_point))
    return Int4Weight(torch.from_numpy(pack_nibbles(nib)), torch.from_numpy(s.astype(np.float32)),
                      None if zeros is None else torch.from_numpy(zeros), int(group_size))


def dequantize_int4(weight: Int4Weight) -> np.ndarray:
    """float64 ``[E, N, K]``."""
    check_int4_weight(weight)
    nib = unpack_nibbles(weight.qweight.cpu().numpy() if is_torch(weight.qweight) else weight.qweight)
    zeros = None if weight.zeros is None else f64(weight.zeros)
    return group_dequantize_int4(nib, f64(weight.scales), zeros, int(weight.group_size))


def expert(weight, e: int):
    """Expert ``e`` of an int4, fp8 or MXFP4 stack as a one-expert stack of the same kind (every field sliced)."""
    if isinstance(weight, Int4Weight):
        return Int4Weight(weight.qweight[e:e + 1], weight.scales[e:e + 1],
                          None if weight.zeros is None else weight.zeros[e:e + 1], weight.group_size)
    if isinstance(weight, Mxfp4Weight):
        return Mxfp4Weight(weight.data[e:e + 1], weight.scales[e:e + 1])
    return Fp8Weight(weight.data[e:e + 1], weight.scales[e:e + 1], weight.granularity, weight.block_size)


def dequantized_expert(weight, e: int) -> np.ndarray:
    """Expert ``e`` of a dense, int4, fp8 or MXFP4 ``[E, N, K]`` stack as float64 ``[N, K]``: one expert at a time,
    so a full-size stack is never dequantized whole."""
    if isinstance(weight, Int4Weight):
        return dequantize_int4(expert(weight, e))[0]
    if isinstance(weight, Fp8Weight):
        return dequantize_fp8(expert(weight, e))[0]
    if isinstance(weight, Mxfp4Weight):
        return dequantize_mxfp4(expert(weight, e))[0]
    return f64(as_stack(weight)[e])


def quantize_mxfp4(w) -> Mxfp4Weight:
    """MXFP4 (OCP Microscaling v1.0, MXFP4 = E2M1 elements, E8M0 scales, blocks of 32) of ``[E, N, K]`` (or
    ``[N, K]``) weights, blocks along K; CPU torch tensors out. K must be a multiple of 32; N anything."""
    torch = _torch()
    w = as_stack(w)
    check_mxfp4_args(w)
    w64 = f64(w)
    _require_finite(w64, "w")
    codes, exps = mx_quantize_blocks(w64)
    return Mxfp4Weight(torch.from_numpy(pack_nibbles(codes)), torch.from_numpy(exps))


def dequantize_mxfp4(weight: Mxfp4Weight) -> np.ndarray:
    """float64 ``[E, N, K]``: ``E2M1 value of the code * 2**(e - 127)`` of its block (NaN where ``e`` is 255)."""
    check_mxfp4_weight(weight)
    data = weight.data.cpu().numpy() if is_torch(weight.data) else np.asarray(weight.data)
    scales = weight.scales.cpu().numpy() if is_torch(weight.scales) else np.asarray(weight.scales)
    return mx_dequantize_blocks(unpack_nibbles(data), scales)


def quantize_fp8(w, granularity: str = "block", block_size=(128, 128)) -> Fp8Weight:
    """float8 e4m3fn weights with per-tensor, per-channel or ``bn x bk`` block scales; CPU torch tensors out."""
    torch = _torch()
    w = as_stack(w)
    bs = check_fp8_args(granularity, block_size)
    w64 = f64(w)
    _require_finite(w64, "w")
    s = float32_scale(granule_amax(w64, granularity, bs), E4M3_MAX)
    data = fp8_quantize_values(w64, expand_scales(s, w64.shape, granularity, bs))
    return Fp8Weight(torch.from_numpy(data).to(torch.float8_e4m3fn), torch.from_numpy(s.astype(np.float32)),
                     granularity, bs)


def dequantize_fp8(weight: Fp8Weight) -> np.ndarray:
    """float64 ``[E, N, K]``: ``data * scale`` of each element's granule."""
    check_fp8_weight(weight)
    return f64(weight.data) * expand_scales(f64(weight.scales), weight.shape, weight.granularity, weight.block_size)


def quantize_fp8_act(a, group_size: int = 128):
    """Dynamic per-token-group float8: ``a [T, K]`` -> (``a_fp8`` float8_e4m3fn ``[T, K]``,
    ``a_scales`` float32 ``[T, ceil(K / group_size)]``); ``group_size >= K`` is one scale per token, a smaller
    ``group_size`` must be a power of two.

    The last group of a row may be shorter than ``group_size`` (K need not be a multiple)."""
    torch = _torch()
    check_act(a)
    t, k = (int(s) for s in a.shape)
    g = check_act_group(group_size, k)
    a64 = f64(a)
    ng = -(-k // g)
    padded = np.zeros((t, ng * g))
    padded[:, :k] = np.abs(a64)
    s = float32_scale(padded.reshape(t, ng, g).max(axis=-1, initial=0.0), E4M3_MAX)  # [T, ng]
    q = fp8_quantize_values(a64, np.repeat(s, g, axis=1)[:, :k])
    return torch.from_numpy(q).to(torch.float8_e4m3fn), torch.from_numpy(s.astype(np.float32))
