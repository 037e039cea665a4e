"""Pieces every Triton kernel here shares: the matmul helper, the rounding store cast, the interpreter flag,
launcher checks.

``mma`` is the one place that works around the Triton interpreter's broken bfloat16 ``tl.dot`` (triton 3.9:
garbage results on CPU; float16, float32 and float8 are right): under the interpreter only, bfloat16 operands
are widened to float32 first. On a GPU the branch folds away at compile time and ``tl.dot`` gets bfloat16.
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

from kernels.validate import require

INTERPRET = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"))


@triton.jit
def mma(a, b, acc):
    """``acc + a @ b`` with float32 accumulation; float32 operands use IEEE fp32 (no tf32) for parity."""
    if INTERPRET:
        if a.dtype == tl.bfloat16:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
    if a.dtype == tl.float32:
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def cast_rtne(x, dtype: tl.constexpr):
    """float32 ``x`` to ``dtype``, rounded to nearest even everywhere: use it for every store of a result.

    The interpreter (triton 3.9) truncates float32 -> bfloat16 in ``.to()``; there, and only there, round by hand
    on the bits (bitwise equal to torch's cast, inf and NaN kept). On a GPU the branch folds away and ``.to()``
    emits cvt.rn.bf16.f32.
    """
    if INTERPRET:
        if dtype == tl.bfloat16:
            bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
            bits = bits + (((bits >> 16) & 1) + 0x7FFF)
            return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return x.to(dtype)


def check_launch_device(name: str, t) -> None:
    """A kernel runs on CUDA tensors, or on CPU tensors under the interpreter; anything else is a ValueError."""
    if t.device.type == "cuda":
        require(not bool(INTERPRET), name, "is a CUDA tensor but TRITON_INTERPRET=1 is set")
        return
    require(t.device.type == "cpu" and bool(INTERPRET), name,
            f"is on {t.device}; Triton kernels need CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 "
            "(kernels.runtime.configure_triton() sets it when there is no GPU)")


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))
