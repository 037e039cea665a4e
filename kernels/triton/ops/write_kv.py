"""KV-cache write: scatter this step's keys and values into their paged-cache slots, in Triton (in place).

One program writes BLOCK_T tokens of one KV head: it loads each token's slot (int32 or int64; a negative slot
skips the token), splits it into (block, offset) and stores the head's ``head_dim`` values there. Cache offsets
are int64 (a cache may hold more than 2**31 elements).

float8_e4m3fn caches store ``x / scale`` rounded to nearest-even and saturated to +-448. The rounding is done
here explicitly, in float64, and the e4m3 bit pattern is assembled with integer ops and stored through a uint8
view of the cache: the same arithmetic on a GPU and under the interpreter, and bit-for-bit the reference's
``round_to_e4m3`` (float64 quotient, one rounding). A plain ``.to(float8)`` may not saturate, and the
interpreter's float8 conversion does not round to nearest-even.
"""
from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl

from kernels.nvtx import annotate
from kernels.triton.common import check_fp8_supported, check_launch_device, next_pow2, scale_operand
from kernels.validate import check_kv_write, dtype_name, require, torch_arguments


@triton.jit
def _e4m3_bits(x):
    """float64 ``x`` -> uint8 float8_e4m3fn bits of its nearest e4m3 value (ties to even, saturated to +-448).

    The grid step at |x| is 2**(e - 3) for a normal |x| in [2**e, 2**(e + 1)), e >= -6, and 2**-9 below 2**-6.
    ``x / step`` is then below 16 in magnitude, and ``(y + 1.5 * 2**52) - 1.5 * 2**52`` rounds it to an integer,
    ties to even (the float64 addition itself rounds to nearest-even at integer spacing). NaN maps to 0x7F.
    """
    bits = x.to(tl.int64, bitcast=True)
    negative = bits < 0
    exponent = ((bits >> 52) & 0x7FF) - 1023  # of |x| (meaningless below 2**-6, where the step is fixed)
    exponent = tl.minimum(tl.maximum(exponent, -6), 8)  # past 2**8 the result saturates anyway
    step = ((exponent - 3 + 1023) << 52).to(tl.float64, bitcast=True)
    magic = 6755399441055744.0  # 1.5 * 2**52
    units = (tl.abs(x) / step + magic) - magic  # |x| / step rounded to an integer, ties to even (exact)
    rounded = tl.minimum(units * step, 448.0)  # saturate
    # assemble the bits of |rounded|: subnormal (< 2**-6): mantissa = rounded / 2**-9; normal: biased exponent
    # e + 7 and mantissa (rounded / 2**e - 1) * 8, with e recomputed (rounding may have carried into 2**(e+1))
    r_bits = rounded.to(tl.int64, bitcast=True)
    r_exp = ((r_bits >> 52) & 0x7FF) - 1023
    r_man = (r_bits >> 49) & 0x7  # top 3 mantissa bits: exact, the value is on the e4m3 grid
    normal = (r_exp + 7) << 3 | r_man
    subnormal = (rounded * 512.0).to(tl.int64)
    code = tl.where(rounded < 0.015625, subnormal, normal)
    code = tl.where(negative, code | 0x80, code)
    code = tl.where(x != x, 0x7F, code)  # NaN
    return code.to(tl.uint8)


@triton.jit
def _write_kv_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr, k_scale_ptr, v_scale_ptr,
    k_scale_bits, v_scale_bits, num_tokens,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_T: tl.constexpr,
    FP8: tl.constexpr, K_SCALE_PTR: tl.constexpr, V_SCALE_PTR: tl.constexpr,
):
    head = tl.program_id(1)
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    in_range = tokens < num_tokens
    slots = tl.load(slot_mapping_ptr + tokens, mask=in_range, other=-1).to(tl.int64)
    write = in_range & (slots >= 0)
    slots = tl.where(write, slots, 0)
    block, offset = slots // BLOCK_SIZE, slots % BLOCK_SIZE
    dims = tl.arange(0, HEAD_DIM_PAD)
    mask = write[:, None] & (dims < HEAD_DIM)[None, :]
    t64 = tokens.to(tl.int64)[:, None]
    k = tl.load(key_ptr + t64 * stride_kt + head * stride_kh + dims[None, :], mask=mask)
    v = tl.load(value_ptr + t64 * stride_vt + head * stride_vh + dims[None, :], mask=mask)
    k_dst = k_cache_ptr + (block * stride_kcb + offset * stride_kcs + head * stride_kch)[:, None] + dims[None, :]
    v_dst = v_cache_ptr + (block * stride_vcb + offset * stride_vcs + head * stride_vch)[:, None] + dims[None, :]
    if FP8:
        # a Python-number scale arrives as its float64 bits (an int64 argument: exact); a tensor is loaded
        k_scale = k_scale_bits.to(tl.int64).to(tl.float64, bitcast=True)
        v_scale = v_scale_bits.to(tl.int64).to(tl.float64, bitcast=True)
        if K_SCALE_PTR:
            k_scale = tl.load(k_scale_ptr).to(tl.float64)
        if V_SCALE_PTR:
            v_scale = tl.load(v_scale_ptr).to(tl.float64)
        k = _e4m3_bits(k.to(tl.float32).to(tl.float64) / k_scale)
        v = _e4m3_bits(v.to(tl.float32).to(tl.float64) / v_scale)
    tl.store(k_dst, k, mask=mask)
    tl.store(v_dst, v, mask=mask)


@annotate("write_kv")
@torch_arguments
def write_kv(key, value, k_cache, v_cache, slot_mapping, *, k_scale=1.0, v_scale=1.0, validate=True):
    """Scatter ``key``/``value [num_tokens, num_kv_heads, head_dim]`` into the caches at ``slot_mapping``.

    In place; returns ``(k_cache, v_cache)``. See ``kernels.reference.write_kv`` for the semantics.
    ``validate=False`` skips the slot range check (the only read of device values) and builds no host tensor.
    """
    check_kv_write(key, value, k_cache, v_cache, slot_mapping, k_scale, v_scale, validate)
    for name, t in (("key", key), ("value", value), ("k_cache", k_cache), ("v_cache", v_cache),
                    ("slot_mapping", slot_mapping)):
        check_launch_device(name, t)
    if dtype_name(k_cache) == "float8_e4m3fn":
        check_fp8_supported("k_cache", k_cache.device)
    require(k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1, "k_cache", "head_dim must be contiguous")
    if key.stride(-1) != 1:
        key = key.contiguous()
    if value.stride(-1) != 1:
        value = value.contiguous()
    slot_mapping = slot_mapping.contiguous()
    if key.shape[0] == 0:
        return k_cache, v_cache
    grid, args, meta = launch_arguments(key, value, k_cache, v_cache, slot_mapping, k_scale, v_scale, validate)
    _write_kv_kernel[grid](*args, **meta)
    return k_cache, v_cache


def float64_bits(x: float) -> int:
    """The IEEE float64 bit pattern of ``x`` as a signed int64 (how a host scale reaches the kernel exactly)."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def launch_arguments(key, value, k_cache, v_cache, slot_mapping, k_scale, v_scale, validate=True):
    """``(grid, args, meta)`` of the kernel launch for a checked call (also used to compile for a GPU in CI)."""
    num_tokens, num_kv_heads, head_dim = (int(s) for s in key.shape)
    fp8 = dtype_name(k_cache) == "float8_e4m3fn"
    # float64 scales: the quotient x / scale is formed in float64, exactly as the reference forms it
    ks, ks_ptr, ks_dev = scale_operand(k_scale, key, "k_scale", validate)
    vs, vs_ptr, vs_dev = scale_operand(v_scale, key, "v_scale", validate)
    k_dst = k_cache.view(torch.uint8) if fp8 else k_cache
    v_dst = v_cache.view(torch.uint8) if fp8 else v_cache
    grid = lambda META: (triton.cdiv(num_tokens, META["BLOCK_T"]), num_kv_heads)  # noqa: E731
    args = (key, value, k_dst, v_dst, slot_mapping, ks_ptr, vs_ptr, float64_bits(ks), float64_bits(vs), num_tokens,
            key.stride(0), key.stride(1), value.stride(0), value.stride(1),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2))
    meta = dict(HEAD_DIM=head_dim, HEAD_DIM_PAD=next_pow2(head_dim), BLOCK_SIZE=int(k_cache.shape[1]), BLOCK_T=16,
                FP8=fp8, K_SCALE_PTR=ks_dev, V_SCALE_PTR=vs_dev, num_warps=4)
    return grid, args, meta
